/**
 * The restore side against a real cluster archiving WAL into a real pgBackRest repository:
 * point-in-time recovery to a time and to an LSN between two known writes (the rows written before
 * are there, the rows written after are not), the set picked by the target among several, and the
 * refusals: a running server's data dir, a non-empty folder, a recovery target on a pg-dump set.
 */
import { spawnSync } from 'node:child_process';
import { chmod, chown, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { basename, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger, exec, isPipelineError, resolveConfig, Runner, type PipelineError, type RestoreResult } from '@backup-pipeline/core';
import { startArchivingCluster, type ArchivingCluster } from './test-support.js';

const PLUGIN = join(import.meta.dirname, 'index.ts');
/** The CLI, as an admin runs it (its built-in stages are the built packages). */
const BIN = join(import.meta.dirname, '../../../packages/cli/bin/pipeline.js');
const asRoot = process.getuid?.() === 0;

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => resolve(typeof address === 'object' && address ? address.port : 0));
    });
  });
}

/** A restored data dir started on a private socket with archiving off, until it has promoted. */
async function startRestored(dataDir: string, bindir: string, root: string) {
  const sock = await mkdtemp(join(root, 'sock-'));
  await chmod(sock, 0o700);
  if (asRoot) {
    const uid = Number(spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).stdout.trim());
    const gid = Number(spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' }).stdout.trim());
    await chown(sock, uid, gid);
  }
  const port = await freePort();
  const run = (file: string, args: string[], stdin?: string) =>
    asRoot ? exec('runuser', ['-u', 'postgres', '--', join(bindir, file), ...args], { cwd: root, stdin }) : exec(join(bindir, file), args, { cwd: root, stdin });
  const opts = `-p ${port} -c archive_mode=off -c listen_addresses='' -c unix_socket_directories=${sock}`;
  await run('pg_ctl', ['start', '-D', dataDir, '-w', '-t', '300', '-l', join(sock, 'server.log'), '-o', opts]);
  const psql = async (sql: string, db = 'postgres') => (await run('psql', ['-X', '-q', '-A', '-t', '-h', sock, '-p', String(port), '-U', 'bp_admin', '-d', db, '-f', '-'], sql)).stdout.trim();
  // Recovery replays WAL up to the target, then promotes; queries before that would see a partial state.
  for (let i = 0; i < 3000 && (await psql('SELECT pg_is_in_recovery();')) !== 'f'; i++) await new Promise((r) => setTimeout(r, 100));
  return { psql, stop: () => run('pg_ctl', ['stop', '-D', dataDir, '-m', 'fast', '-w']).catch(() => undefined) };
}

describe('pgbackrest restore and point-in-time recovery', () => {
  let c: ArchivingCluster;
  let dir: string;
  let runner: Runner;
  const marks: { time?: string; lsn?: string; firstSet?: string; secondSet?: string; secondLabel?: string } = {};

  const restore = async (request: Parameters<Runner['restore']>[1]): Promise<RestoreResult | PipelineError> =>
    runner.restore('physical', request).catch((error: unknown) => {
      if (isPipelineError(error)) return error;
      throw error;
    });

  beforeAll(async () => {
    c = await startArchivingCluster();
    dir = await mkdtemp('/tmp/bp-pgbr-restore-');
    await chmod(dir, 0o755);
    await c.pg.createDatabase('mastodon_production');
    await c.pg.psql('CREATE TABLE statuses (id int PRIMARY KEY, phase text NOT NULL); INSERT INTO statuses SELECT g, \'base\' FROM generate_series(1, 1000) g;', 'mastodon_production');
    await c.pg.createRole('bp_dump', 'dump-secret', { inRoles: ['pg_read_all_data'] });
    const passwordFile = join(dir, 'dump-password');
    await writeFile(passwordFile, 'dump-secret\n', { mode: 0o600 });
    const physicalStage = c.stageOptions({ socketDir: c.pg.socketDir, port: c.pg.port, pgUser: c.pg.superuser, drill: { enabled: false } });
    // The same config on disk for the CLI, with the built stage (as a user's config names it).
    await writeFile(
      join(dir, 'cli.config.json'),
      JSON.stringify({ workDir: join(dir, 'backups'), pipelines: { physical: { source: 'mastodon', stages: [{ use: 'pgbackrest', ...physicalStage }] } } }),
    );
    const config = await resolveConfig(
      join(dir, 'pipeline.config.json'),
      {
        workDir: join(dir, 'backups'),
        pipelines: {
          physical: { source: 'mastodon', stages: [{ use: PLUGIN, ...physicalStage }] },
          dump: {
            source: 'mastodon',
            stages: [
              { use: '@backup-pipeline/plugin-credentials', from: 'options', host: '127.0.0.1', port: c.pg.port, database: 'mastodon_production', user: 'bp_dump', passwordFile },
              { use: '@backup-pipeline/plugin-pg-dump' },
            ],
          },
        },
      },
      { env: process.env, cwd: dir, pluginSearchDirs: [process.cwd()] },
    );
    runner = new Runner(config, await createLogger({ secrets: config.secrets, format: 'json', level: 'warn', write: () => {} }));

    // Set 1: a full backup. Rows A, the time T and the LSN L, rows B, archived; set 2: an incr after B.
    const first = await runner.run('physical');
    expect(first.summary.ok, JSON.stringify(first.summary.error)).toBe(true);
    marks.firstSet = first.summary.setId;
    const stopped = first.manifest!.artifacts[0]!.meta.stoppedAt as string;
    // T must come after the backup's end (kept in whole seconds): wait on the server's clock. L is the
    // insert position (the harness commits asynchronously: A's commit may not be written out yet).
    await c.pg.psql(`SELECT pg_sleep(GREATEST(0, extract(epoch FROM (${`'${stopped}'`}::timestamptz + interval '1.2 s' - clock_timestamp()))));`);
    await c.pg.psql("INSERT INTO statuses SELECT g, 'A' FROM generate_series(1001, 1100) g;", 'mastodon_production');
    const [[time, lsn]] = (await c.pg.psql('SELECT now()::text, pg_current_wal_insert_lsn()::text;')) as [[string, string]];
    marks.time = time;
    marks.lsn = lsn;
    await c.switchWal();
    await c.pg.psql('SELECT pg_sleep(0.05);');
    await c.pg.psql("INSERT INTO statuses SELECT g, 'B' FROM generate_series(1101, 1200) g;", 'mastodon_production');
    await c.switchWal();
    const second = await runner.run('physical');
    expect(second.summary.ok, JSON.stringify(second.summary.error)).toBe(true);
    marks.secondSet = second.summary.setId;
    marks.secondLabel = second.manifest!.artifacts[0]!.meta.label as string;
    expect(marks.secondSet > marks.firstSet!).toBe(true);
  }, 300_000);

  afterAll(async () => {
    await c?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const phases = async (psql: (sql: string, db?: string) => Promise<string>) =>
    (await psql("SELECT string_agg(phase || '=' || n, ',' ORDER BY phase) FROM (SELECT phase, count(*) n FROM statuses GROUP BY phase) s;", 'mastodon_production'));

  it('pipeline restore --to-time T picks the set that ended before T and restores exactly the rows committed by T', async () => {
    const dataDir = join(dir, 'pitr-time');
    // Exit code checked by exec: a failed restore throws with its stderr.
    const cli = await exec(process.execPath, [BIN, '--config', join(dir, 'cli.config.json'), '--json', 'restore', '--to-time', marks.time!, '--data-dir', dataDir, '-p', 'physical'], {
      env: { NO_COLOR: '1', CI: 'true' },
      label: 'pipeline restore',
    });
    const result = JSON.parse(cli.stdout) as RestoreResult & { ok: boolean };
    expect(result.ok).toBe(true);
    // The newest set (the incr after B) ended after T: the full before it is the one to start from.
    expect(result.setId).toBe(marks.firstSet);
    const report = result.reports[0]!;
    expect(report.physical).toMatchObject({ dataDir, recoveryTarget: { time: marks.time } });
    expect(report.physical!.backup).toMatch(/^\d{8}-\d{6}F$/);
    expect(report.physical!.wal?.start).toMatch(/^[0-9A-F]{24}$/);
    const info = await stat(dataDir);
    expect(info.mode & 0o777).toBe(0o700);
    if (asRoot) expect(info.uid).toBe(Number(spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' }).stdout.trim()));
    const server = await startRestored(dataDir, c.pg.bindir, dir);
    try {
      expect(await phases(server.psql)).toBe('A=100,base=1000');
    } finally {
      await server.stop();
    }
  });

  it('--to-lsn L restores the rows written before L and none after', async () => {
    const dataDir = join(dir, 'pitr-lsn');
    const result = await restore({ set: 'latest', dataDir, recoveryTarget: { lsn: marks.lsn! } });
    if (isPipelineError(result)) throw result;
    expect(result.setId).toBe(marks.firstSet);
    expect(result.reports[0]!.physical?.recoveryTarget).toEqual({ lsn: marks.lsn });
    const server = await startRestored(dataDir, c.pg.bindir, dir);
    try {
      expect(await phases(server.psql)).toBe('A=100,base=1000');
    } finally {
      await server.stop();
    }
  });

  it('--delta restores the latest set over a stopped copy; without a target every archived WAL segment is replayed', async () => {
    const dataDir = join(dir, 'delta');
    const first = await restore({ set: 'latest', dataDir, recoveryTarget: { lsn: marks.lsn! } });
    if (isPipelineError(first)) throw first;
    const refused = await restore({ set: 'latest', dataDir });
    expect(isPipelineError(refused) && refused.code).toBe('RESTORE_TARGET_NOT_EMPTY');
    const result = await restore({ set: 'latest', dataDir, delta: true });
    if (isPipelineError(result)) throw result;
    expect(result.setId).toBe(marks.secondSet);
    expect(result.reports[0]!.physical?.recoveryTarget).toBeUndefined();
    const server = await startRestored(dataDir, c.pg.bindir, dir);
    try {
      expect(await phases(server.psql)).toBe('A=100,B=100,base=1000');
    } finally {
      await server.stop();
    }
  });

  it('a set named with a target before its backup ended is refused before anything is written', async () => {
    const dataDir = join(dir, 'too-early');
    const result = await restore({ set: marks.secondSet!, dataDir, recoveryTarget: { time: marks.time! } });
    expect(isPipelineError(result) && result.code).toBe('RESTORE_TARGET_REFUSED');
    expect((result as PipelineError).message).toContain('before the end of set');
    await expect(stat(dataDir)).rejects.toThrow();
  });

  it("refuses a running server's data dir, and a non-empty folder without delta", async () => {
    const live = await restore({ set: 'latest', dataDir: c.dataDir });
    expect(isPipelineError(live) && live.code).toBe('RESTORE_TARGET_REFUSED');
    expect((live as PipelineError).message).toMatch(/running PostgreSQL server/);
    // The live cluster still runs, untouched.
    expect(await c.pg.psql('SELECT count(*) FROM statuses;', 'mastodon_production')).toEqual([['1200']]);

    const busy = join(dir, 'busy');
    await mkdir(busy);
    await writeFile(join(busy, 'keep.txt'), 'mine\n');
    const full = await restore({ set: 'latest', dataDir: busy });
    expect(isPipelineError(full) && full.code).toBe('RESTORE_TARGET_NOT_EMPTY');
    expect(await readdir(busy)).toEqual(['keep.txt']);
  });

  it('refuses a recovery target on a pg-dump set, naming it a logical dump', async () => {
    const dumped = await runner.run('dump');
    expect(dumped.summary.ok, JSON.stringify(dumped.summary.error)).toBe(true);
    const dataDir = join(dir, 'from-dump');
    // A pipeline that can recover physical sets to a point in time, asked to do so with a dump set.
    const result = await runner.restore('physical', { set: dumped.summary.setId, dataDir, recoveryTarget: { time: marks.time! } }).catch((error: PipelineError) => error);
    expect(isPipelineError(result) && result.code).toBe('RESTORE_TARGET_REFUSED');
    expect((result as PipelineError).message).toMatch(/cannot be recovered to a point in time: it holds no physical backup/);
    // Without a set, a pipeline of dumps has nothing to recover to a point in time from.
    const picked = await runner.restore('dump', { set: 'latest', dataDir, recoveryTarget: { time: marks.time! } }).catch((error: PipelineError) => error);
    expect(isPipelineError(picked) && picked.code).toBe('SET_NOT_FOUND');
    await expect(stat(dataDir)).rejects.toThrow();
  });

  it("the restore's jobs are pgBackRest's process-max: that many restore processes copy the files", async () => {
    // The stage's config says process-max = the number of cores (or its processMax); --jobs 3 must win.
    const dataDir = join(dir, 'jobs');
    const seen = new Map<number, string[]>();
    let settled = false;
    const restoring = restore({ set: 'latest', dataDir, recoveryTarget: { lsn: marks.lsn! }, jobs: 3 }).finally(() => {
      settled = true;
    });
    // The main `restore` process and its `restore:local` processes (one per process-max) live
    // while the files are copied: note every one of this repository's config (not runuser's).
    while (!settled) {
      for (const entry of await readdir('/proc')) {
        if (!/^\d+$/.test(entry) || seen.has(Number(entry))) continue;
        const argv = (await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '')).split('\0').filter(Boolean);
        if (basename(argv[0] ?? '') === 'pgbackrest' && argv.includes(`--config=${c.configFile}`) && (argv.includes('restore') || argv.includes('restore:local'))) seen.set(Number(entry), argv);
      }
      await new Promise((r) => setTimeout(r, 5));
    }
    const result = await restoring;
    if (isPipelineError(result)) throw result;
    const argvs = [...seen.values()];
    const seenText = JSON.stringify(argvs);
    expect(argvs.filter((a) => a.includes('restore')).map((a) => a.filter((x) => x.startsWith('--process-max='))), seenText).toEqual([['--process-max=3']]);
    const locals = argvs.filter((a) => a.includes('restore:local')).map((a) => a.find((x) => x.startsWith('--process='))).sort();
    expect(locals, seenText).toEqual(['--process=1', '--process=2', '--process=3']);
  });

  // Last: it damages the repository.
  it('a restore that fails midway (a file missing from the repository) leaves the folder empty, never a half cluster', async () => {
    const files: Array<{ path: string; size: number }> = [];
    const walk = async (d: string): Promise<void> => {
      for (const e of await readdir(d, { withFileTypes: true })) {
        if (e.isDirectory()) await walk(join(d, e.name));
        else files.push({ path: join(d, e.name), size: (await stat(join(d, e.name))).size });
      }
    };
    await walk(join(c.repoPath, 'backup', c.stanza, marks.secondLabel!, 'pg_data', 'base'));
    const victim = files.sort((a, b) => b.size - a.size)[0]!;
    await rm(victim.path);
    const dataDir = join(dir, 'damaged');
    const result = await restore({ set: marks.secondSet!, dataDir });
    expect(isPipelineError(result) && result.code).toBe('RESTORE_FAILED');
    expect((result as PipelineError).hint).toContain('is empty again');
    expect(await readdir(dataDir)).toEqual([]);
  });
});
