/**
 * A throwaway PostgreSQL cluster for production drills: a restore test of a dump, or a restored
 * physical backup started to prove it opens. It runs beside production, never on it: `initdb`
 * into a private folder of the run (or an existing, restored data dir), **no TCP at all**
 * (`listen_addresses = ''`; the port only names the socket in a private 0700 socket folder), and
 * the settings a drill wants — no fsync, no full-page writes, `wal_level = minimal`, no archiving,
 * no autovacuum, a large `maintenance_work_mem` sized from the free memory. Its superuser connects
 * over that socket with trust authentication: only the cluster's OS user (and root) can open it.
 *
 * initdb and postgres refuse to run as root: when this process is root, the cluster runs as the
 * `postgres` user (through `runuser`), in a folder owned by it. Every program goes through `exec`,
 * so the processes inherit the run's environment marker (`BACKUP_PIPELINE_RUN`): when the run is
 * killed (`kill -9`), the next run's crash recovery ends the postmaster and its backends and
 * removes the folder (see run-scratch.ts).
 *
 * This is not the test harness (`@backup-pipeline/sandbox` starts clusters with TCP, passwords and
 * roles for the tests); it is what the product itself starts on a production host.
 */
import { existsSync } from 'node:fs';
import { chmod, chown, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, isAbsolute, join, relative, resolve } from 'node:path';
import type { Logger } from 'pino';
import { PipelineError } from './errors.js';
import { exec, stderrTail } from './exec.js';
import { parsePgVersion, pgBinDirs, type PgSource } from './postgres.js';
import { noteOutsideFolder } from './run-scratch.js';

export type SettingValue = string | number | boolean;

export interface ScratchClusterOptions {
  /** Folder with the server binaries (initdb, pg_ctl, postgres, psql) of the wanted major: see `findServerBinaries`. */
  bindir: string;
  /**
   * The private folder to create the cluster in: the run's scratch dir (`ctx.tmpDir`), so that
   * crash recovery finds it. When this process is root and the `postgres` user cannot reach that
   * folder (a 0700 work dir), the cluster goes to `scratchClusterParent()`'s fallback instead.
   */
  parentDir: string;
  /**
   * Start this EXISTING data dir (a restored physical backup) instead of running initdb. It must be
   * inside `parentDir` (it is removed with everything else by `stop()`); its own pg_hba.conf is not
   * used. When root, it is handed to the `postgres` user.
   */
  dataDir?: string;
  /** Extra settings, given to the server on its command line (they win over postgresql.conf and postgresql.auto.conf). */
  settings?: Record<string, SettingValue>;
  /** Seconds `pg_ctl start` waits for the server to accept connections (a restored backup may replay WAL first). Default 60, or 600 with `dataDir`. */
  startTimeoutSeconds?: number;
  signal?: AbortSignal;
  log?: Logger;
}

export interface ScratchCluster {
  /** Names the socket (`.s.PGSQL.<port>` in `socketDir`); the server listens on no TCP port. */
  readonly port: number;
  readonly socketDir: string;
  readonly dataDir: string;
  /** The database superuser the drill connects as (over the socket, trust). */
  readonly user: string;
  /** The OS user the server runs as (`postgres` when this process is root). */
  readonly osUser: string;
  readonly bindir: string;
  /** `15.8` */
  readonly version: string;
  readonly major: number;
  /** The folder holding everything of this cluster (removed by `stop()`). */
  readonly root: string;
  /** A connection to `database` over the private socket, for psql, pg_restore, the restore hook. */
  source(database: string): PgSource;
  /** Runs SQL (on stdin) as the superuser; returns rows of tab-separated fields. */
  psql(sql: string, database?: string): Promise<string[][]>;
  /** Stops the server (fast, then immediate) and removes every file of the cluster. Safe to call twice. */
  stop(): Promise<void>;
}

/** The superuser of a scratch cluster. */
export const SCRATCH_CLUSTER_USER = 'postgres';
/** The port number that names the socket (no TCP: the socket folder is private, so it never collides). */
export const SCRATCH_CLUSTER_PORT = 5432;
/** Shown in `ps` (`postgres: backup-pipeline-drill: checkpointer`). */
export const SCRATCH_CLUSTER_NAME = 'backup-pipeline-drill';
/** Folders made outside the run's scratch dir start with this (crash recovery removes only such names). */
export const OUTSIDE_PREFIX = 'bp-scratch-';

const MB = 1024 * 1024;

/** MemAvailable from /proc/meminfo, in bytes (undefined off Linux). */
async function availableMemory(): Promise<number | undefined> {
  const text = await readFile('/proc/meminfo', 'utf8').catch(() => '');
  const m = /^MemAvailable:\s+(\d+)\s+kB/m.exec(text);
  return m ? Number(m[1]) * 1024 : undefined;
}

/**
 * The settings of a drill. `initdb: true` for a fresh cluster (a restored physical backup keeps its
 * wal_level: WAL replay may need it). `maintenance_work_mem` is an eighth of the available memory,
 * between 64 MB and 2 GB (pg_restore -j builds several indexes at once, each with that much).
 */
export function drillSettings(options: { availableBytes?: number; initdb: boolean }): Record<string, SettingValue> {
  const available = options.availableBytes ?? 2048 * MB;
  const mwm = Math.min(2048, Math.max(64, Math.floor(available / 8 / MB)));
  const sharedBuffers = Math.min(512, Math.max(32, Math.floor(available / 16 / MB)));
  return {
    fsync: false,
    full_page_writes: false,
    synchronous_commit: false,
    ...(options.initdb ? { wal_level: 'minimal', max_wal_senders: 0 } : {}),
    archive_mode: false,
    autovacuum: false,
    maintenance_work_mem: `${mwm}MB`,
    shared_buffers: `${sharedBuffers}MB`,
    max_wal_size: '4GB',
    checkpoint_timeout: '30min',
    max_connections: 40,
    jit: false,
    logging_collector: false,
    cluster_name: SCRATCH_CLUSTER_NAME,
  };
}

function settingLiteral(value: SettingValue): string {
  return typeof value === 'boolean' ? (value ? 'on' : 'off') : String(value);
}

/** One `-c name=value` for pg_ctl's `-o`, which pg_ctl hands to /bin/sh: single-quoted. */
function shellSetting(name: string, value: SettingValue): string {
  if (!/^[a-z_][a-z0-9_.]*$/i.test(name)) throw new PipelineError('SCRATCH_CLUSTER_FAILED', `not a PostgreSQL setting name: ${JSON.stringify(name)}`);
  return `-c '${`${name}=${settingLiteral(value)}`.replace(/'/g, `'\\''`)}'`;
}

/** pg_ctl puts the data dir between double quotes in a shell command: refuse what would break out. */
function checkPath(path: string): void {
  if (/["$`\\\n\r]/.test(path)) {
    throw new PipelineError('SCRATCH_CLUSTER_FAILED', `the scratch cluster's folder ${JSON.stringify(path)} holds a character pg_ctl cannot pass through its shell`, {
      hint: 'Use a work dir whose path has no quotes, $, backquotes or backslashes.',
    });
  }
}

async function hasAll(dir: string, programs: string[]): Promise<boolean> {
  return programs.every((p) => existsSync(join(dir, p)));
}

/** `postgres --version` of a bin folder. */
async function serverVersion(bindir: string, signal?: AbortSignal): Promise<{ version: string; major: number } | undefined> {
  const out = await exec(join(bindir, 'postgres'), ['--version'], { label: 'postgres --version', signal }).catch(() => undefined);
  return out ? parsePgVersion(out.stdout) : undefined;
}

const SERVER_PROGRAMS = ['initdb', 'pg_ctl', 'postgres', 'psql'];

/**
 * A folder with the server binaries (initdb, pg_ctl, postgres, psql) of `major`, or of the newest
 * major when none is asked for; undefined when none is installed. Looks where the client tools are
 * looked for (`PG_BINDIR`, `/usr/lib/postgresql/<major>/bin`, PATH).
 */
export async function findServerBinaries(major?: number, options: { binDir?: string; signal?: AbortSignal } = {}): Promise<string | undefined> {
  for (const dir of await pgBinDirs(options.binDir)) {
    if (!(await hasAll(dir, SERVER_PROGRAMS))) continue;
    const parsed = await serverVersion(dir, options.signal);
    if (parsed && (major === undefined || parsed.major === major)) return dir;
  }
  return undefined;
}

interface RunAs {
  name: string;
  uid: number;
  gid: number;
  /** Programs are run through runuser as this user. */
  viaRunuser: boolean;
}

async function idOf(user: string, flag: '-u' | '-g'): Promise<number | undefined> {
  const out = await exec('id', [flag, user], { label: 'id' }).catch(() => undefined);
  const n = Number(out?.stdout.trim());
  return out && Number.isInteger(n) ? n : undefined;
}

async function clusterUser(): Promise<RunAs> {
  const uid = typeof process.getuid === 'function' ? process.getuid() : -1;
  const gid = typeof process.getgid === 'function' ? process.getgid() : -1;
  if (uid !== 0) return { name: (await exec('id', ['-un'], { label: 'id' }).catch(() => undefined))?.stdout.trim() || String(uid), uid, gid, viaRunuser: false };
  const pgUid = await idOf('postgres', '-u');
  const pgGid = await idOf('postgres', '-g');
  if (pgUid === undefined || pgGid === undefined || pgUid === 0) {
    throw new PipelineError('SCRATCH_CLUSTER_FAILED', 'running as root, and there is no `postgres` user to run the throwaway cluster as (PostgreSQL refuses to run as root)', {
      hint: 'Install the PostgreSQL server package (it creates the postgres user), or run the pipeline as its own user (e.g. sudo -u mastodon).',
    });
  }
  return { name: 'postgres', uid: pgUid, gid: pgGid, viaRunuser: true };
}

/** Whether `user` may traverse every folder from / down to `dir` (search permission on each). */
async function canReach(dir: string, user: RunAs): Promise<boolean> {
  for (let d = resolve(dir); ; d = dirname(d)) {
    const st = await stat(d).catch(() => undefined);
    if (!st) return false;
    const ok = st.uid === user.uid ? (st.mode & 0o100) !== 0 : st.gid === user.gid ? (st.mode & 0o010) !== 0 : (st.mode & 0o001) !== 0;
    if (!ok) return false;
    if (d === dirname(d)) return true;
  }
}

/**
 * Where a scratch cluster (or a data dir to start as one) can live: `parentDir` itself, unless this
 * process is root and the `postgres` user cannot reach it (a 0700 work dir). Then a folder
 * `bp-scratch-…` in the first of `$TMPDIR`, /var/tmp (on disk rather than a tmpfs /tmp) and /tmp
 * that the postgres user can reach, noted in `parentDir` so crash recovery removes it with the run's folder.
 * Callers that restore a physical backup call this first, restore into the folder it returns, and
 * pass it as `parentDir` (and the data dir inside it as `dataDir`).
 */
export async function scratchClusterParent(parentDir: string, log?: Logger): Promise<string> {
  const user = await clusterUser();
  if (!user.viaRunuser || (await canReach(parentDir, user))) return parentDir;
  // $TMPDIR first, unless the postgres user cannot reach it either (a private TMPDIR), then /var/tmp.
  const candidates = [process.env.TMPDIR, '/var/tmp', '/tmp'].filter((d): d is string => Boolean(d) && existsSync(d!));
  let base: string | undefined;
  for (const d of candidates) if (await canReach(d, user)) { base = d; break; }
  if (!base) {
    throw new PipelineError('SCRATCH_CLUSTER_FAILED', `the postgres user can reach none of ${[parentDir, ...candidates].join(', ')} for the throwaway cluster`, {
      hint: 'Set TMPDIR to a folder the postgres user may traverse, or restore into the server instead (restoreInto: server).',
    });
  }
  const dir = await mkdtemp(join(base, OUTSIDE_PREFIX));
  await chmod(dir, 0o711); // only traversal: what is inside is the postgres user's, 0700
  await noteOutsideFolder(parentDir, dir);
  log?.info({ parentDir, dir }, `the postgres user cannot reach ${parentDir}: the throwaway cluster lives in ${dir} (set TMPDIR to choose another place); removed at the end, or by crash recovery`);
  return dir;
}

/**
 * Starts a throwaway cluster (see the file comment). Throws SCRATCH_CLUSTER_FAILED (with the
 * server log's last lines) when it cannot start; nothing is left behind then.
 */
export async function startScratchCluster(options: ScratchClusterOptions): Promise<ScratchCluster> {
  const { bindir, signal, log } = options;
  for (const p of SERVER_PROGRAMS) {
    if (!existsSync(join(bindir, p))) {
      throw new PipelineError('SCRATCH_CLUSTER_FAILED', `${join(bindir, p)} does not exist: ${bindir} holds no PostgreSQL server binaries`, {
        hint: 'Install the server package of the dump\'s major version (apt-get install postgresql-<major>), or restore into the server instead.',
      });
    }
  }
  const parsed = await serverVersion(bindir, signal);
  if (!parsed) throw new PipelineError('SCRATCH_CLUSTER_FAILED', `cannot read the version of ${join(bindir, 'postgres')}`);
  const user = await clusterUser();
  const parentDir = await scratchClusterParent(options.parentDir, log);
  if (options.dataDir) {
    const rel = relative(resolve(parentDir), resolve(options.dataDir));
    if (!isAbsolute(options.dataDir) || rel === '' || rel.startsWith('..') || isAbsolute(rel)) {
      throw new PipelineError('SCRATCH_CLUSTER_FAILED', `the data dir ${options.dataDir} is not inside ${parentDir}: a scratch cluster removes its data dir when it stops, so it only starts one made for it`, {
        hint: 'Restore the backup into a folder of scratchClusterParent(ctx.tmpDir) and start that.',
      });
    }
  }

  // <parent>/scratch-cluster-XXXX (0700, the cluster user's): data/, sock/, hba and ident files, server.log.
  const root = await mkdtemp(join(parentDir, 'scratch-cluster-'));
  checkPath(root);
  const dataDir = options.dataDir ? resolve(options.dataDir) : join(root, 'data');
  checkPath(dataDir);
  const socketDir = join(root, 'sock');
  const hbaFile = join(root, 'pg_hba.conf');
  const identFile = join(root, 'pg_ident.conf');
  const logFile = join(root, 'server.log');
  const port = SCRATCH_CLUSTER_PORT;
  const superuser = SCRATCH_CLUSTER_USER;
  const env = { LC_ALL: 'C.UTF-8', LANG: 'C.UTF-8', PGDATA: undefined, PGHOST: undefined, PGPORT: undefined, PGOPTIONS: undefined };
  const run = (program: string, args: string[], extra: { signal?: AbortSignal; timeoutMs?: number } = {}) => {
    const file = join(bindir, program);
    return user.viaRunuser
      ? exec('runuser', ['-u', user.name, '--', file, ...args], { cwd: root, label: program, env, signal: extra.signal, timeoutMs: extra.timeoutMs })
      : exec(file, args, { cwd: root, label: program, env, signal: extra.signal, timeoutMs: extra.timeoutMs });
  };

  let started = false;
  let removed = false;
  const removeAll = async () => {
    if (removed) return;
    removed = true;
    await rm(root, { recursive: true, force: true });
    if (options.dataDir) await rm(dataDir, { recursive: true, force: true });
    if (parentDir !== options.parentDir) await rm(parentDir, { recursive: true, force: true });
  };
  const serverLogTail = async () => stderrTail(await readFile(logFile, 'utf8').catch(() => ''), 8);
  const halt = async () => {
    if (!started) return;
    // Not the run's signal: an interrupted run still stops its cluster.
    const fast = await run('pg_ctl', ['stop', '-D', dataDir, '-m', 'fast', '-w', '-t', '30']).then(
      () => true,
      () => false,
    );
    if (!fast) await run('pg_ctl', ['stop', '-D', dataDir, '-m', 'immediate', '-w', '-t', '30']).catch(() => undefined);
    started = false;
  };

  try {
    await chmod(root, 0o700);
    await mkdir(socketDir, { mode: 0o700 });
    await writeFile(hbaFile, `# backup-pipeline scratch cluster: the private socket only\nlocal all all trust\n`, { mode: 0o600 });
    await writeFile(identFile, '', { mode: 0o600 });
    if (options.dataDir) {
      if (!existsSync(join(dataDir, 'PG_VERSION'))) {
        throw new PipelineError('SCRATCH_CLUSTER_FAILED', `${dataDir} is not a PostgreSQL data dir (no PG_VERSION)`);
      }
      const dataMajor = Number((await readFile(join(dataDir, 'PG_VERSION'), 'utf8')).trim());
      if (dataMajor !== parsed.major) {
        throw new PipelineError('SCRATCH_CLUSTER_FAILED', `${dataDir} is a PostgreSQL ${dataMajor} data dir, but ${bindir} holds PostgreSQL ${parsed.version}`, {
          hint: `Install postgresql-${dataMajor} and pass its bin folder (findServerBinaries(${dataMajor})).`,
        });
      }
      // A Debian-style data dir keeps its configuration in /etc: start it with an empty one.
      if (!existsSync(join(dataDir, 'postgresql.conf'))) await writeFile(join(dataDir, 'postgresql.conf'), '', { mode: 0o600 });
      await rm(join(dataDir, 'postmaster.pid'), { force: true });
      await chmod(dataDir, 0o700);
    }
    if (user.viaRunuser) {
      for (const p of [root, socketDir, hbaFile, identFile]) await chown(p, user.uid, user.gid);
      if (options.dataDir && (await stat(dataDir)).uid !== user.uid) {
        await exec('chown', ['-R', `${user.uid}:${user.gid}`, dataDir], { label: 'chown', signal });
      }
    }
    if (!options.dataDir) {
      await run('initdb', ['-D', dataDir, '-U', superuser, '-E', 'UTF8', '--locale=C.UTF-8', '-N', '-A', 'trust'], { signal });
    }
    const settings: Record<string, SettingValue> = {
      ...drillSettings({ availableBytes: await availableMemory(), initdb: !options.dataDir }),
      ...options.settings,
      // Not negotiable: no TCP, the private socket, the harness's own authentication files.
      listen_addresses: '',
      port,
      unix_socket_directories: socketDir,
      unix_socket_permissions: '0700',
      hba_file: hbaFile,
      ident_file: identFile,
    };
    const post = Object.entries(settings)
      .map(([k, v]) => shellSetting(k, v))
      .join(' ');
    const timeout = options.startTimeoutSeconds ?? (options.dataDir ? 600 : 60);
    started = true; // from here on, stop it whatever happens
    await run('pg_ctl', ['start', '-D', dataDir, '-w', '-t', String(timeout), '-l', logFile, '-o', post], { signal });
  } catch (error) {
    const tail = await serverLogTail();
    await halt().catch(() => undefined);
    await removeAll().catch(() => undefined);
    if (signal?.aborted || (error as PipelineError).code === 'ABORTED') throw error;
    if ((error as PipelineError).code === 'SCRATCH_CLUSTER_FAILED') throw error;
    throw new PipelineError('SCRATCH_CLUSTER_FAILED', `the throwaway PostgreSQL ${parsed.version} cluster did not start: ${tail.split('\n').slice(-3).join(' | ') || (error as Error).message}`, {
      hint: 'See the message for the server\'s own words; a drill can also restore into the server (restoreInto: server).',
      cause: error,
      details: { bindir, serverLog: tail },
    });
  }
  log?.info(
    { bindir, dataDir, socketDir, osUser: user.name, version: parsed.version },
    `started a throwaway PostgreSQL ${parsed.version} cluster (socket only, as ${user.name}) in ${root}`,
  );

  const psqlPath = join(bindir, 'psql');
  const cluster: ScratchCluster = {
    port,
    socketDir,
    dataDir,
    user: superuser,
    osUser: user.name,
    bindir,
    version: parsed.version,
    major: parsed.major,
    root,
    source(database) {
      return { host: socketDir, port, database, user: superuser };
    },
    async psql(sql, database = 'postgres') {
      const { stdout } = await exec(psqlPath, ['-X', '-q', '-A', '-t', '-F', '\t', '-v', 'ON_ERROR_STOP=1', '-h', socketDir, '-p', String(port), '-U', superuser, '-d', database, '-f', '-'], {
        stdin: sql,
        env: { PGPASSWORD: undefined, PGPASSFILE: join(root, 'no-pgpass'), PGOPTIONS: undefined, PGSERVICE: undefined, PGCLIENTENCODING: 'UTF8', PGAPPNAME: 'backup-pipeline' },
        label: 'psql (scratch cluster)',
        signal,
      });
      return stdout
        .split('\n')
        .filter((l) => l.length > 0)
        .map((l) => l.split('\t'));
    },
    async stop() {
      await halt();
      await removeAll();
      log?.debug({ root }, 'stopped the throwaway cluster and removed its files');
    },
  };
  return cluster;
}
