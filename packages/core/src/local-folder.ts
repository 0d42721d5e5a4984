/**
 * A destination in a local folder. It serves the `local` plugin and the run's work dir, and is the
 * reference implementation of the Destination interface.
 */
import { constants, createReadStream } from 'node:fs';
import { readdir, rm, stat, access, open } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import { copyFileAtomic, fileSystemError, writeFileAtomic } from './atomic-file.js';
import { assertSetId, MANIFEST_NAME, type Destination, type DestinationOperationOptions, type PutSource, type StoredFile, type StoredSet } from './destination.js';
import { PipelineError } from './errors.js';
import { parseSetId } from './manifest.js';
import { assertFileName } from './names.js';
import { getLocalTree, putLocalTree, readTreeIndex, treeSealName, TREE_INDEX_FORMAT, type StoredTree, type TreeEntry, type TreeOperationOptions, type TreePutResult, type TreeSource } from './tree.js';

export class LocalFolderDestination implements Destination {
  constructor(readonly root: string) {}

  describe(): string {
    return `local folder ${this.root}`;
  }

  /** Checks the folder (or the nearest folder above it, which `put` will create it in) is writable. Creates nothing. */
  async check(): Promise<void> {
    let dir = this.root;
    for (;;) {
      const info = await stat(dir).catch(() => undefined);
      if (info) {
        if (!info.isDirectory()) throw new PipelineError('DESTINATION_FAILED', `${dir} is not a folder`);
        await access(dir, constants.W_OK).catch(() => {
          throw new PipelineError('DESTINATION_FAILED', `${dir} is not writable`);
        });
        return;
      }
      if (dirname(dir) === dir) return;
      dir = dirname(dir);
    }
  }

  async put(setId: string, name: string, source: PutSource, options: DestinationOperationOptions = {}): Promise<void> {
    const target = join(this.setDir(setId), name);
    // A staged file the core hashed as it wrote it is taken by hard link when the core offers it,
    // else copied without being hashed again (copyFileAtomic); any other source is hashed on the way and checked.
    if (source.hashedAsWritten) {
      const bytes = await copyFileAtomic(source.path, target, source.bytes, { signal: options.signal, link: source.link });
      options.onBytes?.(bytes);
      return;
    }
    const written = await writeFileAtomic(target, createReadStream(source.path), { signal: options.signal, onBytes: options.onBytes });
    if (written.sha256 !== source.sha256 || written.bytes !== source.bytes) {
      await rm(target, { force: true });
      throw new PipelineError('CHECKSUM_MISMATCH', `${name} changed while it was copied to ${this.root} (sha256 ${written.sha256}, expected ${source.sha256})`);
    }
  }

  async list(): Promise<StoredSet[]> {
    const entries = await readdir(this.root, { withFileTypes: true }).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return [];
      throw e;
    });
    const sets: StoredSet[] = [];
    for (const entry of entries) {
      if (!entry.isDirectory() || !parseSetId(entry.name)) continue;
      const dir = join(this.root, entry.name);
      const files: StoredFile[] = [];
      let manifestAt: Date | undefined;
      for (const file of await readdir(dir, { withFileTypes: true })) {
        if (!file.isFile()) continue;
        const info = await stat(join(dir, file.name));
        files.push({ name: file.name, bytes: info.size });
        if (file.name === MANIFEST_NAME) manifestAt = info.mtime;
      }
      const modifiedAt = manifestAt ?? (await stat(dir)).mtime;
      const trees = await sealedTrees(dir, files);
      sets.push({ id: entry.name, hasManifest: manifestAt !== undefined, modifiedAt, files, ...(trees.length > 0 ? { trees } : {}) });
    }
    return sets.sort((a, b) => a.id.localeCompare(b.id));
  }

  async get(setId: string, name: string, toPath: string, options: DestinationOperationOptions = {}): Promise<void> {
    const from = join(this.setDir(setId), name);
    await stat(from).catch(() => {
      throw new PipelineError('SET_NOT_FOUND', `${setId}/${name} is not in ${this.root}`);
    });
    await writeFileAtomic(toPath, createReadStream(from), { signal: options.signal, onBytes: options.onBytes });
  }

  /** The stored file's path (restore's programs read it themselves). */
  async localFile(setId: string, name: string): Promise<string> {
    assertFileName(name);
    const from = join(this.setDir(setId), name);
    const found = await stat(from).catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT' || error.code === 'ENOTDIR') throw new PipelineError('SET_NOT_FOUND', `${setId}/${name} is not in ${this.root}`);
      throw fileSystemError(error, from, 'reading');
    });
    if (!found.isFile()) throw new PipelineError('SET_NOT_FOUND', `${setId}/${name} in ${this.root} is not a file`);
    return from;
  }

  /** The stored file as a stream (restore reads it in one pass, without a copy). */
  async read(setId: string, name: string, options: DestinationOperationOptions = {}): Promise<Readable> {
    assertFileName(name);
    const from = join(this.setDir(setId), name);
    // Opened here, so that a missing file rejects at once and a file replaced later is not read.
    const handle = await open(from, 'r').catch((error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT' || error.code === 'ENOTDIR') throw new PipelineError('SET_NOT_FOUND', `${setId}/${name} is not in ${this.root}`);
      throw fileSystemError(error, from, 'reading');
    });
    let bytes = 0;
    const stream = handle.createReadStream({ signal: options.signal, highWaterMark: 1024 * 1024 });
    if (options.onBytes) stream.on('data', (chunk: string | Buffer) => options.onBytes!((bytes += chunk.length)));
    return stream;
  }

  async delete(setId: string): Promise<void> {
    // The manifest goes first: a set deleted halfway is then partial, never one that looks damaged.
    await rm(join(this.setDir(setId), MANIFEST_NAME), { force: true });
    await rm(this.setDir(setId), { recursive: true, force: true });
  }

  /** Tree `name` of `setId` as a folder `<root>/<setId>/<name>/`, hard-linked to the newest other set's tree of that name. */
  async putTree(setId: string, name: string, source: TreeSource, options: TreeOperationOptions = {}): Promise<TreePutResult> {
    assertFileName(name);
    const setDir = this.setDir(setId);
    const previous = await this.previousTree(setId, name);
    return putLocalTree(join(setDir, name), join(setDir, treeSealName(name)), source, previous, options);
  }

  async getTree(setId: string, name: string, entries: readonly TreeEntry[], toDir: string, options: TreeOperationOptions = {}): Promise<void> {
    assertFileName(name);
    const setDir = this.setDir(setId);
    if (!(await stat(join(setDir, treeSealName(name))).catch(() => undefined))) throw new PipelineError('SET_NOT_FOUND', `tree ${setId}/${name} is not in ${this.root}`);
    await getLocalTree(join(setDir, name), entries, toDir, `${this.root}/${setId}/${name}`, options);
  }

  async treeEntries(setId: string, name: string): Promise<TreeEntry[]> {
    assertFileName(name);
    const seal = join(this.setDir(setId), treeSealName(name));
    if (!(await stat(seal).catch(() => undefined))) throw new PipelineError('SET_NOT_FOUND', `tree ${setId}/${name} is not in ${this.root}`);
    return readTreeIndex(seal);
  }

  /** The newest set other than `setId` holding a sealed tree `name`, and its entries. */
  private async previousTree(setId: string, name: string): Promise<{ dir: string; entries: TreeEntry[] } | undefined> {
    const ids = (await readdir(this.root).catch(() => [] as string[])).filter((id) => id !== setId && parseSetId(id)).sort().reverse();
    for (const id of ids) {
      const seal = join(this.root, id, treeSealName(name));
      if (!(await stat(seal).catch(() => undefined))) continue;
      const entries = await readTreeIndex(seal).catch(() => undefined);
      if (entries) return { dir: join(this.root, id, name), entries };
    }
    return undefined;
  }

  private setDir(setId: string): string {
    assertSetId(setId);
    return join(this.root, setId);
  }
}

/** The trees sealed in a local set folder, with the counts their seal's header line gives. */
async function sealedTrees(dir: string, files: readonly StoredFile[]): Promise<StoredTree[]> {
  const trees: StoredTree[] = [];
  for (const file of files) {
    if (!file.name.endsWith('.tree')) continue;
    const name = file.name.slice(0, -'.tree'.length);
    const header = await firstLine(join(dir, file.name)).catch(() => undefined);
    let parsed: { format?: unknown; files?: unknown; bytes?: unknown } | undefined;
    try {
      parsed = header ? (JSON.parse(header) as typeof parsed) : undefined;
    } catch {
      parsed = undefined;
    }
    // A seal that is not one (unreadable, another format) does not make a tree complete.
    if (parsed?.format !== TREE_INDEX_FORMAT) continue;
    trees.push({ name, ...(typeof parsed.files === 'number' ? { files: parsed.files } : {}), ...(typeof parsed.bytes === 'number' ? { bytes: parsed.bytes } : {}) });
  }
  return trees;
}

async function firstLine(path: string): Promise<string> {
  const handle = await open(path, 'r');
  try {
    const buffer = Buffer.alloc(1024);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, 0);
    return buffer.subarray(0, bytesRead).toString('utf8').split('\n')[0]!;
  } finally {
    await handle.close();
  }
}
