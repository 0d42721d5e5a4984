import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import {
  createLogger,
  hashFile,
  isPipelineError,
  LocalFolderDestination,
  makeSetId,
  MANIFEST_FORMAT,
  Manifest,
  resolveConfig,
  Runner,
  writeFileAtomic,
  type Destination,
} from '@backup-pipeline/core';
import { writeProducerPlugin } from '@backup-pipeline/testing';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { applyRetention, planRetention, type RetentionPolicy } from './index.js';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '../../..');
const pluginEntry = resolve(here, '../dist/index.js');
const tmpRoot = join(repo, '.vitest-tmp');
let dir: string;
let produceModule: string;
let folderModule: string;

const SOURCE = 'mastodon';
const NOW = new Date('2026-11-25T01:45:00Z'); // 02:45 in Berlin, a Wednesday of ISO week 48
const POLICY: RetentionPolicy = { keepLast: 3, keepDaily: 7, keepWeekly: 4, keepMonthly: 3 };
const DAY = 86_400_000;

/** Adds a set to a real folder through the destination API, with a manifest that passes core's schema. */
async function addSet(dest: Destination, time: Date, options: { source?: string; complete?: boolean; verified?: boolean } = {}): Promise<string> {
  const id = makeSetId(time, options.source ?? SOURCE);
  const scratch = await mkdtemp(join(tmpRoot, 'art-'));
  try {
    const file = join(scratch, 'mastodon_production.dump');
    await writeFileAtomic(file, `dump of ${id}\n`);
    const digest = await hashFile(file);
    await dest.put(id, 'mastodon_production.dump', { path: file, ...digest });
    if (options.complete !== false) {
      const manifest = Manifest.parse({
        format: MANIFEST_FORMAT,
        id,
        pipeline: 'nightly',
        source: options.source ?? SOURCE,
        createdAt: time.toISOString(),
        completedAt: new Date(time.getTime() + 60_000).toISOString(),
        framework: { name: 'backup-pipeline', version: '0.1.0', node: process.version },
        host: hostname(),
        artifacts: [{ name: 'mastodon_production.dump', kind: 'database', format: 'pg-custom', compression: 'none', ...digest, meta: {} }],
        stages: [],
        verified: options.verified ?? true,
      });
      const path = join(scratch, 'manifest.json');
      await writeFileAtomic(path, JSON.stringify(manifest));
      await dest.put(id, 'manifest.json', { path, ...(await hashFile(path)) });
    }
    return id;
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
}

/** 60 complete daily sets at 23:30Z (00:30/01:30 the next day in Berlin), 25 Sep – 23 Nov 2026, plus incomplete ones and another source's sets. */
async function buildTree(root: string) {
  const dest = new LocalFolderDestination(root);
  const daily: string[] = [];
  for (let i = 0; i < 60; i++) daily.push(await addSet(dest, new Date(Date.UTC(2026, 8, 25, 23, 30) + i * DAY)));
  const oldIncomplete = await addSet(dest, new Date('2026-11-10T03:00:00Z'), { complete: false });
  const youngIncomplete = await addSet(dest, new Date('2026-11-24T20:00:00Z'), { complete: false });
  // The destination dates an incomplete set by its folder's mtime: make it match the set's time.
  for (const [id, t] of [[oldIncomplete, '2026-11-10T03:05:00Z'], [youngIncomplete, '2026-11-24T20:05:00Z']] as const) {
    await utimes(join(root, id), new Date(t), new Date(t));
  }
  const other = [await addSet(dest, new Date('2026-01-01T00:00:00Z'), { source: 'redis' }), await addSet(dest, new Date('2026-02-01T00:00:00Z'), { source: 'redis' })];
  return { dest, daily, oldIncomplete, youngIncomplete, other };
}

const id = (iso: string) => makeSetId(new Date(iso), SOURCE);
/** Worked out by hand from the calendar (Berlin dates in comments). */
const EXPECTED_DAILY_SURVIVORS = [
  id('2026-09-29T23:30:00Z'), // monthly 2026-09 (30 Sep)
  id('2026-10-30T23:30:00Z'), // monthly 2026-10 (31 Oct)
  id('2026-11-07T23:30:00Z'), // weekly 2026-W45 (Sun 8 Nov)
  id('2026-11-14T23:30:00Z'), // weekly 2026-W46 (Sun 15 Nov)
  id('2026-11-18T23:30:00Z'), // daily 19 Nov
  id('2026-11-19T23:30:00Z'), // daily 20 Nov
  id('2026-11-20T23:30:00Z'), // daily 21 Nov
  id('2026-11-21T23:30:00Z'), // daily 22 Nov, weekly 2026-W47
  id('2026-11-22T23:30:00Z'), // daily 23 Nov
  id('2026-11-23T23:30:00Z'), // daily 24 Nov, last
];

beforeAll(async () => {
  await mkdir(tmpRoot, { recursive: true });
  produceModule = await writeProducerPlugin(tmpRoot, { file: join(tmpRoot, `produce-${process.pid}.mjs`), name: 'test-produce', artifact: 'mastodon_production.dump', content: 'dump of ${setId}', kind: 'database' });
  folderModule = join(tmpRoot, `folder-destination-${process.pid}.mjs`);
  await writeFile(
    folderModule,
    `import { definePlugin, LocalFolderDestination, z } from '@backup-pipeline/core';
export default definePlugin({
  name: 'test-folder',
  description: 'a local folder destination',
  destination: { options: z.object({ path: z.string() }).strict(), create: (o) => new LocalFolderDestination(o.path) },
});
`,
  );
});
afterAll(async () => {
  await rm(produceModule, { force: true });
  await rm(folderModule, { force: true });
});
beforeEach(async () => {
  dir = await mkdtemp(join(tmpRoot, 'retention-'));
  return () => rm(dir, { recursive: true, force: true });
});

async function runPipeline(retention: Record<string, unknown>, extra: { destinations?: Record<string, unknown>; shipTo?: string[] } = {}) {
  const file = join(dir, 'pipeline.config.json');
  const config = await resolveConfig(file, {
    workDir: join(dir, 'work'),
    timezone: 'Europe/Berlin',
    destinations: extra.destinations ?? {},
    pipelines: {
      nightly: {
        source: SOURCE,
        destinations: extra.shipTo ?? [],
        stages: [{ use: produceModule }, { use: pluginEntry, ...retention }],
      },
    },
  });
  const lines: string[] = [];
  const log = await createLogger({ secrets: config.secrets, level: 'info', format: 'json', write: (l) => void lines.push(l) });
  const result = await new Runner(config, log).run('nightly', { now: () => NOW });
  return { result, lines: lines.map((l) => JSON.parse(l) as { msg: string; reason?: string; setId?: string }) };
}

describe('retention stage through the runner', () => {
  it('keeps exactly the policy survivors of 60 daily sets in the work dir, and logs every deletion with its reason', async () => {
    const work = join(dir, 'work');
    const tree = await buildTree(work);
    const { result, lines } = await runPipeline({ ...POLICY });
    const runSet = result.summary.setId;
    expect(runSet).toBe('20261125T014500Z-mastodon');

    const left = (await readdir(work)).filter((n) => !n.startsWith('.')).sort();
    const expected = [...EXPECTED_DAILY_SURVIVORS, tree.youngIncomplete, runSet, ...tree.other].sort();
    expect(left).toEqual(expected);

    const deletions = lines.filter((l) => l.msg.startsWith('deleted '));
    expect(deletions).toHaveLength(60 - EXPECTED_DAILY_SURVIVORS.length + 1);
    expect(deletions.find((l) => l.setId === tree.oldIncomplete)?.reason).toMatch(/^incomplete \(interrupted run\), \d+ h old$/);
    expect(deletions.find((l) => l.setId === tree.daily[0])?.reason).toBe('not kept by any rule of the policy');

    // The survivors' reasons, as `pipeline prune --dry-run` would list them.
    const plan = await planRetention({ name: 'work', plugin: 'core', destination: tree.dest }, POLICY, { now: NOW, timezone: 'Europe/Berlin', source: SOURCE });
    expect(plan.delete).toEqual([]);
    const reasons = Object.fromEntries(plan.keep.map((s) => [s.id, s.reasons]));
    expect(reasons[runSet]).toEqual(['newest complete set', 'last 1/3', 'daily 2026-11-25', 'weekly 2026-W48', 'monthly 2026-11']);
    expect(reasons[id('2026-11-21T23:30:00Z')]).toEqual(['daily 2026-11-22', 'weekly 2026-W47']);
    expect(reasons[id('2026-09-29T23:30:00Z')]).toEqual(['monthly 2026-09']);
    expect(reasons[tree.youngIncomplete]).toEqual(['incomplete, 5 h old: within the 24 h grace period']);
  });

  it('prunes only the destinations named in `destinations`, after shipping to them', async () => {
    const offsite = join(dir, 'offsite');
    const tree = await buildTree(offsite);
    await buildTree(join(dir, 'work'));
    const { result } = await runPipeline(
      { ...POLICY, destinations: ['offsite'] },
      { destinations: { offsite: { use: folderModule, path: offsite } }, shipTo: ['offsite'] },
    );
    const sets = async (d: string) => (await readdir(join(dir, d))).filter((n) => !n.startsWith('.')).sort();
    expect(await sets('offsite')).toEqual([...EXPECTED_DAILY_SURVIVORS, tree.youngIncomplete, result.summary.setId, ...tree.other].sort());
    expect(await sets('work')).toHaveLength(60 + 2 + 2 + 1);
  });

  it('runs within one second (ids moved to the next free second) are not "dated in the future" for the last of them', async () => {
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push((await runPipeline({ keepLast: 2 })).result.summary.setId);
    expect(ids).toEqual(['20261125T014500Z-mastodon', '20261125T014501Z-mastodon', '20261125T014502Z-mastodon']);
    expect((await readdir(join(dir, 'work'))).filter((n) => !n.startsWith('.')).sort()).toEqual(ids.slice(1));
  });

  it('dryRun deletes nothing', async () => {
    const work = join(dir, 'work');
    await buildTree(work);
    const sets = async () => (await readdir(work)).filter((n) => !n.startsWith('.'));
    const before = (await sets()).length;
    const { lines } = await runPipeline({ ...POLICY, dryRun: true });
    expect((await sets()).length).toBe(before + 1);
    expect(lines.filter((l) => l.msg.startsWith('would delete ')).length).toBe(51);
  });

  it('fails preflight for a destination name the pipeline does not ship to (RETENTION_UNKNOWN_DESTINATION)', async () => {
    const error = await runPipeline({ keepLast: 1, destinations: ['offsite'] }).catch((e: unknown) => e);
    expect(isPipelineError(error) && error.code).toBe('RETENTION_UNKNOWN_DESTINATION');
    expect(isPipelineError(error) && error.describe()).toMatch(/^\[retention → preflight\] RETENTION_UNKNOWN_DESTINATION: /);
  });

  it('rejects a policy that keeps nothing, and unknown options (CONFIG_INVALID)', async () => {
    for (const options of [{}, { keepLast: 0 }, { keepLast: 2, keepHourly: 3 }, { keepDaily: -1 }]) {
      const error = await runPipeline(options).catch((e: unknown) => e);
      expect(isPipelineError(error) && error.code, JSON.stringify(options)).toBe('CONFIG_INVALID');
    }
    const error = await runPipeline({}).catch((e: unknown) => e);
    expect((error as Error).message).toMatch(/pipelines\.nightly\.stages\[1\]: set at least one of keepLast/);
  });
});

describe('applyRetention', () => {
  it('prunes one destination by the policy, judging each source on its own and never the protected set', async () => {
    const tree = await buildTree(join(dir, 'store'));
    const protect = tree.daily[0]!;
    const result = await applyRetention(tree.dest, { keepLast: 1 }, { now: NOW, timezone: 'Europe/Berlin', protect: [protect] });
    expect(result.failed).toEqual([]);
    const left = (await readdir(join(dir, 'store'))).sort();
    // mastodon: newest, young incomplete, protected; redis: its newest.
    expect(left).toEqual([protect, tree.other[1], tree.daily[59], tree.youngIncomplete].sort());
  });

  it('the classic `find -name dump -mtime +30 -delete` recipe deletes nothing on such a tree; the policy does', async () => {
    const root = join(dir, 'store');
    const tree = await buildTree(root);
    // Age every file as the recipe expects, by the set's own date.
    for (const setId of [...tree.daily]) {
      const t = new Date(`${setId.slice(0, 4)}-${setId.slice(4, 6)}-${setId.slice(6, 8)}T12:00:00Z`);
      for (const name of await readdir(join(root, setId))) await utimes(join(root, setId, name), t, t);
    }
    const count = async () => (await readdir(root)).length;
    const before = await count();
    await promisify(execFile)('find', [root, '-name', 'dump', '-mtime', '+30', '-delete']);
    expect(await count()).toBe(before);
    const result = await applyRetention({ name: 'store', plugin: 'test', destination: tree.dest }, POLICY, { now: NOW, timezone: 'Europe/Berlin', source: SOURCE });
    // Without a run of today: 11 of the 60 daily sets survive, 49 go, and the old incomplete one.
    expect(result.deleted.length).toBe(50);
    expect(result.keep.filter((s) => s.complete)).toHaveLength(11);
    expect(await count()).toBe(before - 50);
  });
});
