/**
 * The one way backup-pipeline writes a file: into `NAME.partial` (mode 0600, its folder 0700),
 * hashed with sha256 while it streams, fsynced, then renamed into place. A failed or interrupted
 * write leaves nothing under the final name.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdir, open, rename, rm, stat } from 'node:fs/promises';
import { dirname } from 'node:path';
import { Readable, Transform, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';

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
  await mkdir(path, { recursive: true, mode: DIR_MODE });
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

/** Streams `source` into `path` atomically; resolves with its size and sha256. */
export async function writeFileAtomic(path: string, source: Source, options: AtomicWriteOptions = {}): Promise<FileDigest> {
  await ensurePrivateDir(dirname(path));
  const partial = path + PARTIAL_SUFFIX;
  const handle = await open(partial, 'w', options.mode ?? FILE_MODE);
  const digest = new DigestStream(options.onBytes);
  try {
    const input = typeof source === 'string' || source instanceof Uint8Array ? Readable.from([Buffer.from(source)]) : source;
    // A stream on the raw fd: a stream on the FileHandle itself holds a reference that (on Node 20)
    // makes `handle.close()` wait forever when autoClose is false.
    const sink = createWriteStream('', { fd: handle.fd, autoClose: false });
    await pipeline(input, digest, sink, { signal: options.signal });
    await handle.sync();
    await handle.close();
    await rename(partial, path);
    await syncDir(dirname(path));
    return digest.digest();
  } catch (error) {
    await handle.close().catch(() => {});
    await rm(partial, { force: true });
    throw error;
  }
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
  await pipeline(createReadStream(path), digest, new Writable({ write: (_c, _e, cb) => cb() }), { signal });
  return digest.digest();
}

export async function fileSize(path: string): Promise<number> {
  return (await stat(path)).size;
}
