/**
 * The one way backup-pipeline writes a file: into `NAME.partial` (mode 0600, its folder 0700),
 * hashed with sha256 while it streams, fsynced, then renamed into place. A failed or interrupted
 * write leaves nothing under the final name.
 */
import { createHash } from 'node:crypto';
import { constants, createReadStream, createWriteStream } from 'node:fs';
import { chmod, copyFile, mkdir, open, rename, rm, stat, type FileHandle } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Readable, Transform, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { isPipelineError, PipelineError } from './errors.js';
import { exec } from './exec.js';

export const PARTIAL_SUFFIX = '.partial';
export const FILE_MODE = 0o600;
export const DIR_MODE = 0o700;

export interface FileDigest {
  bytes: number;
  sha256: string;
}

export interface AtomicWriteOptions {
  mode?: number;
  signal?: AbortSignal;
  /** Called with the running byte count as data is written. */
  onBytes?: (bytes: number) => void;
}

export async function ensurePrivateDir(path: string): Promise<void> {
  // The folder itself first: on a read-only file system a recursive mkdir fails with ENOENT, which
  // would hide the real cause (EROFS) from the message.
  try {
    await mkdir(path, { mode: DIR_MODE });
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EEXIST') return;
    if (code !== 'ENOENT') throw error;
    await mkdir(path, { recursive: true, mode: DIR_MODE });
  }
}

/** A pass-through stream that counts and hashes what flows through it. */
export class DigestStream extends Transform {
  readonly #hash = createHash('sha256');
  bytes = 0;
  constructor(private readonly onBytes?: (bytes: number) => void) {
    super();
  }
  override _transform(chunk: Buffer, _enc: BufferEncoding, done: (e?: Error | null, data?: Buffer) => void): void {
    this.#hash.update(chunk);
    this.bytes += chunk.length;
    this.onBytes?.(this.bytes);
    done(null, chunk);
  }
  digest(): FileDigest {
    return { bytes: this.bytes, sha256: this.#hash.digest('hex') };
  }
}

type Source = Readable | AsyncIterable<Uint8Array> | string | Uint8Array;

const SPACE_ERRNOS = new Set(['ENOSPC', 'EDQUOT']);
const ACCESS_ERRNOS = new Set(['EACCES', 'EPERM', 'EROFS']);

/**
 * A file-system error that names only the system call (`ENOSPC: no space left on device, write`)
 * as a PipelineError naming the path too: NO_SPACE or ACCESS_DENIED. Other errors pass unchanged.
 * The plugin and hook are added by the runner, so the message says which file and which stage.
 */
export function fileSystemError(error: unknown, path: string, doing: 'writing' | 'reading' | 'creating' = 'writing'): unknown {
  const code = (error as NodeJS.ErrnoException | undefined)?.code;
  if (isPipelineError(error) || !code) return error;
  if ((error as Error).name === 'AbortError') return new PipelineError('ABORTED', `interrupted while ${doing} ${path}`, { cause: error });
  const syscall = (error as NodeJS.ErrnoException).syscall;
  if (SPACE_ERRNOS.has(code)) {
    return new PipelineError('NO_SPACE', `no space left on the device ${doing} ${path} (${code}${syscall ? `, ${syscall}` : ''})`, { cause: error, details: { path, errno: code } });
  }
  if (ACCESS_ERRNOS.has(code)) {
    const why = code === 'EROFS' ? 'read-only file system' : 'permission denied';
    return new PipelineError('ACCESS_DENIED', `${why} ${doing} ${path} (${code}${syscall ? `, ${syscall}` : ''})`, { cause: error, details: { path, errno: code } });
  }
  return error;
}

/** Streams `source` into `path` atomically; resolves with its size and sha256. */
export async function writeFileAtomic(path: string, source: Source, options: AtomicWriteOptions = {}): Promise<FileDigest> {
  const partial = path + PARTIAL_SUFFIX;
  let handle: FileHandle;
  try {
    await ensurePrivateDir(dirname(path));
    handle = await open(partial, 'w', options.mode ?? FILE_MODE);
    // An explicit mode is the file's mode whatever the umask (a unit's UMask=0077 would otherwise
    // make the metrics file 0600, unreadable by node_exporter).
    if (options.mode !== undefined) await handle.chmod(options.mode);
  } catch (error) {
    if (typeof source === 'object' && source !== null && 'destroy' in source && typeof source.destroy === 'function') source.destroy();
    throw fileSystemError(error, path, 'creating');
  }
  const digest = new DigestStream(options.onBytes);
  try {
    const input = typeof source === 'string' || source instanceof Uint8Array ? Readable.from([Buffer.from(source)]) : source;
    // A stream on the raw fd: a stream on the FileHandle itself holds a reference that (on Node 20)
    // makes `handle.close()` wait forever when autoClose is false.
    const sink = createWriteStream('', { fd: handle.fd, autoClose: false });
    // A failed write destroys `input` (pipeline does): a child process writing it is then stopped
    // by exec, so nothing is left blocked behind a full disk.
    await pipeline(input, digest, sink, { signal: options.signal });
    await handle.sync();
    await handle.close();
    await rename(partial, path);
    await syncDir(dirname(path));
    return digest.digest();
  } catch (error) {
    await handle.close().catch(() => {});
    await rm(partial, { force: true });
    throw fileSystemError(error, path);
  }
}

/** fsyncs PARTIAL and renames it to PATH (its folder fsynced too); resolves with its size. */
async function publishPartial(partial: string, path: string, signal?: AbortSignal): Promise<number> {
  const handle = await open(partial, 'r+');
  let size: number;
  try {
    await handle.sync();
    size = (await handle.stat()).size;
  } finally {
    await handle.close();
  }
  signal?.throwIfAborted();
  await rename(partial, path);
  await syncDir(dirname(path));
  return size;
}

/** A file another program writes (a child's stdout), made atomic the same way. */
export interface PartialFile {
  /** `NAME.partial`, created empty (0600, folder 0700): hand it to the program. */
  readonly partial: string;
  /** fsyncs it and renames it into place; resolves with its size. */
  commit(): Promise<number>;
  /** Removes it (and nothing under the final name is left). */
  discard(): Promise<void>;
}

/** Creates `path.partial` for a program to write; see `PartialFile`. */
export async function createPartialFile(path: string): Promise<PartialFile> {
  const partial = path + PARTIAL_SUFFIX;
  try {
    await ensurePrivateDir(dirname(path));
    await (await open(partial, 'w', FILE_MODE)).close();
  } catch (error) {
    throw fileSystemError(error, path, 'creating');
  }
  return {
    partial,
    async commit() {
      try {
        return await publishPartial(partial, path);
      } catch (error) {
        await rm(partial, { force: true });
        throw fileSystemError(error, path);
      }
    },
    discard: () => rm(partial, { force: true }),
  };
}

/**
 * Copies `from` to `path` atomically (`.partial`, mode 0600, fsynced, renamed), without reading it
 * into this process: a reflink where the file system shares blocks (btrfs, XFS); else `dd` with
 * `oflag=direct`, which writes past the page cache (the copy does not evict the database's cache,
 * and costs a seventh of `copy_file_range`'s CPU: bench/README.md, tenth run); else, where
 * O_DIRECT is refused, `copy_file_range`. Checks the copy's size against `bytes`; the content is
 * the source's, whose sha256 the caller already knows (nothing is re-read to hash it). With
 * `link` (the core's `PutSource.link`) the partial is a hard link to the source when it can be.
 */
export async function copyFileAtomic(
  from: string,
  path: string,
  bytes: number,
  options: { signal?: AbortSignal; link?: (to: string) => Promise<boolean> } = {},
): Promise<FileDigest['bytes']> {
  const partial = path + PARTIAL_SUFFIX;
  try {
    await ensurePrivateDir(dirname(path));
    options.signal?.throwIfAborted();
    // A staged file the core hands over (PutSource.link) is this copy: no byte is written again.
    await rm(partial, { force: true });
    if (!(await options.link?.(partial))) await copyPastCache(from, partial, options.signal);
    const copied = (await stat(partial)).size;
    if (copied !== bytes) throw new PipelineError('CHECKSUM_MISMATCH', `${from} changed while it was copied to ${path} (${copied} bytes, expected ${bytes})`);
    return await publishPartial(partial, path, options.signal);
  } catch (error) {
    await rm(partial, { force: true });
    throw fileSystemError(error, path);
  }
}

/** The copy behind `copyFileAtomic`: reflink, else `dd oflag=direct`, else `copy_file_range`. */
async function copyPastCache(from: string, partial: string, signal?: AbortSignal): Promise<void> {
  const reflinked = await copyFile(from, partial, constants.COPYFILE_FICLONE_FORCE).then(
    () => true,
    () => false,
  );
  if (!reflinked) {
    await rm(partial, { force: true });
    await (await open(partial, 'wx', FILE_MODE)).close();
    const direct = await exec('dd', [`if=${from}`, `of=${partial}`, 'bs=4M', 'oflag=direct', 'conv=notrunc,fsync', 'status=none'], { signal, label: 'dd', writes: partial }).then(
      () => true,
      (error: unknown) => {
        if (signal?.aborted) throw error;
        // A full disk is said as every other write says it, naming the file and not dd's partial.
        if (isPipelineError(error) && error.code === 'NO_SPACE') throw Object.assign(new Error(error.message), { code: error.details?.errno ?? 'ENOSPC', syscall: 'write' });
        return false;
      },
    );
    if (direct) return;
    await rm(partial, { force: true });
    await copyFile(from, partial, constants.COPYFILE_FICLONE);
  }
  await chmod(partial, FILE_MODE);
}

/** fsync a directory so a rename inside it survives a crash. */
export async function syncDir(path: string): Promise<void> {
  const dir = await open(path, 'r').catch(() => null);
  if (!dir) return;
  await dir.sync().catch(() => {});
  await dir.close();
}

export async function hashFile(path: string, signal?: AbortSignal): Promise<FileDigest> {
  const digest = new DigestStream();
  try {
    await pipeline(createReadStream(path), digest, new Writable({ write: (_c, _e, cb) => cb() }), { signal });
  } catch (error) {
    throw fileSystemError(error, path, 'reading');
  }
  return digest.digest();
}

export async function fileSize(path: string): Promise<number> {
  return (await stat(path)).size;
}
