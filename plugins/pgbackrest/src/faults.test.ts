/**
 * Faults of the pgbackrest stage, each through a real run against a real archiving cluster: a
 * missing stanza (refused with the command, or created), archiving off (the ALTER SYSTEM lines),
 * a failing archive_command (repository unwritable) in preflight and in the metrics, another
 * pgBackRest process holding the stanza's lock, a damaged repository file found by verify, and
 * the server stopped in the middle of a backup.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, open, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exec, listSets, LocalFolderDestination } from '@backup-pipeline/core';
import { runStages } from '@backup-pipeline/testing';
import { parseInfo } from './info.js';
import { startArchivingCluster, type ArchivingCluster } from './test-support.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

describe('pgbackrest stage faults', () => {
  let c: ArchivingCluster;
  let dir: string;
  const sql = () => ({ socketDir: c.pg.socketDir, port: c.pg.port, pgUser: c.pg.superuser });
  const stage = (extra: Record<string, unknown> = {}) => ({ use: 'pgbackrest', ...c.stageOptions({ ...sql(), type: 'incr', drill: { enabled: false }, ...extra }) });
  const run = (stages: Array<Record<string, unknown> & { use: string }>) => runStages({ stages, dir });
  const info = async () => parseInfo((await c.pgbackrest(['--output=json', 'info'])).stdout, c.stanza);
  const completeSets = async () => (await listSets(new LocalFolderDestination(join(dir, 'backups')))).filter((s) => s.complete).map((s) => s.id);
  /** Pids of this cluster's pgBackRest copy processes (`backup:local`, one per process-max), found by their --config. */
  const copyProcesses = async () => {
    const pids: number[] = [];
    for (const entry of await readdir('/proc')) {
      if (!/^\d+$/.test(entry)) continue;
      const argv = (await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '')).split('\0');
      if (argv.includes(`--config=${c.configFile}`) && argv.includes('backup:local')) pids.push(Number(entry));
    }
    return pids;
  };

  beforeAll(async () => {
    c = await startArchivingCluster({ createStanza: false });
    dir = await mkdtemp(join(tmpdir(), 'bp-pgbr-faults-'));
  }, 300_000);
  afterAll(async () => {
    await c?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('refuses a missing stanza with the exact stanza-create command, and creates it with createStanza', async () => {
    const refused = await run([stage()]);
    expect(refused.error?.code).toBe('PGBACKREST_STANZA_MISSING');
    expect(refused.error?.hint).toContain(`sudo -u postgres pgbackrest --config=${c.configFile} --stanza=${c.stanza} stanza-create`);
    expect(await completeSets()).toEqual([]);
    const created = await run([stage({ createStanza: true })]);
    expect(created.error).toBeUndefined();
    const i = await info();
    expect(i.backup).toHaveLength(1);
    expect(i.backup[0]!.type).toBe('full'); // an incr with nothing to build on becomes a full
    expect(await completeSets()).toHaveLength(1);
  }, 300_000);

  it('refuses a second backup while another pgBackRest process holds the stanza lock', async () => {
    const lockFile = join(c.lockPath, `${c.stanza}-backup.lock`);
    // Everything that touches the lock file runs as the repository's user: a probe run as root
    // before the holder made the file would create it root-owned and lock pgBackRest out for good.
    const asServer = (argv: string[]) => (c.serverUser ? ['runuser', '-u', c.serverUser, '--', ...argv] : argv);
    const probeLock = () => {
      const [file, ...args] = asServer(['flock', '--nonblock', lockFile, 'true']);
      return exec(file!, args, { okExitCodes: [0, 1] });
    };
    let holder: ChildProcess | undefined;
    try {
      // Held as the repository's user (a lock file made by root would lock pgBackRest out for good),
      // in its own process group so that it and its sleep end together.
      const [file, ...args] = asServer(['flock', '--exclusive', lockFile, 'sleep', '600']);
      holder = spawn(file!, args, { stdio: 'ignore', detached: true });
      // Wait until the lock is held (flock --nonblock fails while the holder has it).
      for (let i = 0; i < 300; i++) {
        const probe = await probeLock();
        if (probe.exitCode === 1) break;
        await sleep(100);
      }
      const before = (await info()).backup.length;
      const locked = await run([stage()]);
      expect(locked.error?.code).toBe('PGBACKREST_LOCKED');
      expect(locked.error?.message).toContain('lock');
      expect((await info()).backup.length).toBe(before);
    } finally {
      const exited = new Promise((r) => holder?.once('exit', r));
      if (holder?.pid) process.kill(-holder.pid, 'SIGTERM');
      await exited;
      // Its sleep may outlive it by a moment: wait until the lock is free.
      for (let i = 0; i < 300; i++) {
        if ((await probeLock()).exitCode === 0) break;
        await sleep(100);
      }
    }
    const after = await run([stage()]);
    expect(after.error).toBeUndefined();
  }, 300_000);

  it('finds a damaged repository file with pgbackrest verify and fails the run', async () => {
    const i = await info();
    const label = i.backup[0]!.label;
    // The largest file of the first backup's base directory: flip bytes in its middle.
    const base = join(c.repoPath, 'backup', c.stanza, label, 'pg_data', 'base');
    let victim = '';
    let size = 0;
    for (const db of await readdir(base)) {
      for (const f of await readdir(join(base, db))) {
        const s = await stat(join(base, db, f));
        if (s.size > size) [victim, size] = [join(base, db, f), s.size];
      }
    }
    expect(size).toBeGreaterThan(64);
    const handle = await open(victim, 'r+');
    await handle.write(Buffer.alloc(16, 0x5a), 0, 16, Math.floor(size / 2));
    await handle.close();
    const sets = await completeSets();
    const damaged = await run([stage()]);
    expect(damaged.error?.code).toBe('PGBACKREST_VERIFY_FAILED');
    expect(await completeSets()).toEqual(sets);
    await rm(victim);
    // Leave a clean repository for the next tests: a new full and the damaged backup expired.
    await c.pgbackrest(['--type=full', 'backup']);
    await c.pgbackrest([`--set=${label}`, 'expire']);
  }, 300_000);

  it('reports a failing archive_command (unwritable repository) in preflight and in the metrics', async () => {
    const archiveDir = join(c.repoPath, 'archive', c.stanza);
    const prom = join(dir, 'metrics.prom');
    await exec('chmod', ['-R', 'a-w', archiveDir]);
    try {
      await c.pg.psql('CREATE TABLE IF NOT EXISTS archive_probe (x int); INSERT INTO archive_probe VALUES (1); SELECT pg_switch_wal();');
      for (let i = 0; i < 600; i++) {
        const [[failed]] = (await c.pg.psql('SELECT failed_count FROM pg_stat_archiver;')) as [[string]];
        if (Number(failed) > 0) break;
        await sleep(100);
      }
      const out = await run([stage(), { use: 'metrics', path: prom }]);
      expect(out.error?.code).toBe('PGBACKREST_ARCHIVE_FAILING');
      expect(out.error?.message).toMatch(/archive_command is failing: \d+ failed attempt/);
      const text = await readFile(prom, 'utf8');
      expect(text).toMatch(/backup_pipeline_source_fact\{fact="pgbackrest\.archiveFailing",pipeline="test"\} 1/);
      expect(text).toMatch(/backup_pipeline_source_fact\{fact="pgbackrest\.archiveFailedCount",pipeline="test"\} [1-9]/);
      expect(text).toMatch(/backup_pipeline_last_run_status\{pipeline="test"\} 0/);
    } finally {
      await exec('chmod', ['-R', 'u+w', archiveDir]);
    }
    // Once the repository is writable again the archiver catches up, and a run passes and says so.
    await c.switchWal();
    for (let i = 0; i < 600; i++) {
      const [[ok]] = (await c.pg.psql('SELECT last_archived_time >= last_failed_time FROM pg_stat_archiver;')) as [[string]];
      if (ok === 't') break;
      await sleep(100);
    }
    const fixed = await run([stage(), { use: 'metrics', path: prom }]);
    expect(fixed.error).toBeUndefined();
    const text = await readFile(prom, 'utf8');
    expect(text).toMatch(/backup_pipeline_source_fact\{fact="pgbackrest\.archiveFailing",pipeline="test"\} 0/);
    expect(text).toMatch(/backup_pipeline_source_fact\{fact="pgbackrest\.lastBackupAgeSeconds",pipeline="test"\} \d+/);
    expect(text).toMatch(/backup_pipeline_source_fact\{fact="pgbackrest\.archiveLagSeconds",pipeline="test"\} \d+/);
    expect(text).toMatch(/backup_pipeline_source_fact\{fact="pgbackrest\.repositoryBytes",pipeline="test"\} [1-9]\d*/);
  }, 300_000);

  it('an archiver slower than archive-timeout fails preflight with a hint to raise archiveTimeout; a larger archiveTimeout waits for it', async () => {
    const [[original]] = (await c.pg.psql('SHOW archive_command;')) as [[string]];
    const setCommand = async (command: string) => {
      await c.pg.psql(`ALTER SYSTEM SET archive_command = '${command.replace(/'/g, "''")}'; SELECT pg_reload_conf();`);
      for (let i = 0; i < 100; i++) {
        const [[now]] = (await c.pg.psql('SHOW archive_command;')) as [[string]];
        if (now === command) return;
        await sleep(50);
      }
    };
    // Every segment takes 3 s to archive (as a busy archiver behind a large change).
    await setCommand(`sleep 3 && ${original}`);
    try {
      const slow = await run([stage({ archiveTimeout: 1 })]);
      expect(slow.error?.code).toBe('PGBACKREST_CHECK_FAILED');
      expect(slow.error?.message).toMatch(/ERROR: \[082\]/);
      expect(slow.error?.hint).toMatch(/archive-timeout 1 s.*raise archiveTimeout/);
      expect(slow.error?.hint).toContain('--archive-timeout=1');
      const patient = await run([stage({ archiveTimeout: 30 })]);
      expect(patient.error, patient.logs.join('\n')).toBeUndefined();
    } finally {
      await setCommand(original);
    }
  }, 300_000);

  it('the server stopped in the middle of a backup fails the run and leaves no set; the next run works', async () => {
    // pgBackRest 2.45 copies from disk and asks the server only at backup start and stop (and
    // between files, at most every 30 s): a stopped server fails the backup once the files in
    // hand are copied, so little data keeps this short. To stop the server while the copy is
    // surely under way, the copy process (`backup:local`) is frozen from its first moment until
    // the server is down.
    await c.pg.psql(`CREATE TABLE big AS SELECT g, md5(g::text) || md5((g * 7)::text) AS pad FROM generate_series(1, 100000) g;`);
    await c.switchWal();
    const before = await info();
    const sets = await completeSets();
    const backupDir = join(c.repoPath, 'backup', c.stanza);
    const labelsBefore = await readdir(backupDir);
    let settled = false;
    const running = run([stage({ type: 'full', processMax: 1 })]).finally(() => {
      settled = true;
    });
    let copiers: number[] = [];
    while (!settled && copiers.length === 0) {
      copiers = await copyProcesses();
      if (copiers.length === 0) await sleep(10);
    }
    expect(copiers.length).toBeGreaterThan(0);
    try {
      for (const pid of copiers) process.kill(pid, 'SIGSTOP');
      await c.pg.halt();
    } finally {
      for (const pid of copiers) process.kill(pid, 'SIGCONT');
    }
    const out = await running;
    expect(out.error?.code).toBe('PGBACKREST_BACKUP_FAILED');
    // pgBackRest's own line (DbQueryError), not only libpq's last words.
    expect(out.error?.message).toMatch(/ERROR: \[057\]: unable to execute query/);
    expect(await completeSets()).toEqual(sets);
    await c.pg.restart();
    // pgBackRest keeps the copied files as a resumable partial (a new folder with only a
    // manifest copy), which its info does not list and the pipeline does not count.
    const partial = (await readdir(backupDir)).filter((l) => /^\d{8}-\d{6}F$/.test(l) && !labelsBefore.includes(l));
    expect(partial).toHaveLength(1);
    expect(existsSync(join(backupDir, partial[0]!, 'backup.manifest'))).toBe(false);
    expect((await info()).backup.map((b) => b.label)).toEqual(before.backup.map((b) => b.label));
    const again = await run([stage({ type: 'incr' })]);
    expect(again.error).toBeUndefined();
    expect((await completeSets()).length).toBe(sets.length + 1);
    expect((await info()).backup.length).toBe(before.backup.length + 1);
  }, 180_000);

  it('refuses a server that does not archive, printing the ALTER SYSTEM lines and the restart', async () => {
    const plain = await startArchivingCluster({ archiving: false });
    try {
      const out = await runStages({
        dir: await mkdtemp(join(tmpdir(), 'bp-pgbr-noarch-')),
        stages: [{ use: 'pgbackrest', ...plain.stageOptions({ socketDir: plain.pg.socketDir, port: plain.pg.port, pgUser: plain.pg.superuser }) }],
      });
      await out.cleanup();
      await rm(out.dir, { recursive: true, force: true });
      expect(out.error?.code).toBe('PGBACKREST_ARCHIVING_OFF');
      expect(out.error?.message).toContain('archive_mode is off');
      expect(out.error?.hint).toContain("ALTER SYSTEM SET archive_mode = 'on';");
      expect(out.error?.hint).toContain(`ALTER SYSTEM SET archive_command = 'pgbackrest --config=${plain.configFile} --stanza=${plain.stanza} archive-push %p';`);
      expect(out.error?.hint).toContain('restart PostgreSQL');
    } finally {
      await plain.stop();
    }
  }, 300_000);
});


