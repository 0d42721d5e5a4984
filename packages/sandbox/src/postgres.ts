/**
 * A throwaway PostgreSQL cluster for tests and benchmarks: `initdb` into a temp folder, a free TCP
 * port on 127.0.0.1 only, a private socket folder, scram-sha-256 password auth over TCP and trust
 * over the socket for the harness's own superuser. Runs as the `postgres` user when we are root
 * (initdb refuses root). Passwords never travel in argv: SQL goes to psql on stdin, and the
 * harness's admin connects over its private socket.
 */
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, rmSync } from 'node:fs';
import { chmod, chown, mkdir, mkdtemp, readdir, rm, writeFile, appendFile } from 'node:fs/promises';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { exec, parsePgVersion, quoteIdent, quoteLiteral, writePgPass, type PgSource } from '@backup-pipeline/core';

export interface StartPostgresOptions {
  /** Folder with initdb/pg_ctl/postgres/psql (default: newest /usr/lib/postgresql/N/bin, else `pg_config --bindir`). */
  bindir?: string;
  /** Name of the harness's superuser (default `bp_admin`). */
  superuser?: string;
  /** Extra `postgresql.conf` lines. */
  settings?: Record<string, string | number | boolean>;
}

export interface CreateRoleOptions {
  login?: boolean;
  superuser?: boolean;
  createdb?: boolean;
  /** Roles granted to the new role, e.g. `['pg_read_all_data']`. */
  inRoles?: string[];
  /** Databases whose owner the role becomes (and whose public schema it owns). */
  ownerOf?: string[];
}

export interface PostgresServer {
  readonly host: '127.0.0.1';
  readonly port: number;
  readonly superuser: string;
  readonly superPassword: string;
  readonly bindir: string;
  /** `15.8` */
  readonly version: string;
  readonly major: number;
  /** The private Unix socket folder (the superuser connects there with trust auth). */
  readonly socketDir: string;
  /** Runs SQL (any number of statements) as the superuser; returns rows of tab-separated fields. */
  psql(sql: string, db?: string): Promise<string[][]>;
  createDatabase(name: string, options?: { owner?: string }): Promise<void>;
  createRole(name: string, password: string | undefined, options?: CreateRoleOptions): Promise<void>;
  /** A PgSource for `user` on `db` over TCP; `passFile` is a PGPASSFILE (see `writePassFile`). */
  source(db: string, user: string, passFile?: string): PgSource;
  /** Writes a private (0600) PGPASSFILE for `user` and returns its path. */
  writePassFile(user: string, password: string, dir?: string): Promise<string>;
  /** Kills the server without removing its data (fault tests): `pg_ctl stop -m immediate`. */
  halt(): Promise<void>;
  /** Starts the server again after `halt()`, on the same port. */
  restart(): Promise<void>;
  readonly running: boolean;
  /** Stops the server and removes every file. Safe to call twice. */
  stop(): Promise<void>;
}

const live = new Set<{ bindir: string; dataDir: string; root: string; asPostgres: boolean }>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.on('exit', () => {
    for (const c of live) {
      const args = [join(c.bindir, 'pg_ctl'), 'stop', '-D', c.dataDir, '-m', 'immediate', '-w'];
      if (c.asPostgres) spawnSync('runuser', ['-u', 'postgres', '--', ...args], { stdio: 'ignore', cwd: c.root });
      else spawnSync(args[0]!, args.slice(1), { stdio: 'ignore' });
      try {
        rmSync(c.root, { recursive: true, force: true });
      } catch {
        /* best effort */
      }
    }
  });
}

/**
 * A detached watchdog that stops the cluster and removes its files when this process dies in a
 * way that skips 'exit' handlers (SIGKILL, SIGTERM from a test runner's timeout).
 */
function startReaper(c: { bindir: string; dataDir: string; root: string; asPostgres: boolean }): void {
  const stop = `${c.asPostgres ? 'runuser -u postgres -- ' : ''}"$BP_BINDIR/pg_ctl" stop -D "$BP_DATA" -m immediate -w`;
  const script = `while kill -0 "$BP_PARENT" 2>/dev/null && [ -d "$BP_ROOT" ]; do sleep 1; done; if [ -d "$BP_ROOT" ]; then cd /; ${stop} >/dev/null 2>&1; rm -rf "$BP_ROOT"; fi`;
  const child = spawn('sh', ['-c', script], {
    detached: true,
    stdio: 'ignore',
    cwd: '/',
    env: { PATH: process.env.PATH ?? '/usr/sbin:/usr/bin:/sbin:/bin', BP_PARENT: String(process.pid), BP_ROOT: c.root, BP_DATA: c.dataDir, BP_BINDIR: c.bindir },
  });
  child.unref();
}

/** Newest `/usr/lib/postgresql/N/bin` holding initdb, else `pg_config --bindir`. */
export async function findServerBinDir(): Promise<string> {
  const versions = (await readdir('/usr/lib/postgresql').catch(() => [] as string[])).filter((d) => /^\d+$/.test(d)).sort((a, b) => Number(b) - Number(a));
  for (const v of versions) {
    const dir = `/usr/lib/postgresql/${v}/bin`;
    if (existsSync(join(dir, 'initdb'))) return dir;
  }
  const out = await exec('pg_config', ['--bindir']).catch(() => undefined);
  const dir = out?.stdout.trim();
  if (dir && existsSync(join(dir, 'initdb'))) return dir;
  throw new Error('PostgreSQL server binaries (initdb) not found: install postgresql');
}

async function pickFreePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

export async function startPostgres(options: StartPostgresOptions = {}): Promise<PostgresServer> {
  const bindir = options.bindir ?? (await findServerBinDir());
  const asPostgres = typeof process.getuid === 'function' && process.getuid() === 0;
  const superuser = options.superuser ?? 'bp_admin';
  const superPassword = randomBytes(18).toString('base64url');
  const versionOut = await exec(join(bindir, 'postgres'), ['--version']);
  const parsed = parsePgVersion(versionOut.stdout);
  if (!parsed) throw new Error(`cannot read the PostgreSQL version from: ${versionOut.stdout}`);

  // /tmp/bp-pg-XXXX (0755, so the postgres user can reach it) holding data/, sock/ and private files.
  const root = await mkdtemp('/tmp/bp-pg-');
  await chmod(root, 0o755);
  const dataDir = join(root, 'data');
  const socketDir = join(root, 'sock');
  const privDir = join(root, 'priv');
  await mkdir(socketDir, { mode: 0o700 });
  await mkdir(privDir, { mode: 0o700 });
  let uid = -1;
  let gid = -1;
  if (asPostgres) {
    const id = spawnSync('id', ['-u', 'postgres'], { encoding: 'utf8' });
    const g = spawnSync('id', ['-g', 'postgres'], { encoding: 'utf8' });
    uid = Number(id.stdout.trim());
    gid = Number(g.stdout.trim());
    if (!Number.isInteger(uid) || id.status !== 0) throw new Error('running as root but there is no `postgres` user to run initdb as');
    await chown(root, uid, gid);
    await chown(socketDir, uid, gid);
  }
  const record = { bindir, dataDir, root, asPostgres };
  live.add(record);
  installExitHook();
  startReaper(record);

  const run = (program: string, args: string[], extra: { stdin?: string } = {}) => {
    const file = join(bindir, program);
    return asPostgres
      ? exec('runuser', ['-u', 'postgres', '--', file, ...args], { cwd: root, label: program, stdin: extra.stdin, env: { LC_ALL: 'C.UTF-8', LANG: 'C.UTF-8' } })
      : exec(file, args, { cwd: root, label: program, stdin: extra.stdin, env: { LC_ALL: 'C.UTF-8', LANG: 'C.UTF-8' } });
  };

  const pwFile = join(root, 'pwfile');
  let port = 0;
  let running = false;
  try {
    await writeFile(pwFile, superPassword + '\n', { mode: 0o600 });
    if (asPostgres) await chown(pwFile, uid, gid);
    await run('initdb', ['-D', dataDir, '-U', superuser, `--pwfile=${pwFile}`, '-E', 'UTF8', '--locale=C.UTF-8', '-N', '-A', 'scram-sha-256']);
    await rm(pwFile, { force: true });
    await writeFile(
      join(dataDir, 'pg_hba.conf'),
      [
        '# backup-pipeline test harness',
        `local all ${superuser} trust`,
        'local all all scram-sha-256',
        'host all all 127.0.0.1/32 scram-sha-256',
        '',
      ].join('\n'),
    );
    const settings: Record<string, string | number | boolean> = {
      listen_addresses: '127.0.0.1',
      unix_socket_directories: socketDir,
      password_encryption: 'scram-sha-256',
      fsync: false,
      synchronous_commit: false,
      full_page_writes: false,
      max_connections: 60,
      shared_buffers: '128MB',
      max_wal_size: '2GB',
      logging_collector: false,
      ...options.settings,
    };
    const conf = Object.entries(settings)
      .map(([k, v]) => `${k} = ${typeof v === 'boolean' ? (v ? 'on' : 'off') : typeof v === 'number' ? v : quoteLiteral(v)}`)
      .join('\n');
    await appendFile(join(dataDir, 'postgresql.conf'), `\n# harness\n${conf}\n`);
    if (asPostgres) {
      await chown(join(dataDir, 'pg_hba.conf'), uid, gid);
    }
  } catch (error) {
    live.delete(record);
    await rm(root, { recursive: true, force: true });
    throw error;
  }

  const startServer = async () => {
    let lastError: unknown;
    for (let attempt = 0; attempt < 5; attempt++) {
      if (!port || attempt > 0) port = await pickFreePort();
      try {
        await run('pg_ctl', ['start', '-D', dataDir, '-w', '-t', '60', '-l', join(root, 'server.log'), '-o', `-p ${port}`]);
        running = true;
        return;
      } catch (error) {
        lastError = error;
      }
    }
    throw lastError;
  };
  const restartServer = async () => {
    // Same port as before (tests keep PgSource objects).
    await run('pg_ctl', ['start', '-D', dataDir, '-w', '-t', '60', '-l', join(root, 'server.log'), '-o', `-p ${port}`]);
    running = true;
  };
  const haltServer = async () => {
    if (!running) return;
    // synchronous_commit=off would lose the last commits in an immediate stop: flush them first.
    if (!stopping) await psql('CHECKPOINT;').catch(() => undefined);
    await run('pg_ctl', ['stop', '-D', dataDir, '-m', 'immediate', '-w']).catch(() => undefined);
    running = false;
  };

  try {
    await startServer();
  } catch (error) {
    live.delete(record);
    await rm(root, { recursive: true, force: true });
    throw error;
  }

  const psqlPath = join(bindir, 'psql');
  const psql = async (sql: string, db = 'postgres'): Promise<string[][]> => {
    const { stdout } = await exec(psqlPath, ['-X', '-q', '-A', '-t', '-F', '\t', '-v', 'ON_ERROR_STOP=1', '-h', socketDir, '-p', String(port), '-U', superuser, '-d', db, '-f', '-'], {
      stdin: sql,
      env: { PGPASSWORD: undefined, PGPASSFILE: join(privDir, 'no-pgpass'), PGCLIENTENCODING: 'UTF8', PGOPTIONS: undefined },
      label: 'psql',
    });
    return stdout
      .split('\n')
      .filter((l) => l.length > 0)
      .map((l) => l.split('\t'));
  };

  let passCounter = 0;
  let stopped = false;
  let stopping = false;
  const server: PostgresServer = {
    host: '127.0.0.1',
    get port() {
      return port;
    },
    superuser,
    superPassword,
    bindir,
    version: parsed.version,
    major: parsed.major,
    socketDir,
    psql,
    async createDatabase(name, opts = {}) {
      await psql(`CREATE DATABASE ${quoteIdent(name)}${opts.owner ? ` OWNER ${quoteIdent(opts.owner)}` : ''} TEMPLATE template0 ENCODING 'UTF8';`);
      if (opts.owner) await psql(`ALTER SCHEMA public OWNER TO ${quoteIdent(opts.owner)};`, name);
    },
    async createRole(name, password, opts = {}) {
      const attrs = [
        opts.login === false ? 'NOLOGIN' : 'LOGIN',
        opts.superuser ? 'SUPERUSER' : 'NOSUPERUSER',
        opts.createdb ? 'CREATEDB' : 'NOCREATEDB',
        password === undefined ? '' : `PASSWORD ${quoteLiteral(password)}`,
      ].filter(Boolean);
      let sql = `SET log_statement = 'none';\nCREATE ROLE ${quoteIdent(name)} ${attrs.join(' ')};\n`;
      for (const r of opts.inRoles ?? []) sql += `GRANT ${quoteIdent(r)} TO ${quoteIdent(name)};\n`;
      for (const db of opts.ownerOf ?? []) sql += `ALTER DATABASE ${quoteIdent(db)} OWNER TO ${quoteIdent(name)};\n`;
      await psql(sql);
      for (const db of opts.ownerOf ?? []) await psql(`ALTER SCHEMA public OWNER TO ${quoteIdent(name)};`, db);
    },
    source(db, user, passFile) {
      return { host: '127.0.0.1', port, database: db, user, ...(passFile ? { passFile } : {}) };
    },
    async writePassFile(user, password, dir = privDir) {
      const path = join(dir, `pgpass-${++passCounter}-${randomBytes(4).toString('hex')}`);
      await writePgPass(path, user, password);
      return path;
    },
    halt: haltServer,
    restart: restartServer,
    get running() {
      return running;
    },
    async stop() {
      if (stopped) return;
      stopped = true;
      stopping = true;
      await haltServer();
      live.delete(record);
      await rm(root, { recursive: true, force: true });
    },
  };
  return server;
}
