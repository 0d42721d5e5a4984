/**
 * The throwaway cluster of a drill, against the real PostgreSQL server binaries: it starts (initdb,
 * socket only, drill settings), answers queries through `source()` as the restore code connects,
 * runs as the postgres user when we are root, removes every file when stopped (twice is fine), and
 * a pipeline killed with SIGKILL leaves a postmaster that the next run's crash recovery ends.
 */
import { spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { chmod, cp, mkdir, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { psql } from './postgres.js';
import { createRunScratch, recoverDeadRuns, RUN_MARKER } from './run-scratch.js';
import { findServerBinaries, startScratchCluster, type ScratchCluster } from './scratch-cluster.js';

const isRoot = process.getuid?.() === 0;
let bindir: string;

/** The uid a process runs as, from /proc (undefined once it is gone). */
async function uidOf(pid: number): Promise<number | undefined> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => undefined);
  if (!status || /^State:\s+Z/m.test(status)) return undefined;
  return Number(/^Uid:\s+(\d+)/m.exec(status)![1]);
}
/** The TCP sockets `pid` listens on (its socket inodes found in /proc/net/tcp{,6} in state LISTEN). */
async function tcpListeners(pid: number): Promise<string[]> {
  const { readlink } = await import('node:fs/promises');
  const inodes = new Set<string>();
  for (const fd of await readdir(`/proc/${pid}/fd`)) {
    const m = /^socket:\[(\d+)\]$/.exec(await readlink(`/proc/${pid}/fd/${fd}`).catch(() => ''));
    if (m) inodes.add(m[1]!);
  }
  expect(inodes.size).toBeGreaterThan(0); // the Unix socket at least: the check can see sockets
  const listening: string[] = [];
  for (const table of ['/proc/net/tcp', '/proc/net/tcp6']) {
    for (const line of (await readFile(table, 'utf8').catch(() => '')).split('\n').slice(1)) {
      const f = line.trim().split(/\s+/);
      if (f[3] === '0A' && inodes.has(f[9]!)) listening.push(f[1]!);
    }
  }
  return listening;
}
const postmasterPid = async (dataDir: string) => Number((await readFile(join(dataDir, 'postmaster.pid'), 'utf8')).split('\n')[0]);

let work: string;
beforeAll(async () => {
  const found = await findServerBinaries();
  if (!found) throw new Error('these tests need the PostgreSQL server binaries (apt-get install postgresql)');
  bindir = found;
  work = await mkdtemp(join(tmpdir(), 'bp-scratch-test-'));
});
afterAll(async () => {
  await rm(work, { recursive: true, force: true });
});

describe('scratch cluster', () => {
  it('finds server binaries by major, and none for a major that is not installed', async () => {
    const major = Number(/\/(\d+)\/bin$/.exec(bindir)?.[1] ?? NaN);
    if (Number.isInteger(major)) expect(await findServerBinaries(major)).toBe(bindir);
    expect(await findServerBinaries(99)).toBeUndefined();
  });

  it('starts socket-only with the drill settings, answers over source(), runs as postgres when root, and stop() removes every file', async () => {
    // A parent the postgres user can reach (0755 chain), like a work dir under /var/backups owned by it.
    const parent = join(work, 'reachable');
    await mkdir(parent, { mode: 0o755 });
    await chmod(work, 0o755);
    let cluster: ScratchCluster | undefined;
    try {
      cluster = await startScratchCluster({ bindir, parentDir: parent, settings: { work_mem: '8MB' } });
      expect(cluster.root.startsWith(parent + '/')).toBe(true);
      expect(cluster.dataDir.startsWith(cluster.root)).toBe(true);
      const settings = await cluster.psql(
        "SELECT name, setting FROM pg_settings WHERE name IN ('fsync','full_page_writes','synchronous_commit','wal_level','max_wal_senders','archive_mode','autovacuum','listen_addresses','work_mem','cluster_name') ORDER BY name",
      );
      expect(Object.fromEntries(settings)).toEqual({
        archive_mode: 'off',
        autovacuum: 'off',
        cluster_name: 'backup-pipeline-drill',
        fsync: 'off',
        full_page_writes: 'off',
        listen_addresses: '',
        max_wal_senders: '0',
        synchronous_commit: 'off',
        wal_level: 'minimal',
        work_mem: '8192',
      });
      const [[mwm]] = (await cluster.psql("SELECT setting::bigint * 1024 FROM pg_settings WHERE name = 'maintenance_work_mem'")) as [[string]];
      expect(Number(mwm)).toBeGreaterThanOrEqual(64 * 1024 * 1024);
      expect(Number((await cluster.psql('SHOW server_version_num'))[0]![0]) / 10000 | 0).toBe(cluster.major);

      // The restore code connects through a PgSource, exactly like to the server.
      await cluster.psql('CREATE DATABASE drill TEMPLATE template0');
      const src = cluster.source('drill');
      expect(src.host).toBe(cluster.socketDir);
      await psql(src, 'CREATE TABLE t AS SELECT g FROM generate_series(1, 1000) g', { psqlPath: join(bindir, 'psql') });
      expect(await psql(src, 'SELECT count(*) FROM t', { psqlPath: join(bindir, 'psql') })).toEqual([['1000']]);

      // No TCP socket: only the private Unix socket, in a folder no one else can enter.
      expect(await readdir(cluster.socketDir)).toContain(`.s.PGSQL.${cluster.port}`);
      expect((await stat(cluster.socketDir)).mode & 0o777).toBe(0o700);
      const pid = await postmasterPid(cluster.dataDir);
      expect(await tcpListeners(pid)).toEqual([]);
      if (isRoot) {
        const postgresUid = (await stat(cluster.dataDir)).uid;
        expect(cluster.osUser).toBe('postgres');
        expect(postgresUid).not.toBe(0);
        expect(await uidOf(pid)).toBe(postgresUid);
      } else {
        expect(await uidOf(pid)).toBe(process.getuid!());
      }

      await cluster.stop();
      expect(await uidOf(pid)).toBeUndefined();
      expect(existsSync(cluster.root)).toBe(false);
      expect(await readdir(parent)).toEqual([]);
      await cluster.stop(); // twice is fine
    } finally {
      await cluster?.stop();
    }
  });

  it.runIf(isRoot)('as root, a parent the postgres user cannot reach: the cluster lives in a noted bp-scratch- folder, removed by stop()', async () => {
    const parent = await mkdtemp(join(tmpdir(), 'bp-scratch-private-')); // 0700 root
    try {
      const cluster = await startScratchCluster({ bindir, parentDir: parent });
      try {
        expect(cluster.root.startsWith(parent)).toBe(false);
        expect(basename(join(cluster.root, '..'))).toMatch(/^bp-scratch-/);
        const notes = (await readdir(parent)).filter((f) => f.startsWith('outside-'));
        expect(notes).toHaveLength(1);
        expect((await readFile(join(parent, notes[0]!), 'utf8')).trim()).toBe(join(cluster.root, '..'));
        expect(await cluster.psql('SELECT 1')).toEqual([['1']]);
      } finally {
        await cluster.stop();
      }
      expect(existsSync(join(cluster.root, '..'))).toBe(false);
    } finally {
      await rm(parent, { recursive: true, force: true });
    }
  });

  it('starts an existing data dir inside its parent (a restored physical backup), and removes it on stop; refuses one outside', async () => {
    const parent = join(work, 'existing');
    await mkdir(parent, { mode: 0o755 });
    // Make a data dir the way a restore would leave one: initdb'd and stopped.
    const first = await startScratchCluster({ bindir, parentDir: parent });
    await first.psql('CREATE TABLE kept AS SELECT 42 AS answer');
    const restored = join(parent, 'restored');
    const { exec } = await import('./exec.js');
    const ctl = (args: string[]) => (isRoot ? exec('runuser', ['-u', 'postgres', '--', join(bindir, 'pg_ctl'), ...args], { cwd: '/' }) : exec(join(bindir, 'pg_ctl'), args));
    await ctl(['stop', '-D', first.dataDir, '-m', 'fast', '-w']);
    await cp(first.dataDir, restored, { recursive: true });
    await rm(join(restored, 'postgresql.conf')); // as a Debian cluster's data dir: its configuration lives in /etc
    await first.stop();

    await expect(startScratchCluster({ bindir, parentDir: join(work, 'reachable'), dataDir: restored })).rejects.toMatchObject({ code: 'SCRATCH_CLUSTER_FAILED' });
    const second = await startScratchCluster({ bindir, parentDir: parent, dataDir: restored });
    try {
      expect(second.dataDir).toBe(restored);
      expect(await second.psql('SELECT answer FROM kept')).toEqual([['42']]);
      expect((await second.psql("SHOW archive_mode"))[0]).toEqual(['off']);
    } finally {
      await second.stop();
    }
    expect(existsSync(restored)).toBe(false);
    expect(await readdir(parent)).toEqual([]);
  });

  it('a pipeline killed with SIGKILL leaves its postmaster running; the next run\'s crash recovery ends it and removes the folder', async () => {
    const workDir = join(work, 'killed');
    await mkdir(workDir, { mode: 0o700 });
    const dist = (name: string) => fileURLToPath(new URL(`../dist/${name}.js`, import.meta.url));
    // The "pipeline": makes its run folder (which marks its children), starts a cluster in it, says where, waits.
    const script = `
      const { createRunScratch } = await import(${JSON.stringify(dist('run-scratch'))});
      const { startScratchCluster } = await import(${JSON.stringify(dist('scratch-cluster'))});
      const scratch = await createRunScratch(process.argv[1]);
      const cluster = await startScratchCluster({ bindir: process.argv[2], parentDir: scratch.dir });
      process.stdout.write(JSON.stringify({ runDir: scratch.dir, dataDir: cluster.dataDir, root: cluster.root }) + '\\n');
      setInterval(() => {}, 1000);
    `;
    const child = spawn(process.execPath, ['--input-type=module', '-e', script, workDir, bindir], { stdio: ['ignore', 'pipe', 'inherit'], env: { ...process.env, [RUN_MARKER]: undefined } });
    const line = await new Promise<string>((resolve, reject) => {
      let out = '';
      child.stdout.on('data', (c: Buffer) => {
        out += c.toString();
        if (out.includes('\n')) resolve(out.split('\n')[0]!);
      });
      child.on('exit', (code) => reject(new Error(`the pipeline process exited (${code}) before starting its cluster`)));
    });
    const { runDir, dataDir, root } = JSON.parse(line) as { runDir: string; dataDir: string; root: string };
    const pid = await postmasterPid(dataDir);
    try {
      const environ = await readFile(`/proc/${pid}/environ`);
      expect(environ.toString().split('\0')).toContain(`${RUN_MARKER}=${basename(runDir)}`);
      child.kill('SIGKILL');
      await new Promise((r) => child.on('exit', r));
      expect(await uidOf(pid)).toBeDefined(); // nothing else stopped it

      // The next run: recovery before it makes its own folder.
      const next = await createRunScratch(workDir);
      try {
        expect(await uidOf(pid)).toBeUndefined();
        expect(existsSync(runDir)).toBe(false);
        expect(existsSync(root)).toBe(false);
        expect(await readdir(join(workDir, '.runs'))).toEqual([basename(next.dir)]);
      } finally {
        await next.remove();
      }
      expect(await recoverDeadRuns(join(workDir, '.runs'))).toEqual([]);
    } finally {
      if (await uidOf(pid)) process.kill(pid, 'SIGKILL');
    }
  });
});
