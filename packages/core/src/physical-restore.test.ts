/**
 * The generic half of physical restores: recovery targets parsed from the command line, LSNs
 * compared, the set picked for a target among sets of several formats (only formats declared in
 * `dataDirFormats` with that target kind count), and the data dir checks (running server, not empty).
 */
import { spawn } from 'node:child_process';
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { hashFile } from './atomic-file.js';
import { isPipelineError, type PipelineError } from './errors.js';
import { LocalFolderDestination } from './local-folder.js';
import { serializeManifest, type Manifest, type ManifestArtifact } from './manifest.js';
import { checkDataDirTarget, compareLsn, parseRecoveryTarget, pickLatestForDataDir, pickSetForRecovery, recoveryTime, type DataDirFormats } from './physical-restore.js';
import type { DataDirFormat } from './plugin.js';
import { sampleManifest, silentLogger, tempDir } from './test-fixtures.js';

const fail = (fn: () => unknown): PipelineError => {
  try {
    fn();
  } catch (error) {
    if (isPipelineError(error)) return error;
    throw error;
  }
  throw new Error('did not throw');
};

describe('recovery targets from the command line', () => {
  it.each([
    ['2026-12-01 14:03:00+00', '2026-12-01T14:03:00.000Z'],
    ['2026-12-01T14:03:00Z', '2026-12-01T14:03:00.000Z'],
    ['2026-12-01 15:03:00.123456+01', '2026-12-01T14:03:00.123Z'],
    ['2026-12-01 19:33+05:30', '2026-12-01T14:03:00.000Z'],
    ['2026-12-01 09:03:00-0500', '2026-12-01T14:03:00.000Z'],
  ])('%s is the instant %s, and is passed on as written', (text, iso) => {
    expect(recoveryTime(text)?.toISOString()).toBe(iso);
    expect(parseRecoveryTarget({ time: text })).toEqual({ time: text });
  });

  it.each(['2026-12-01 14:03:00', 'yesterday', '2026-13-01 14:03:00+00', '2026-12-01 25:03:00+00', '14:03:00+00'])('refuses %s (no offset, or not a time) with USAGE', (text) => {
    const error = fail(() => parseRecoveryTarget({ time: text }));
    expect(error.code).toBe('USAGE');
    expect(error.hint).toContain('2026-12-01 14:03:00+00');
  });

  it('takes an LSN (upper-cased), refuses a malformed one and two targets at once', () => {
    expect(parseRecoveryTarget({ lsn: '0/3000a60' })).toEqual({ lsn: '0/3000A60' });
    expect(fail(() => parseRecoveryTarget({ lsn: '3000060' })).code).toBe('USAGE');
    expect(fail(() => parseRecoveryTarget({ time: '2026-12-01 14:03:00+00', lsn: '0/1' })).message).toContain('not both');
    expect(parseRecoveryTarget({})).toBeUndefined();
  });

  it.each([
    ['0/3000060', '0/3000060', 0],
    ['0/FFFFFFFF', '1/0', -1],
    ['A/0', '9/FFFFFFFF', 1],
    ['0/10', '0/9', 1],
  ])('compareLsn(%s, %s) is %i (numeric, not text)', (a, b, sign) => {
    expect(Math.sign(compareLsn(a, b))).toBe(sign);
  });
});

describe('picking the set for a recovery target', () => {
  const physical: DataDirFormat = {
    recoveryTargets: ['time', 'lsn'],
    consistentAt: (a: ManifestArtifact) => ({ time: a.meta.stop as string, lsn: a.meta.lsn as string }),
  };
  const timeOnly: DataDirFormat = { recoveryTargets: ['time'] };
  const formats: DataDirFormats = new Map([
    ['test-physical', physical],
    ['test-time-only', timeOnly],
  ]);

  async function store(root: string, id: string, format: string, meta: Record<string, unknown>, completedAt: string) {
    await mkdir(join(root, id), { recursive: true });
    const path = join(root, id, 'backup.json');
    await writeFile(path, JSON.stringify(meta));
    const digest = await hashFile(path);
    const manifest: Manifest = {
      ...sampleManifest,
      id,
      completedAt,
      artifacts: [{ name: 'backup.json', kind: 'physical', format, compression: 'none', bytes: digest.bytes, sha256: digest.sha256, meta }],
    };
    await writeFile(join(root, id, 'manifest.json'), serializeManifest(manifest));
  }

  async function sets() {
    const root = await tempDir('bp-pick-');
    await store(root, '20261201T100000Z-mastodon', 'test-physical', { stop: '2026-12-01T10:05:00Z', lsn: '0/5000000' }, '2026-12-01T10:06:00Z');
    await store(root, '20261201T120000Z-mastodon', 'test-physical', { stop: '2026-12-01T12:05:00Z', lsn: '0/9000000' }, '2026-12-01T12:06:00Z');
    // A dump between them, and the newest set a dump: never chosen for a recovery target.
    await store(root, '20261201T110000Z-mastodon', 'pg-custom', {}, '2026-12-01T11:01:00Z');
    await store(root, '20261201T130000Z-mastodon', 'pg-custom', {}, '2026-12-01T13:01:00Z');
    // A format that takes times only and declares no consistent point (the manifest's completedAt counts).
    await store(root, '20261201T113000Z-mastodon', 'test-time-only', {}, '2026-12-01T11:40:00Z');
    return [{ name: 'work', plugin: 'core', destination: new LocalFolderDestination(root) }];
  }
  const ctx = async () => ({ log: await silentLogger(), tmpDir: await tempDir('bp-pick-tmp-') });

  it.each([
    ['2026-12-01 12:30:00+00', '20261201T120000Z-mastodon'],
    ['2026-12-01 12:05:00+00', '20261201T120000Z-mastodon'],
    ['2026-12-01 12:04:59+00', '20261201T113000Z-mastodon'],
    ['2026-12-01 11:39:00+00', '20261201T100000Z-mastodon'],
    ['2026-12-01T18:00:00+05:00', '20261201T120000Z-mastodon'],
  ])('time %s: the newest set whose backup ended at or before it is %s', async (time, expected) => {
    expect(await pickSetForRecovery(await sets(), { time }, formats, await ctx())).toBe(expected);
  });

  it.each([
    ['0/9000000', '20261201T120000Z-mastodon'],
    ['0/8FFFFFF', '20261201T100000Z-mastodon'],
    ['1/0', '20261201T120000Z-mastodon'],
  ])('LSN %s: only formats that take LSN targets and say their stop LSN, so %s', async (lsn, expected) => {
    expect(await pickSetForRecovery(await sets(), { lsn }, formats, await ctx())).toBe(expected);
  });

  it('latest for a data dir is the newest set of a data-dir format, not a newer dump', async () => {
    expect(await pickLatestForDataDir(await sets(), formats, await ctx())).toBe('20261201T120000Z-mastodon');
    const none = await pickLatestForDataDir(await sets(), new Map(), await ctx()).catch((e: PipelineError) => e);
    expect(isPipelineError(none) && none.code).toBe('SET_NOT_FOUND');
  });

  it('a target before every backup ended, and formats that declare nothing, are SET_NOT_FOUND with the reason', async () => {
    const early = await pickSetForRecovery(await sets(), { time: '2026-12-01 10:00:00+00' }, formats, await ctx()).catch((e: PipelineError) => e);
    expect(isPipelineError(early) && early.code).toBe('SET_NOT_FOUND');
    expect((early as PipelineError).message).toContain('the earliest, 20261201T100000Z-mastodon, ended at 2026-12-01T10:05:00.000Z');
    const none = await pickSetForRecovery(await sets(), { time: '2026-12-01 23:00:00+00' }, new Map(), await ctx()).catch((e: PipelineError) => e);
    expect(isPipelineError(none) && none.code).toBe('SET_NOT_FOUND');
    expect((none as PipelineError).message).toContain('holds a backup that can be recovered to a point in time');
  });
});

describe('the data dir a physical restore writes', () => {
  it('a missing folder is fine, an empty one too; a non-empty one needs delta', async () => {
    const root = await tempDir('bp-datadir-');
    expect(await checkDataDirTarget(join(root, 'new'))).toEqual({ exists: false, empty: true });
    await mkdir(join(root, 'empty'));
    expect(await checkDataDirTarget(join(root, 'empty'))).toEqual({ exists: true, empty: true });
    await mkdir(join(root, 'full'));
    await writeFile(join(root, 'full', 'PG_VERSION'), '15\n');
    const error = await checkDataDirTarget(join(root, 'full')).catch((e: PipelineError) => e);
    expect(isPipelineError(error) && error.code).toBe('RESTORE_TARGET_NOT_EMPTY');
    expect(await checkDataDirTarget(join(root, 'full'), { delta: true })).toEqual({ exists: true, empty: false });
    const file = await checkDataDirTarget(join(root, 'full', 'PG_VERSION')).catch((e: PipelineError) => e);
    expect(isPipelineError(file) && file.code).toBe('RESTORE_TARGET_REFUSED');
  });

  it('refuses a folder whose postmaster.pid names a live process, even with delta; a stale one is only "not empty"', async () => {
    const root = await tempDir('bp-datadir-');
    // A live process whose command line says postgres from its exec on (a shell's `exec -a`
    // left a moment where it read empty).
    const child = spawn('sleep', ['60'], { argv0: 'postgres', stdio: 'ignore' });
    try {
      await new Promise((r) => child.once('spawn', r));
      await mkdir(join(root, 'live'));
      await writeFile(join(root, 'live', 'postmaster.pid'), `${child.pid}\n${join(root, 'live')}\n1796174382\n1\n\n\n`);
      const error = await checkDataDirTarget(join(root, 'live'), { delta: true }).catch((e: PipelineError) => e);
      expect(isPipelineError(error) && error.code).toBe('RESTORE_TARGET_REFUSED');
      expect((error as PipelineError).message).toContain(`process ${child.pid} (postmaster.pid) is running`);
    } finally {
      child.kill('SIGKILL');
    }
    await new Promise((r) => child.once('exit', r));
    await expect(checkDataDirTarget(join(root, 'live'), { delta: true })).resolves.toEqual({ exists: true, empty: false });
  });
});
