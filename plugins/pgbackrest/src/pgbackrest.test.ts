/**
 * The pgbackrest stage against a real cluster archiving into a real pgBackRest repository, run
 * through the CLI (`pipeline run`, `list`, `list --json`): full, then changes, then diff and incr,
 * the drill in every run, a logical set beside the physical ones, the system id exact (> 2^53), and
 * retention mapped onto pgBackRest's expire.
 */
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateMastodonData, loadMastodonSchema, mastodonEnvText } from '@backup-pipeline/testing';
import { parseInfo } from './info.js';
import { RECORD_NAME, type PhysicalBackupRecord } from './record.js';
import { startArchivingCluster, type ArchivingCluster } from './test-support.js';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../../..');
const BIN = join(ROOT, 'packages', 'cli', 'bin', 'pipeline.js');
const DB = 'mastodon_production';

describe('pgbackrest stage: full, diff, incr, drill, list, retention', () => {
  let c: ArchivingCluster;
  let dir: string;
  const pipeline = (args: string[]) => execa(process.execPath, [BIN, ...args], { cwd: dir, reject: false, env: { NO_COLOR: '1', CI: 'true' }, timeout: 300_000 });
  const manifestOf = async (setId: string) => JSON.parse(await readFile(join(dir, 'backups', setId, 'manifest.json'), 'utf8')) as { artifacts: Array<{ name: string; kind: string; format: string; meta: PhysicalBackupRecord }> };
  const recordOf = async (setId: string) => JSON.parse(await readFile(join(dir, 'backups', setId, RECORD_NAME), 'utf8')) as PhysicalBackupRecord;
  const info = async () => parseInfo((await c.pgbackrest(['--output=json', 'info'])).stdout, c.stanza);
  const sets: Record<string, string> = {};
  const runOk = async (name: string) => {
    const out = await pipeline(['run', name, '--json']);
    expect(out.stderr + out.stdout, `${name} failed`).not.toMatch(/"ok":\s*false/);
    expect(out.exitCode, out.stderr).toBe(0);
    const summary = JSON.parse(out.stdout) as { setId: string; ok: boolean };
    expect(summary.ok).toBe(true);
    sets[name] = summary.setId;
    return { summary, stderr: out.stderr };
  };

  beforeAll(async () => {
    c = await startArchivingCluster();
    await c.pg.createDatabase(DB);
    await loadMastodonSchema(c.pg, DB);
    await generateMastodonData(c.pg, DB, { scale: 'tiny' });
    dir = await mkdtemp(join(tmpdir(), 'bp-pgbr-run-'));
    const envFile = join(dir, '.env.production');
    await writeFile(envFile, mastodonEnvText({ host: '127.0.0.1', port: c.pg.port, database: DB, user: c.pg.superuser, password: c.pg.superPassword }), { mode: 0o600 });
    const sql = { socketDir: c.pg.socketDir, port: c.pg.port, pgUser: c.pg.superuser, drill: { database: DB } };
    const physical = (extra: Record<string, unknown>) => ({ source: 'physical', stages: [{ use: 'pgbackrest', ...c.stageOptions({ ...sql, processMax: 2, ...extra }) }] });
    const config = {
      workDir: join(dir, 'backups'),
      pipelines: {
        full: physical({ type: 'full' }),
        // The same stanza through a config generated for the run from the options.
        diff: {
          source: 'physical',
          stages: [{ use: 'pgbackrest', stanza: c.stanza, repository: { type: 'posix', path: c.repoPath }, dataDir: c.dataDir, lockPath: c.lockPath, ...sql, type: 'diff' }],
        },
        incr: physical({ type: 'incr' }),
        logical: { source: 'logical', stages: [{ use: 'credentials', envFile }, { use: 'pg-dump' }] },
        'full-retained': {
          source: 'physical',
          stages: [{ use: 'retention', keepLast: 1 }, { use: 'pgbackrest', ...c.stageOptions({ ...sql, type: 'full' }) }],
        },
      },
    };
    await writeFile(join(dir, 'pipeline.config.json'), JSON.stringify(config, null, 2));
  }, 300_000);
  afterAll(async () => {
    await c?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('makes a full backup, records it with an exact system id (> 2^53), and its drill passes', async () => {
    const { stderr } = await runOk('full');
    const manifest = await manifestOf(sets.full!);
    const artifact = manifest.artifacts.find((a) => a.name === RECORD_NAME)!;
    expect(artifact).toMatchObject({ kind: 'physical', format: 'pgbackrest' });
    const record = await recordOf(sets.full!);
    expect(artifact.meta).toEqual(record);
    expect(record.type).toBe('full');
    expect(record.label).toMatch(/^\d{8}-\d{6}F$/);
    expect(record.prior).toBeNull();
    const [[systemId]] = (await c.pg.psql('SELECT system_identifier::text FROM pg_control_system();')) as [[string]];
    expect(record.systemId).toBe(systemId);
    expect(BigInt(record.systemId) > BigInt(Number.MAX_SAFE_INTEGER)).toBe(true);
    // What JSON.parse alone would have recorded is a different number.
    expect(String(Number(systemId))).not.toBe(systemId);
    expect(record.lsn.start).toMatch(/^[0-9A-F]+\/[0-9A-F]+$/);
    expect(record.wal.start).toMatch(/^[0-9A-F]{24}$/);
    expect(record.repository).toEqual({ type: 'config-file', configFile: c.configFile });
    expect(record.pgVersion).toBe(String(c.pg.major));
    expect(record.bytes.database).toBeGreaterThan(0);
    expect(Object.keys(record.rowCounts!.tables).sort()).toEqual(expect.arrayContaining(['accounts', 'statuses', 'follows']));
    expect(stderr).toMatch(/drill: \S+ restored, reached consistency, promoted and answered/);
    // The drill's copy never archived into the repository: no second timeline, no other history.
    const i = await info();
    expect(i.archive.map((a) => a.id)).toEqual([`${c.pg.major}-1`]);
    // pgbackrest ran as the repository's owner: archive-push can still read and write everything.
    if (c.serverUser) expect((await execa('find', [c.repoPath, '!', '-user', c.serverUser])).stdout.trim()).toBe('');
    await c.switchWal();
  }, 300_000);

  it('after changes, a diff (from a generated config) and an incr build on it, each drilled', async () => {
    await c.pg.psql(`INSERT INTO accounts (id, username, created_at, updated_at) SELECT 900000000 + g, 'pgbr' || g, now(), now() FROM generate_series(1, 50) g;`, DB);
    const full = await recordOf(sets.full!);
    await runOk('diff');
    const diff = await recordOf(sets.diff!);
    expect(diff.type).toBe('diff');
    expect(diff.prior).toBe(full.label);
    expect(diff.reference).toEqual([full.label]);
    expect(diff.repository).toEqual({ type: 'posix', path: c.repoPath });
    await c.pg.psql('CREATE TABLE IF NOT EXISTS pgbr_more (id int); INSERT INTO pgbr_more SELECT generate_series(1, 1000);', DB);
    await runOk('incr');
    const incr = await recordOf(sets.incr!);
    expect(incr.type).toBe('incr');
    expect(incr.prior).toBe(diff.label);
    expect(incr.reference).toEqual(expect.arrayContaining([full.label, diff.label]));
    expect(incr.systemId).toBe(full.systemId);
    expect((await info()).backup.map((b) => b.label)).toEqual([full.label, diff.label, incr.label]);
  }, 600_000);

  it('list shows the physical sets beside a logical one (text and --json)', async () => {
    await runOk('logical');
    const json = await pipeline(['list', '--json']);
    expect(json.exitCode, json.stderr).toBe(0);
    const listed = JSON.parse(json.stdout) as Array<{ destination: string; sets: Array<{ id: string; state: string; complete: boolean }> }>;
    const work = listed.find((d) => d.destination === 'work')!;
    for (const name of ['full', 'diff', 'incr', 'logical']) {
      expect(work.sets.find((s) => s.id === sets[name]), name).toMatchObject({ state: 'complete', complete: true });
    }
    const text = await pipeline(['list']);
    expect(text.exitCode, text.stderr).toBe(0);
    for (const name of ['full', 'diff', 'incr', 'logical']) expect(text.stdout).toContain(sets[name]!);
    const logical = await manifestOf(sets.logical!);
    expect(logical.artifacts.map((a) => a.format)).toContain('pg-custom');
  }, 300_000);

  it('retention deletes the old physical sets and pgbackrest expire removes their backups and WAL (the logical set stays)', async () => {
    const before = await info();
    const oldestWal = before.archive[0]!.min!;
    await runOk('full-retained');
    const after = await info();
    const record = await recordOf(sets['full-retained']!);
    expect(after.backup.map((b) => b.label)).toEqual([record.label]);
    expect(after.archive[0]!.min! > oldestWal).toBe(true);
    expect(after.archive[0]!.min! <= record.wal.start).toBe(true);
    const listed = JSON.parse((await pipeline(['list', '--json'])).stdout) as Array<{ destination: string; sets: Array<{ id: string }> }>;
    const ids = listed.find((d) => d.destination === 'work')!.sets.map((s) => s.id);
    expect(ids).toEqual(expect.arrayContaining([sets.logical, sets['full-retained']]));
    for (const name of ['full', 'diff', 'incr']) expect(ids).not.toContain(sets[name]);
  }, 300_000);

  it('expires no backup while a set whose manifest cannot be read is kept (which backup it records is unknown)', async () => {
    const damaged = sets['full-retained']!;
    const { label } = await recordOf(damaged);
    const manifestPath = join(dir, 'backups', damaged, 'manifest.json');
    const good = await readFile(manifestPath, 'utf8');
    await writeFile(manifestPath, good.slice(0, 40));
    try {
      const { stderr } = await runOk('full');
      const newer = (await recordOf(sets.full!)).label;
      expect((await info()).backup.map((b) => b.label)).toEqual([label, newer]);
      const warned = stderr.split('\n').filter(Boolean).map((l) => (JSON.parse(l) as { msg: string }).msg);
      expect(warned.find((m) => m.startsWith(`set ${damaged} in "work" is damaged`))).toContain('no pgBackRest backup is expired until a person looks at it');
    } finally {
      await writeFile(manifestPath, good);
    }
  }, 300_000);
});
