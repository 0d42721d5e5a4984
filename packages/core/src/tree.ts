/**
 * Tree artifacts: a folder backed up file by file (media), so a destination can store each set's
 * copy while paying only for what changed since its previous set (hard links, content-addressed
 * objects). The artifact file of a tree is its **index**: one JSON header line, then one JSON line
 * per regular file (path, bytes, sha256, mode, mtime), sorted by path. It is checksummed in the
 * manifest like any artifact; the manifest entry's `tree` says the files it lists must be held by
 * the destination, under the tree's name, for the set to be complete.
 *
 * A destination that stores trees implements `putTree`, `getTree` and `treeEntries` (see
 * destination.ts) and, once a tree is complete, writes its **seal** `<tree>.tree` into the set (the
 * index as the destination received it): its listing reports the tree in `StoredSet.trees` only
 * when the seal is there. The functions below are the local-folder implementation (the `local`
 * plugin and the work dir) and the index format every destination uses.
 */
import { createReadStream } from 'node:fs';
import { link, lstat, mkdir, readFile, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { writeFileAtomic, type FileDigest } from './atomic-file.js';
import type { DestinationOperationOptions } from './destination.js';
import { PipelineError } from './errors.js';
import { nameProblem } from './names.js';

export const TREE_INDEX_FORMAT = 'backup-pipeline/tree@1';

/** One regular file of a tree. */
export interface TreeEntry {
  /** Path inside the tree, `/`-separated; every segment passes `treePathProblem`. */
  path: string;
  bytes: number;
  sha256: string;
  /** Permission bits of the source file (0o777 at most; restored on the way back). */
  mode: number;
  /** Modification time of the source file in ms since the epoch (restored on the way back). */
  mtimeMs: number;
}

/** What `putTree` stores: the files `entries` lists, read from the local folder `dir` (anything else in it is ignored). */
export interface TreeSource {
  dir: string;
  entries: readonly TreeEntry[];
}

/** What a `putTree` stored, and what it had to transfer for it. */
export interface TreePutResult {
  files: number;
  bytes: number;
  /** Files and bytes actually written (new or changed since the destination's previous tree of that name). */
  filesWritten: number;
  bytesWritten: number;
}

/** A complete tree a set holds, as the destination's listing reports it. */
export interface StoredTree {
  name: string;
  /** File count and bytes, when the listing can tell them cheaply (checked against the manifest). */
  files?: number;
  bytes?: number;
}

/** Options of the tree operations. */
export type TreeOperationOptions = DestinationOperationOptions;

/** The seal of tree `name` in a set: written last by `putTree`, it marks the tree complete. */
export const treeSealName = (name: string): string => `${name}.tree`;

/** Why `path` cannot be a file of a tree (each segment is checked with the one name check; a leading dot is allowed). */
export function treePathProblem(path: unknown): string | undefined {
  if (typeof path !== 'string' || path.length === 0) return 'is empty';
  if (Buffer.byteLength(path, 'utf8') > 4096) return 'is longer than 4096 bytes';
  for (const segment of path.split('/')) {
    if (segment === '' || segment === '.' || segment === '..') return 'has an empty, "." or ".." segment';
    // Hidden files are ordinary in a folder tree; every other rule of names.ts holds.
    const problem = nameProblem(segment.startsWith('.') ? `x${segment}` : segment);
    if (problem) return `has a segment that ${problem}`;
  }
  return undefined;
}

/** `dir/path` after the tree path check: the only way a path read from an index becomes a local path. */
export function pathInTree(dir: string, path: string): string {
  const problem = treePathProblem(path);
  if (problem) throw new PipelineError('NAME_INVALID', `${JSON.stringify(path)} is not a valid path in a tree: it ${problem}`);
  return join(dir, ...path.split('/'));
}

const SHA256 = /^[0-9a-f]{64}$/;
const isBytes = (n: unknown): n is number => typeof n === 'number' && Number.isSafeInteger(n) && n >= 0;

/** The index text of `entries` (sorted by path; validated as readers will read it). */
export function serializeTreeIndex(entries: readonly TreeEntry[]): string {
  const sorted = [...entries].sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  const lines = [JSON.stringify({ format: TREE_INDEX_FORMAT, files: sorted.length, bytes: sorted.reduce((n, e) => n + e.bytes, 0) })];
  for (const e of sorted) lines.push(JSON.stringify({ path: e.path, bytes: e.bytes, sha256: e.sha256, mode: e.mode, mtimeMs: e.mtimeMs }));
  const text = lines.join('\n') + '\n';
  parseTreeIndex(text);
  return text;
}

/** Parses and checks index text (header, every field, paths, order, no duplicates); throws MANIFEST_INVALID on the first problem. */
export function parseTreeIndex(text: string): TreeEntry[] {
  const bad = (line: number, why: string) => new PipelineError('MANIFEST_INVALID', `tree index line ${line}: ${why}`, { hint: 'The index of this tree is corrupt; the set cannot be trusted. Use another set.' });
  const lines = text.split('\n');
  if (lines.at(-1) === '') lines.pop();
  let header: { format?: unknown; files?: unknown; bytes?: unknown };
  try {
    header = JSON.parse(lines[0] ?? '') as typeof header;
  } catch {
    throw bad(1, 'not a JSON header');
  }
  if (header?.format !== TREE_INDEX_FORMAT) throw bad(1, `not a ${TREE_INDEX_FORMAT} index`);
  const entries: TreeEntry[] = [];
  let total = 0;
  for (let i = 1; i < lines.length; i++) {
    let e: TreeEntry;
    try {
      e = JSON.parse(lines[i]!) as TreeEntry;
    } catch {
      throw bad(i + 1, 'not JSON');
    }
    const problem = treePathProblem(e?.path);
    if (problem) throw bad(i + 1, `path ${JSON.stringify(e?.path)} ${problem}`);
    if (!isBytes(e.bytes) || typeof e.sha256 !== 'string' || !SHA256.test(e.sha256) || !isBytes(e.mode) || e.mode > 0o777 || typeof e.mtimeMs !== 'number' || !Number.isFinite(e.mtimeMs)) {
      throw bad(i + 1, `${e.path}: bytes, sha256, mode or mtimeMs is missing or invalid`);
    }
    const previous = entries.at(-1);
    if (previous && !(previous.path < e.path)) throw bad(i + 1, `${e.path} is out of order or listed twice`);
    entries.push({ path: e.path, bytes: e.bytes, sha256: e.sha256, mode: e.mode, mtimeMs: e.mtimeMs });
    total += e.bytes;
  }
  if (header.files !== entries.length || header.bytes !== total) throw bad(1, `the header says ${String(header.files)} files and ${String(header.bytes)} bytes, the index lists ${entries.length} and ${total}`);
  return entries;
}

/** Reads an index file. */
export async function readTreeIndex(path: string): Promise<TreeEntry[]> {
  return parseTreeIndex(await readFile(path, 'utf8'));
}

/** Writes an index file atomically (0600), resolving with its size and sha256 (the digest of the file list). */
export async function writeTreeIndex(path: string, entries: readonly TreeEntry[], options: { signal?: AbortSignal } = {}): Promise<FileDigest> {
  return writeFileAtomic(path, serializeTreeIndex(entries), { signal: options.signal });
}

/** Throws CHECKSUM_MISMATCH unless `got` is what `entry` says. */
export function checkTreeFile(entry: TreeEntry, got: FileDigest, where: string): void {
  if (got.sha256 !== entry.sha256 || got.bytes !== entry.bytes) {
    throw new PipelineError('CHECKSUM_MISMATCH', `${where}/${entry.path} has sha256 ${got.sha256.slice(0, 16)}… (${got.bytes} bytes), expected ${entry.sha256.slice(0, 16)}… (${entry.bytes} bytes)`, {
      details: { path: entry.path },
    });
  }
}

/** Runs `work` over `items` with at most `limit` at a time; the first failure stops the rest. */
export async function eachLimited<T>(items: readonly T[], limit: number, work: (item: T) => Promise<void>, signal?: AbortSignal): Promise<void> {
  let next = 0;
  let failed = false;
  const worker = async () => {
    while (!failed && next < items.length) {
      signal?.throwIfAborted();
      const item = items[next++]!;
      try {
        await work(item);
      } catch (error) {
        failed = true;
        throw error;
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
}

/** Copies one file into `to` atomically (0600), checked against its entry. */
export async function copyTreeFile(from: string, to: string, entry: TreeEntry, where: string, options: TreeOperationOptions = {}): Promise<FileDigest> {
  const digest = await writeFileAtomic(to, createReadStream(from), { signal: options.signal });
  try {
    checkTreeFile(entry, digest, where);
  } catch (error) {
    await rm(to, { force: true });
    throw error;
  }
  return digest;
}

/**
 * The local-folder `putTree`: writes `source`'s files under `treeDir`, hard-linking each file whose
 * path, size and sha256 equal those of `previous` (the destination's previous tree of that name)
 * instead of copying it, then writes the seal. Copied files are checked against their sha256.
 */
export async function putLocalTree(
  treeDir: string,
  sealPath: string,
  source: TreeSource,
  previous: { dir: string; entries: readonly TreeEntry[] } | undefined,
  options: TreeOperationOptions = {},
): Promise<TreePutResult> {
  const before = new Map((previous?.entries ?? []).map((e) => [e.path, e]));
  // A seal left by an earlier attempt goes first: the tree is complete again only once this one ends.
  await rm(sealPath, { force: true });
  await mkdir(treeDir, { recursive: true, mode: 0o700 });
  let filesWritten = 0;
  let bytesWritten = 0;
  let done = 0;
  const madeDirs = new Set<string>();
  await eachLimited(
    source.entries,
    4,
    async (entry) => {
      const to = pathInTree(treeDir, entry.path);
      const parent = to.slice(0, to.lastIndexOf('/'));
      if (!madeDirs.has(parent)) {
        await mkdir(parent, { recursive: true, mode: 0o700 });
        madeDirs.add(parent);
      }
      const old = before.get(entry.path);
      if (old && previous && old.bytes === entry.bytes && old.sha256 === entry.sha256) {
        const from = pathInTree(previous.dir, entry.path);
        const existing = await lstat(to).catch(() => undefined);
        const base = await stat(from).catch(() => undefined);
        if (base?.isFile() && base.size === entry.bytes) {
          if (existing && existing.ino === base.ino) return;
          if (existing) await rm(to, { force: true });
          await link(from, to);
          done += entry.bytes;
          options.onBytes?.(done);
          return;
        }
      }
      await copyTreeFile(pathInTree(source.dir, entry.path), to, entry, 'the tree being stored', options);
      filesWritten++;
      bytesWritten += entry.bytes;
      done += entry.bytes;
      options.onBytes?.(done);
    },
    options.signal,
  );
  await writeTreeIndex(sealPath, source.entries, { signal: options.signal });
  return { files: source.entries.length, bytes: source.entries.reduce((n, e) => n + e.bytes, 0), filesWritten, bytesWritten };
}

/** The local-folder `getTree`: copies `entries` from `treeDir` into `toDir`, each checked against its sha256. */
export async function getLocalTree(treeDir: string, entries: readonly TreeEntry[], toDir: string, where: string, options: TreeOperationOptions = {}): Promise<void> {
  let done = 0;
  await eachLimited(
    entries,
    4,
    async (entry) => {
      const from = pathInTree(treeDir, entry.path);
      if (!(await stat(from).catch(() => undefined))) throw new PipelineError('SET_NOT_FOUND', `${where}/${entry.path} is missing`, { details: { path: entry.path } });
      await copyTreeFile(from, pathInTree(toDir, entry.path), entry, where, options);
      done += entry.bytes;
      options.onBytes?.(done);
    },
    options.signal,
  );
}
