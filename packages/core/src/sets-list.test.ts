/** listSets and readManifest against a real local folder: each state, and what is not a set. */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { MANIFEST_NAME, type Destination, type StoredSet } from './destination.js';
import { LocalFolderDestination } from './local-folder.js';
import { MAX_MANIFEST_BYTES } from './manifest.js';
import { listSets, readManifest } from './sets.js';
import { sampleManifest, tempDir } from './test-fixtures.js';

const manifestOf = (id: string, bytes = 10) => JSON.stringify({ ...sampleManifest, id, artifacts: [{ ...sampleManifest.artifacts[0]!, bytes }] });

async function folderWith(sets: Record<string, Record<string, string>>): Promise<{ root: string; d: LocalFolderDestination }> {
  const root = await tempDir('bp-sets-');
  for (const [id, files] of Object.entries(sets)) {
    await mkdir(join(root, id), { recursive: true });
    for (const [name, content] of Object.entries(files)) await writeFile(join(root, id, name), content);
  }
  return { root, d: new LocalFolderDestination(root) };
}

describe('listSets', () => {
  it('judges each set, ignores what is not a set id, and sorts by id', async () => {
    const a = '20261125T014500Z-mastodon';
    const b = '20261126T014500Z-mastodon';
    const c = '20261124T014500Z-mastodon';
    const e = '20261123T014500Z-mastodon';
    const { d } = await folderWith({
      [b]: { 'db.dump.zst': '0123456789', [MANIFEST_NAME]: manifestOf(b) },
      [a]: { 'db.dump.zst': '0123456789' },
      [c]: { 'db.dump.zst': '0123456789', [MANIFEST_NAME]: '{"format":' },
      [e]: { 'db.dump.zst': '012345678', [MANIFEST_NAME]: manifestOf(e) },
      'not-a-set': { 'x.txt': 'x' },
    });
    const scratch = await tempDir('bp-scratch-');
    const sets = await listSets(d, { scratchDir: scratch });
    expect(sets.map((s) => [s.id, s.state, s.complete])).toEqual([
      [e, 'damaged', false],
      [c, 'damaged', false],
      [a, 'partial', false],
      [b, 'complete', true],
    ]);
    expect(sets[0]).toMatchObject({ source: 'mastodon', time: new Date('2026-11-23T01:45:00Z'), problem: 'db.dump.zst is 9 bytes, the manifest says 10' });
    expect(sets[0]!.manifest?.id).toBe(e);
    expect(sets[1]!.problem).toMatch(/^manifest is not JSON/);
    expect(sets[2]!.problem).toMatch(/^no manifest/);
    expect(sets[3]!.manifest?.id).toBe(b);
    expect(sets[3]!.problem).toBeUndefined();
    const { readdir } = await import('node:fs/promises');
    expect(await readdir(scratch), 'manifest scratch removed').toEqual([]);
  });

  it('calls a set damaged, without fetching it, when the listing says its manifest is too large', async () => {
    const id = '20261125T014500Z-mastodon';
    let fetched = 0;
    const d: Destination = {
      describe: () => 'fake',
      put: async () => {},
      list: async (): Promise<StoredSet[]> => [{ id, hasManifest: true, files: [{ name: MANIFEST_NAME, bytes: MAX_MANIFEST_BYTES + 1 }, { name: 'db.dump.zst', bytes: 10 }] }],
      get: async () => {
        fetched++;
      },
      delete: async () => {},
    };
    const [set] = await listSets(d);
    expect(set).toMatchObject({ id, state: 'damaged', complete: false, problem: `manifest is larger than ${MAX_MANIFEST_BYTES} bytes` });
    expect(fetched).toBe(0);
  });

  it('fetches a manifest exactly at the size limit (and judges it)', async () => {
    const id = '20261125T014500Z-mastodon';
    const d: Destination = {
      describe: () => 'fake',
      put: async () => {},
      list: async (): Promise<StoredSet[]> => [{ id, hasManifest: true, files: [{ name: MANIFEST_NAME, bytes: MAX_MANIFEST_BYTES }, { name: 'db.dump.zst', bytes: 10 }] }],
      get: async (_set, _name, to) => writeFile(to, manifestOf(id)),
      delete: async () => {},
    };
    expect((await listSets(d))[0]).toMatchObject({ state: 'complete', complete: true });
  });

  it('propagates a failing listing (never an empty list)', async () => {
    const d: Destination = { describe: () => 'x', put: async () => {}, list: async () => Promise.reject(new Error('listing refused')), get: async () => {}, delete: async () => {} };
    await expect(listSets(d)).rejects.toThrow('listing refused');
  });
});

describe('readManifest', () => {
  it('explains a manifest that cannot be fetched, and one of another set', async () => {
    const id = '20261125T014500Z-mastodon';
    const failing: Destination = { describe: () => 'x', put: async () => {}, list: async () => [], get: async () => Promise.reject(new Error('connection reset')), delete: async () => {} };
    expect(await readManifest(failing, id)).toEqual({ problem: 'manifest cannot be read: connection reset' });
    const { d } = await folderWith({ [id]: { [MANIFEST_NAME]: manifestOf('20261126T014500Z-mastodon') } });
    expect(await readManifest(d, id)).toEqual({ problem: `manifest belongs to set 20261126T014500Z-mastodon, not ${id}` });
    expect((await readManifest(d, id, await tempDir('bp-scratch-'))).problem).toMatch(/belongs to set/);
  });

  it('reads a valid manifest', async () => {
    const id = '20261125T014500Z-mastodon';
    const { d } = await folderWith({ [id]: { [MANIFEST_NAME]: manifestOf(id) } });
    expect((await readManifest(d, id)).manifest).toMatchObject({ id, artifacts: [{ name: 'db.dump.zst', bytes: 10 }] });
  });
});
