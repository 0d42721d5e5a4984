/** listSets and readManifest against a real local folder: each state, and what is not a set. */
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { DAMAGE_MARKER_NAME, MANIFEST_NAME, type Destination, type StoredSet } from './destination.js';
import { LocalFolderDestination } from './local-folder.js';
import { MAX_MANIFEST_BYTES } from './manifest.js';
import { listSets, readManifest, recordDamage } from './sets.js';
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

describe('listSets with a destination that lists odd things', () => {
  const a = '20261125T014500Z-mastodon';
  const b = '20261126T014500Z-mastodon';
  const fake = (stored: StoredSet[], manifests: Record<string, string> = {}): Destination => ({
    describe: () => 'fake',
    put: async () => {},
    list: async () => stored,
    get: async (setId, _name, to) => {
      if (!(setId in manifests)) throw new Error(`no manifest for ${setId}`);
      await writeFile(to, manifests[setId]!);
    },
    delete: async () => {},
  });

  it('skips names that are not set ids, sorts what it lists, and never reads the manifest of a set without one', async () => {
    const d = fake(
      [
        { id: b, hasManifest: false, files: [{ name: 'db.dump.zst', bytes: 10 }] },
        { id: 'lost+found', hasManifest: true, files: [] },
        { id: a, hasManifest: true, files: [{ name: 'db.dump.zst', bytes: 10 }, { name: MANIFEST_NAME, bytes: 500 }] },
      ],
      { [a]: manifestOf(a) },
    );
    const sets = await listSets(d);
    expect(sets.map((s) => [s.id, s.state, s.problem])).toEqual([
      [a, 'complete', undefined],
      [b, 'partial', 'no manifest (interrupted, or still being written)'],
    ]);
  });

  it('a destination that lists no files: the manifest is read, but sizes cannot be checked (damaged, not complete)', async () => {
    const [set] = await listSets(fake([{ id: a, hasManifest: true }], { [a]: manifestOf(a) }));
    expect(set).toMatchObject({ state: 'damaged', complete: false, problem: 'the destination does not list the files of its sets, so their sizes cannot be checked' });
    expect(set!.manifest?.id).toBe(a);
  });

  it('a recorded damage marker makes a set with a good manifest and good sizes damaged', async () => {
    const root = await tempDir('bp-sets-');
    const d = new LocalFolderDestination(root);
    await mkdir(join(root, a));
    await writeFile(join(root, a, 'db.dump.zst'), '0123456789');
    await writeFile(join(root, a, MANIFEST_NAME), manifestOf(a));
    expect((await listSets(d))[0]!.state).toBe('complete');
    const scratch = await tempDir('bp-scratch-');
    await recordDamage(d, a, 'db.dump.zst does not match its manifest', { scratchDir: scratch });
    const [set] = await listSets(d);
    expect(set).toMatchObject({ state: 'damaged', complete: false });
    expect(set!.problem).toMatch(/^a restore or verify/);
    const marker = JSON.parse(await readFile(join(root, a, DAMAGE_MARKER_NAME), 'utf8')) as { setId: string; problem: string; foundAt: string };
    expect(marker).toMatchObject({ setId: a, problem: 'db.dump.zst does not match its manifest' });
    expect(Number.isNaN(Date.parse(marker.foundAt))).toBe(false);
    expect(await readdir(scratch)).toEqual([]);
  });

  it('recordDamage never throws: a destination that refuses the write gets a warning naming the set', async () => {
    const warnings: string[] = [];
    const refusing: Destination = { ...fake([]), put: async () => Promise.reject(new Error('read-only file system')) };
    const scratch = await tempDir('bp-scratch-');
    await recordDamage(refusing, a, 'bad', { scratchDir: scratch, log: { warn: (_o, msg) => warnings.push(msg) } });
    expect(warnings).toEqual([`could not record in ${a} that it is damaged: read-only file system`]);
    expect(await readdir(scratch)).toEqual([]);
    await expect(recordDamage(refusing, a, 'bad', { scratchDir: scratch })).resolves.toBeUndefined();
  });
});
