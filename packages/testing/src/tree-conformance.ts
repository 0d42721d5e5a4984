/**
 * The tree cases of the destination conformance suite, for destinations that declare the optional
 * tree capability (`putTree`, `getTree`, `treeEntries`; see the core's tree.ts). Skipped, and
 * said so, for destinations without it. What they check: a tree round-trips (every file's content,
 * names with spaces and unicode, hidden files); `treeEntries` gives back the entries; the listing
 * reports the tree only once sealed; a second set with one file changed writes one file, and
 * still restores in full; deleting the first set leaves the second whole; a source file that does
 * not match its sha256 is refused with CHECKSUM_MISMATCH and leaves no sealed tree; a manifest
 * naming a tree the destination does not hold makes the set damaged, never complete; a missing
 * tree rejects with SET_NOT_FOUND.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { listSets, MANIFEST_FORMAT, MANIFEST_NAME, storesTrees, writeTreeIndex, type Destination, type TreeEntry } from '@backup-pipeline/core';

interface Env {
  d: Destination;
  dir: string;
  newSetId(): string;
}

const PATHS = ['accounts/avatars/000/000/001/original/a.png', 'custom_emojis/images/000/blob cat ü.png', 'media_attachments/files/109/名前 (1).jpg', '.hidden/x', 'top.txt'];

export function describeTreeConformance(env: () => Env): void {
  describe('trees (optional capability)', () => {
    const make = async (files: Record<string, Buffer>): Promise<{ dir: string; entries: TreeEntry[] }> => {
      const dir = await mkdtemp(join(env().dir, 'tree-src-'));
      const entries: TreeEntry[] = [];
      for (const [path, content] of Object.entries(files)) {
        await mkdir(dirname(join(dir, path)), { recursive: true });
        await writeFile(join(dir, path), content);
        entries.push({ path, bytes: content.length, sha256: createHash('sha256').update(content).digest('hex'), mode: 0o644, mtimeMs: Date.now() });
      }
      return { dir, entries: entries.sort((a, b) => (a.path < b.path ? -1 : 1)) };
    };
    const readBack = async (d: Destination, setId: string, entries: TreeEntry[]): Promise<Record<string, string>> => {
      const to = await mkdtemp(join(env().dir, 'tree-get-'));
      await d.getTree!(setId, 'media', entries, to);
      const out: Record<string, string> = {};
      for (const e of entries) out[e.path] = createHash('sha256').update(await readFile(join(to, e.path))).digest('hex');
      await rm(to, { recursive: true, force: true });
      return out;
    };
    const shas = (entries: TreeEntry[]) => Object.fromEntries(entries.map((e) => [e.path, e.sha256]));
    const manifestWithTree = async (setId: string, index: { path: string; bytes: number; sha256: string }, tree: { files: number; bytes: number }) => {
      const path = join(env().dir, `manifest-${setId}.json`);
      await writeFile(
        path,
        JSON.stringify({
          format: MANIFEST_FORMAT,
          id: setId,
          pipeline: 'conformance',
          source: 'conformance',
          createdAt: new Date().toISOString(),
          completedAt: new Date().toISOString(),
          framework: { name: 'backup-pipeline', version: '0.0.0', node: process.version },
          host: 'conformance',
          artifacts: [{ name: 'media.index.jsonl', kind: 'files', format: 'media-tree', compression: 'none', bytes: index.bytes, sha256: index.sha256, meta: {}, tree: { name: 'media', ...tree, listSha256: index.sha256 } }],
          stages: [],
          facts: {},
          tools: {},
          verified: false,
        }),
      );
      const content = await readFile(path);
      return { path, bytes: content.length, sha256: createHash('sha256').update(content).digest('hex') };
    };

    it('is declared completely or not at all (putTree, getTree and treeEntries)', () => {
      const { d } = env();
      const declared = [d.putTree, d.getTree, d.treeEntries].filter((f) => typeof f === 'function').length;
      expect([0, 3]).toContain(declared);
    });

    it('round-trips a tree, reports it sealed, pays only for a changed file in the next set, and keeps the next set whole when the first is deleted', async (test) => {
      const { d, newSetId } = env();
      if (!storesTrees(d)) return test.skip();
      const files = Object.fromEntries(PATHS.map((p) => [p, randomBytes(3000)]));
      const first = await make(files);
      const set1 = newSetId();
      const put1 = await d.putTree(set1, 'media', first);
      expect(put1).toMatchObject({ files: PATHS.length, bytes: PATHS.length * 3000, filesWritten: PATHS.length, bytesWritten: PATHS.length * 3000 });
      expect(await readBack(d, set1, first.entries)).toEqual(shas(first.entries));
      expect(await d.treeEntries(set1, 'media')).toEqual(first.entries);

      // Complete once the index and the manifest are there, with the tree sealed.
      const index = join(env().dir, `index-${set1}`);
      const digest = await writeTreeIndex(index, first.entries);
      await d.put(set1, 'media.index.jsonl', { path: index, ...digest });
      await d.put(set1, MANIFEST_NAME, await manifestWithTree(set1, { path: index, ...digest }, { files: PATHS.length, bytes: PATHS.length * 3000 }));
      const [listed] = (await listSets(d, { scratchDir: env().dir })).filter((s) => s.id === set1);
      expect(listed).toMatchObject({ state: 'complete', trees: [expect.objectContaining({ name: 'media' })] });

      const changed = { ...files, [PATHS[2]!]: randomBytes(3000) };
      const second = await make(changed);
      const set2 = newSetId();
      const put2 = await d.putTree(set2, 'media', second);
      expect(put2).toMatchObject({ files: PATHS.length, filesWritten: 1, bytesWritten: 3000 });
      await d.delete(set1);
      expect(await readBack(d, set2, second.entries)).toEqual(shas(second.entries));
      await expect(d.treeEntries(set1, 'media')).rejects.toMatchObject({ code: 'SET_NOT_FOUND' });
      await d.delete(set2);
      for (const t of [first, second]) await rm(t.dir, { recursive: true, force: true });
    });

    it('refuses a tree file whose content does not match its sha256, and leaves no sealed tree', async (test) => {
      const { d, newSetId } = env();
      if (!storesTrees(d)) return test.skip();
      const tree = await make({ 'a/one.bin': randomBytes(1000), 'b/two.bin': randomBytes(1000) });
      const setId = newSetId();
      const lying = { dir: tree.dir, entries: tree.entries.map((e, i) => (i === 1 ? { ...e, sha256: 'f'.repeat(64) } : e)) };
      await expect(d.putTree(setId, 'media', lying)).rejects.toMatchObject({ code: 'CHECKSUM_MISMATCH' });
      const [listed] = (await d.list()).filter((s) => s.id === setId);
      expect(listed?.trees ?? []).toEqual([]);
      await expect(d.treeEntries(setId, 'media')).rejects.toMatchObject({ code: 'SET_NOT_FOUND' });
      await d.delete(setId);
      await rm(tree.dir, { recursive: true, force: true });
    });

    it('lists a set whose manifest names a tree it does not hold as damaged, and rejects a get of a missing tree', async (test) => {
      const { d, newSetId } = env();
      if (!storesTrees(d)) return test.skip();
      const setId = newSetId();
      const entries: TreeEntry[] = [{ path: 'x', bytes: 1, sha256: createHash('sha256').update('x').digest('hex'), mode: 0o644, mtimeMs: 0 }];
      const index = join(env().dir, `index-${setId}`);
      const digest = await writeTreeIndex(index, entries);
      await d.put(setId, 'media.index.jsonl', { path: index, ...digest });
      await d.put(setId, MANIFEST_NAME, await manifestWithTree(setId, { path: index, ...digest }, { files: 1, bytes: 1 }));
      const [info] = (await listSets(d, { scratchDir: env().dir })).filter((s) => s.id === setId);
      expect(info).toMatchObject({ state: 'damaged', complete: false });
      expect(info!.problem).toMatch(/tree media/);
      await expect(d.getTree!(setId, 'media', entries, join(env().dir, 'no-tree'))).rejects.toMatchObject({ code: 'SET_NOT_FOUND' });
      await d.delete(setId);
    });
  });
}
