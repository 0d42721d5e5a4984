/**
 * Physical backups against dumps (issue 12), a suite of bench/run.js:
 *
 *   node bench/run.js --suite physical --physical-mb 200 [--physical-runs 1] [--tag NAME]
 *
 * On a throwaway Mastodon-shaped database in a cluster that archives its WAL through pgBackRest
 * (the pgbackrest stage's test harness, made durable like production: fsync, full-page writes,
 * synchronous commit), each measured as wall time and CPU (user+sys of the process tree, plus the
 * server's backends):
 *
 *   fullBackup         `pipeline run` with the pgbackrest stage, first backup (full)
 *   incrBackup         `pipeline run` again after ~1% of the rows of every table with updated_at changed (incr)
 *   restore            `pipeline restore latest --data-dir DIR` (pgbackrest restore)
 *   restoreStart       starting that data dir until it has replayed the archived WAL and promoted
 *   pitrRestore        `pipeline restore --to-time T --data-dir DIR` (T after the incr, more writes after T)
 *   pitrStart          starting it until it reached T and promoted
 *   pgDump             pg_dump -Fc (pg_dump's default gzip) of the same database
 *   pgRestore          pg_restore -j 2 of that dump into a new database
 *
 * plus the sizes: database, repository after each backup, WAL archived while the 1% changed, dump.
 * The restore drill is off for the timed runs (it is a restore + start, measured on its own here).
 */
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { chmod, chown, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { generateMastodonData, loadMastodonSchema } from '@backup-pipeline/testing';

/** Bytes of everything under `dir` (sizes of files, not blocks). */
async function folderBytes(dir) {
  let total = 0;
  for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) total += await folderBytes(path);
    else if (entry.isFile()) total += (await stat(path)).size;
  }
  return total;
}

/**
 * CPU ticks of a cluster's server processes: the postmaster (with its reaped children, cutime and
 * cstime) and its live children. A difference of two readings is the server's CPU in between.
 */
function clusterCpuTicks(dataDir) {
  let pid;
  try {
    pid = Number(readFileSync(join(dataDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  } catch {
    return undefined;
  }
  const fields = (p) => {
    try {
      const text = readFileSync(`/proc/${p}/stat`, 'utf8');
      return text.slice(text.lastIndexOf(')') + 2).split(' ');
    } catch {
      return undefined;
    }
  };
  const own = fields(pid);
  if (!own) return undefined;
  // After ")": state(0) ppid(1) … utime(11) stime(12) cutime(13) cstime(14)
  let ticks = Number(own[11]) + Number(own[12]) + Number(own[13]) + Number(own[14]);
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry) || Number(entry) === pid) continue;
    const f = fields(entry);
    if (f && Number(f[1]) === pid) ticks += Number(f[11]) + Number(f[12]);
  }
  return ticks;
}

/**
 * Switches WAL and waits until the archiver has archived the completed segment. A load or a change
 * of several GB leaves a backlog for archive_command, and `pgbackrest check` (the stage's preflight)
 * waits only 60 s (archive-timeout) for its own segment behind it.
 */
async function archivedUpToNow(c) {
  const [[target]] = await c.pg.psql('SELECT pg_walfile_name(pg_switch_wal())');
  for (;;) {
    const [[archived]] = await c.pg.psql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
    if (archived >= target) return;
    await new Promise((r) => setTimeout(r, 2000));
  }
}

const ids = (user) => ({ uid: Number(spawnSync('id', ['-u', user], { encoding: 'utf8' }).stdout.trim()), gid: Number(spawnSync('id', ['-g', user], { encoding: 'utf8' }).stdout.trim()) });

export async function run(ctx) {
  const { values } = parseArgs({ args: ctx.argv, strict: false, options: { 'physical-mb': { type: 'string', default: '1024' }, 'physical-runs': { type: 'string', default: '1' }, 'physical-from-dump': { type: 'string' } } });
  // A dump of the db suite's cache (--cache, `realistic-5GB-….dump`) loads in minutes instead of a generation's quarter hour.
  const fromDump = values['physical-from-dump'];
  const targetMB = Number(values['physical-mb']);
  const runs = Number(values['physical-runs']);
  const { measure, median, round, root, cleanups } = ctx;
  const asRoot = process.getuid?.() === 0;
  const { startArchivingCluster } = await import(join(root, 'plugins/pgbackrest/dist/test-support.js'));
  const cli = join(root, 'packages/cli/bin/pipeline.js');

  console.error(`physical: an archiving cluster, ${fromDump ? `the data of ${fromDump}` : `${targetMB} MB of Mastodon-shaped data`}…`);
  const c = await startArchivingCluster({ stanza: 'bench', settings: { fsync: true, full_page_writes: true, synchronous_commit: true, max_wal_size: '1GB', checkpoint_timeout: '5min' } });
  cleanups.push(() => c.stop());
  const dir = await mkdtemp('/tmp/bp-bench-physical-');
  await chmod(dir, 0o755);
  cleanups.push(() => rm(dir, { recursive: true, force: true }));
  const db = 'mastodon_production';
  await c.pg.createRole('mastodon', 'bench-only', { login: true, createdb: true });
  await c.pg.createDatabase(db, { owner: 'mastodon' });
  const genStarted = Date.now();
  if (fromDump) {
    const env = { PATH: `${c.pg.bindir}:${process.env.PATH}`, PGHOST: c.pg.socketDir, PGPORT: String(c.pg.port), PGUSER: c.pg.superuser, PGPASSWORD: '', PGPASSFILE: '/dev/null' };
    await measure(['pg_restore', '-j', '2', '--no-owner', '--role=mastodon', '-d', db, fromDump], { env });
  } else {
    await loadMastodonSchema(c.pg, db, { owner: 'mastodon' });
    await generateMastodonData(c.pg, db, { scale: { targetMB }, owner: 'mastodon', text: 'realistic' });
  }
  await c.pg.psql('CHECKPOINT;');
  await archivedUpToNow(c);
  const generateMs = Date.now() - genStarted;
  const [[dbBytes]] = await c.pg.psql(`SELECT pg_database_size('${db}')`);
  console.error(`   generated in ${round(generateMs / 1000)} s: ${round(Number(dbBytes) / 2 ** 20)} MiB`);

  const configFile = join(dir, 'pipeline.config.json');
  const stage = (type) => ({ use: 'pgbackrest', ...c.stageOptions({ socketDir: c.pg.socketDir, port: c.pg.port, pgUser: c.pg.superuser, processMax: 2, compression: 'zst', type, drill: { enabled: false } }) });
  // One work dir: `latest` and the set picked for a time look at the sets of both pipelines.
  await writeFile(configFile, JSON.stringify({ workDir: join(dir, 'work'), pipelines: { full: { source: 'mastodon', stages: [stage('full')] }, incr: { source: 'mastodon', stages: [stage('incr')] } } }, null, 2));
  const pipeline = (args) => measure(['node', cli, '--config', configFile, '--log-level', 'warn', ...args], { stdout: 'capture' });
  const pgEnv = { PATH: `${c.pg.bindir}:${process.env.PATH}`, PGHOST: c.pg.socketDir, PGPORT: String(c.pg.port), PGUSER: c.pg.superuser, PGPASSWORD: '', PGPASSFILE: '/dev/null' };
  // CPU of this suite's own cluster (measure's serverCpuMs is run.js's bench server, not this one).
  const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout.trim()) || 100;
  const timed = async (fn) => {
    const before = clusterCpuTicks(c.dataDir);
    const m = await fn();
    const after = clusterCpuTicks(c.dataDir);
    return { wallMs: Math.round(m.wallMs), cpuMs: Math.round(m.cpuMs), serverCpuMs: before === undefined || after === undefined ? null : Math.round(((after - before) * 1000) / CLK_TCK), loadAvgAtStart: m.loadAvgAtStart };
  };

  /** Starts a restored data dir (archiving off, socket only) until it has promoted; stops it. */
  const startUntilPromoted = async (dataDir) => {
    const sock = await mkdtemp(join(dir, 'sock-'));
    if (asRoot) {
      const pgIds = ids('postgres');
      await chown(sock, pgIds.uid, pgIds.gid);
    }
    const as = (argv) => (asRoot ? ['runuser', '-u', 'postgres', '--', ...argv] : argv);
    const opts = `-p 5432 -c archive_mode=off -c listen_addresses='' -c unix_socket_directories=${sock}`;
    const started = Date.now();
    const m = await measure(as([join(c.pg.bindir, 'pg_ctl'), 'start', '-D', dataDir, '-w', '-t', '3600', '-l', join(sock, 'log'), '-o', opts]));
    const sync = (argv) => spawnSync(as(argv)[0], as(argv).slice(1), { encoding: 'utf8' });
    const psql = (sql) => sync([join(c.pg.bindir, 'psql'), '-X', '-A', '-t', '-h', sock, '-p', '5432', '-U', c.pg.superuser, '-d', db, '-c', sql]).stdout.trim();
    while (psql('SELECT pg_is_in_recovery()') !== 'f') await new Promise((r) => setTimeout(r, 100));
    const wallMs = Date.now() - started;
    const rows = Number(psql('SELECT count(*) FROM statuses'));
    sync([join(c.pg.bindir, 'pg_ctl'), 'stop', '-D', dataDir, '-m', 'fast', '-w']);
    return { wallMs, pgCtlCpuMs: Math.round(m.cpuMs), rows };
  };

  const samples = [];
  for (let i = 0; i < runs; i++) {
    const s = {};
    console.error(`   run ${i + 1}/${runs}: full backup…`);
    s.fullBackup = await timed(() => pipeline(['run', 'full']));
    s.repoBytesAfterFull = await folderBytes(join(c.repoPath, 'backup'));

    // ~1% of the rows of every table with an id and updated_at.
    const tables = (await c.pg.psql("SELECT table_name FROM information_schema.columns WHERE table_schema = 'public' AND column_name = 'updated_at' AND table_name IN (SELECT table_name FROM information_schema.columns WHERE table_schema = 'public' AND column_name = 'id') ORDER BY 1;", db)).map((r) => r[0]);
    const [[walBefore]] = await c.pg.psql('SELECT pg_current_wal_lsn()');
    let changed = 0;
    for (const t of tables) {
      const [[n]] = await c.pg.psql(`WITH u AS (UPDATE "${t}" SET updated_at = updated_at + interval '1 second' WHERE id % 100 = ${i % 100} RETURNING 1) SELECT count(*) FROM u;`, db);
      changed += Number(n);
    }
    const [[walBytes]] = await c.pg.psql(`SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '${walBefore}')`);
    await archivedUpToNow(c);
    console.error(`   ${changed} rows changed (${tables.length} tables), ${round(Number(walBytes) / 2 ** 20)} MiB of WAL; incremental backup…`);
    s.rowsChanged = changed;
    s.walBytesFor1Percent = Number(walBytes);
    s.incrBackup = await timed(() => pipeline(['run', 'incr']));
    s.repoBytesAfterIncr = await folderBytes(join(c.repoPath, 'backup'));

    // The point in time: after the incr, with writes after it.
    await c.pg.psql('SELECT pg_sleep(1.2);');
    const [[target]] = await c.pg.psql('SELECT now()::text');
    await c.pg.psql(`UPDATE statuses SET updated_at = updated_at + interval '1 second' WHERE id % 100 = ${(i + 50) % 100};`, db);
    await c.switchWal();

    const restoreDir = join(dir, `restore-${i}`);
    console.error('   restore of the latest set…');
    s.restore = await timed(() => pipeline(['restore', 'latest', '-p', 'incr', '--data-dir', restoreDir]));
    s.restoreStart = await startUntilPromoted(restoreDir);
    s.restoredBytes = await folderBytes(restoreDir);
    await rm(restoreDir, { recursive: true, force: true });

    const pitrDir = join(dir, `pitr-${i}`);
    console.error(`   point-in-time restore to ${target}…`);
    s.pitrRestore = await timed(() => pipeline(['restore', '-p', 'incr', '--to-time', target, '--data-dir', pitrDir]));
    s.pitrStart = await startUntilPromoted(pitrDir);
    await rm(pitrDir, { recursive: true, force: true });

    console.error('   pg_dump -Fc and pg_restore -j 2 of the same database…');
    const dump = join(dir, `dump-${i}.dump`);
    s.pgDump = await timed(() => measure(['pg_dump', '-Fc', '-f', dump, db], { env: pgEnv }));
    s.dumpBytes = (await stat(dump)).size;
    const into = `restored_${i}`;
    await c.pg.psql(`CREATE DATABASE ${into} TEMPLATE template0;`);
    s.pgRestore = await timed(() => measure(['pg_restore', '-j', '2', '--no-owner', '-d', into, dump], { env: pgEnv }));
    await c.pg.psql(`DROP DATABASE ${into};`);
    await rm(dump, { force: true });
    samples.push(s);
  }

  const med = (pick) => median(samples.map(pick));
  const result = {
    suite: 'physical',
    targetMB,
    fromDump: fromDump ?? null,
    databaseBytes: Number(dbBytes),
    generateMs,
    runs,
    noise: 'Wall times are from a 2-core machine shared with other engineers running tests: read them as noisy; CPU (user+sys of the measured tree, plus the server backends where given) is the steadier figure.',
    pgbackrest: { processMax: 2, compression: 'zst', version: spawnSync('pgbackrest', ['version'], { encoding: 'utf8' }).stdout.trim() },
    medians: {
      fullBackupWallMs: med((s) => s.fullBackup.wallMs),
      fullBackupCpuMs: med((s) => s.fullBackup.cpuMs),
      fullBackupServerCpuMs: med((s) => s.fullBackup.serverCpuMs),
      incrBackupWallMs: med((s) => s.incrBackup.wallMs),
      incrBackupCpuMs: med((s) => s.incrBackup.cpuMs),
      incrBackupServerCpuMs: med((s) => s.incrBackup.serverCpuMs),
      restoreWallMs: med((s) => s.restore.wallMs),
      restoreCpuMs: med((s) => s.restore.cpuMs),
      restoreStartWallMs: med((s) => s.restoreStart.wallMs),
      pitrRestoreWallMs: med((s) => s.pitrRestore.wallMs),
      pitrStartWallMs: med((s) => s.pitrStart.wallMs),
      pgDumpWallMs: med((s) => s.pgDump.wallMs),
      pgDumpCpuMs: med((s) => s.pgDump.cpuMs + (s.pgDump.serverCpuMs ?? 0)),
      pgRestoreWallMs: med((s) => s.pgRestore.wallMs),
      pgRestoreCpuMs: med((s) => s.pgRestore.cpuMs + (s.pgRestore.serverCpuMs ?? 0)),
      repoBytesAfterFull: med((s) => s.repoBytesAfterFull),
      incrRepoBytes: med((s) => s.repoBytesAfterIncr - s.repoBytesAfterFull),
      dumpBytes: med((s) => s.dumpBytes),
      walBytesFor1Percent: med((s) => s.walBytesFor1Percent),
    },
    samples,
  };
  const m = result.medians;
  const s = (ms) => `${round(ms / 1000)} s`;
  console.error(
    [
      `physical suite, ${round(Number(dbBytes) / 2 ** 20)} MiB database (median of ${runs}):`,
      `  full backup ${s(m.fullBackupWallMs)} (CPU ${s(m.fullBackupCpuMs)} + server ${s(m.fullBackupServerCpuMs)}), repository ${round(m.repoBytesAfterFull / 2 ** 20)} MiB`,
      `  incr after 1% changed ${s(m.incrBackupWallMs)} (CPU ${s(m.incrBackupCpuMs)} + server ${s(m.incrBackupServerCpuMs)}), +${round(m.incrRepoBytes / 2 ** 20)} MiB; WAL for the change ${round(m.walBytesFor1Percent / 2 ** 20)} MiB`,
      `  restore ${s(m.restoreWallMs)} (CPU ${s(m.restoreCpuMs)}) + start ${s(m.restoreStartWallMs)}; PITR restore ${s(m.pitrRestoreWallMs)} + recovery to T ${s(m.pitrStartWallMs)}`,
      `  pg_dump -Fc ${s(m.pgDumpWallMs)} (CPU with server ${s(m.pgDumpCpuMs)}), ${round(m.dumpBytes / 2 ** 20)} MiB; pg_restore -j 2 ${s(m.pgRestoreWallMs)} (CPU with server ${s(m.pgRestoreCpuMs)})`,
    ].join('\n'),
  );
  return result;
}

export default run;
