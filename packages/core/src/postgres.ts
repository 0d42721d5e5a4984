/**
 * PostgreSQL helpers shared by the credentials, dump, verify and restore code: how a connection is
 * described, how a password reaches libpq (a private PGPASSFILE, never argv or environment), which
 * binaries to use, and a psql query runner.
 */
import { readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PipelineError } from './errors.js';
import { exec, type ExecOptions } from './exec.js';

export interface PgSource {
  /** Host name, IP address, or a Unix socket directory (starts with `/`). */
  host: string;
  port: number;
  database: string;
  user: string;
  /** A PGPASSFILE holding the password, when there is one. */
  passFile?: string;
  sslmode?: string;
}

/** `mastodon@/var/run/postgresql:5432/mastodon_production` — for messages; holds no secret. */
export function describePg(source: PgSource): string {
  return `${source.user}@${source.host}:${source.port}/${source.database}`;
}

/** libpq environment for a child process. The password travels only inside PGPASSFILE. */
export function pgEnv(source: PgSource, database = source.database): Record<string, string | undefined> {
  return {
    PGHOST: source.host,
    PGPORT: String(source.port),
    PGDATABASE: database,
    PGUSER: source.user,
    PGPASSFILE: source.passFile,
    PGSSLMODE: source.sslmode,
    PGPASSWORD: undefined,
    PGSERVICE: undefined,
    PGCONNECT_TIMEOUT: '10',
    PGAPPNAME: 'backup-pipeline',
  };
}

/** Escapes one field of a .pgpass line: `\` and `:` are backslash-escaped (libpq rules). */
export function escapePgPassField(value: string): string {
  return value.replace(/\\/g, '\\\\').replace(/:/g, '\\:');
}

/**
 * Writes a .pgpass file (mode 0600) with one line matching any host, port and database for `user`,
 * so the same file also serves restores into other databases of that server.
 */
export async function writePgPass(path: string, user: string, password: string): Promise<void> {
  if (/[\r\n]/.test(password)) {
    throw new PipelineError('CREDENTIALS_INVALID', 'the database password contains a line break, which libpq cannot read from a password file', {
      hint: 'Change the password to one without line breaks.',
    });
  }
  await writeFile(path, `*:*:*:${escapePgPassField(user)}:${escapePgPassField(password)}\n`, { mode: 0o600, flag: 'w' });
}

export interface PgBinary {
  path: string;
  version: string;
  major: number;
}

export function parsePgVersion(text: string): { version: string; major: number } | undefined {
  const m = /(\d+)(?:\.(\d+))?/.exec(text.replace(/^[^0-9]*/, ''));
  if (!m) return undefined;
  return { version: m[2] ? `${m[1]}.${m[2]}` : m[1]!, major: Number(m[1]) };
}

/** Folders that may hold PostgreSQL client binaries, newest major first. */
export async function pgBinDirs(extra?: string): Promise<string[]> {
  const dirs: string[] = [];
  if (extra) dirs.push(extra);
  if (process.env.PG_BINDIR) dirs.push(process.env.PG_BINDIR);
  const versions = await readdir('/usr/lib/postgresql').catch(() => [] as string[]);
  for (const v of versions.filter((d) => /^\d+$/.test(d)).sort((a, b) => Number(b) - Number(a))) {
    dirs.push(`/usr/lib/postgresql/${v}/bin`);
  }
  for (const p of (process.env.PATH ?? '').split(':')) if (p) dirs.push(p);
  return [...new Set(dirs)];
}

/**
 * Finds `name` (pg_dump, pg_restore, psql…) with a major version of at least `minMajor`.
 * pg_dump refuses servers newer than itself, so the dump tools must match or exceed the server.
 */
export async function findPgBinary(name: string, options: { minMajor?: number; binDir?: string } = {}): Promise<PgBinary> {
  const seen: string[] = [];
  for (const dir of await pgBinDirs(options.binDir)) {
    const path = join(dir, name);
    const out = await exec(path, ['--version'], { label: name }).catch(() => undefined);
    if (!out) continue;
    const parsed = parsePgVersion(out.stdout);
    if (!parsed) continue;
    seen.push(`${path} (${parsed.version})`);
    if (parsed.major >= (options.minMajor ?? 0)) return { path, ...parsed };
  }
  if (seen.length === 0) {
    throw new PipelineError('EXEC_NOT_FOUND', `${name} was not found in ${options.binDir ?? 'PATH or /usr/lib/postgresql/*/bin'}`, {
      hint: 'Install the PostgreSQL client tools: apt-get install postgresql-client (or postgresql-client-<major>).',
    });
  }
  throw new PipelineError('PG_VERSION_MISMATCH', `the server runs PostgreSQL ${options.minMajor} but the newest ${name} found is older: ${seen.join(', ')}`, {
    hint: `Install postgresql-client-${options.minMajor} (or newer), or set binDir to its bin folder; ${name} cannot handle a newer server.`,
  });
}

export interface PsqlOptions extends Pick<ExecOptions, 'signal' | 'secrets'> {
  database?: string;
  psqlPath?: string;
}

/** Runs SQL with psql and returns rows of tab-separated fields. */
export async function psql(source: PgSource, sql: string, options: PsqlOptions = {}): Promise<string[][]> {
  const psqlPath = options.psqlPath ?? (await findPgBinary('psql')).path;
  const { stdout } = await exec(psqlPath, ['-X', '-q', '-A', '-t', '-F', '\t', '-v', 'ON_ERROR_STOP=1', '-c', sql], {
    env: pgEnv(source, options.database),
    signal: options.signal,
    secrets: options.secrets,
    label: 'psql',
  });
  return stdout
    .split('\n')
    .filter((line) => line.length > 0)
    .map((line) => line.split('\t'));
}

/** Quotes an SQL identifier. */
export function quoteIdent(name: string): string {
  return `"${name.replace(/"/g, '""')}"`;
}

/** Quotes an SQL string literal. */
export function quoteLiteral(value: string): string {
  return `'${value.replace(/'/g, "''")}'`;
}

/**
 * Recognises libpq's connection failures in an error from psql, pg_dump or pg_restore and turns
 * them into a PipelineError with a stable code and a hint: CREDENTIALS_REJECTED,
 * SOURCE_UNREACHABLE, DATABASE_NOT_FOUND or INSUFFICIENT_PRIVILEGE. Returns undefined otherwise.
 * The text it reads is libpq's stderr, which never holds the password.
 */
export function pgConnectionError(error: unknown, source: PgSource): PipelineError | undefined {
  const e = error as { message?: string; details?: { stderr?: unknown } } | undefined;
  const text = `${typeof e?.details?.stderr === 'string' ? e.details.stderr : ''}\n${e?.message ?? ''}`;
  const where = describePg(source);
  const cause = error;
  if (/password authentication failed|no password supplied|fe_sendauth|SCRAM authentication|authentication failed for user|role ".*" does not exist/i.test(text)) {
    const peer = /Peer authentication failed|Ident authentication failed/i.test(text);
    return new PipelineError('CREDENTIALS_REJECTED', `the server rejected the credentials for ${where}`, {
      cause,
      hint: /no password supplied/i.test(text)
        ? 'The server wants a password and none was configured: set DB_PASS (or the password option / a .pgpass entry).'
        : 'Check the user name and password (DB_USER / DB_PASS); the password is case-sensitive and must match the server exactly.',
      details: { host: source.host, port: source.port, database: source.database, user: source.user, peer },
    });
  }
  if (/Peer authentication failed|Ident authentication failed/i.test(text)) {
    return new PipelineError('CREDENTIALS_REJECTED', `peer authentication failed for ${where}`, {
      cause,
      hint: `Run the backup as the Unix user "${source.user}" (e.g. sudo -u ${source.user}), or connect over TCP with a password.`,
    });
  }
  if (/database ".*" does not exist/i.test(text)) {
    return new PipelineError('DATABASE_NOT_FOUND', `database "${source.database}" does not exist on ${source.host}:${source.port}`, {
      cause,
      hint: 'Check the database name (DB_NAME); `psql -l` lists the databases of the server.',
    });
  }
  if (/connection to server[^\n]*failed|could not connect to server|connection refused|could not translate host name|timeout expired|Connection timed out|server closed the connection unexpectedly|Network is unreachable|the database system is (starting up|shutting down)/i.test(text)) {
    return new PipelineError('SOURCE_UNREACHABLE', `cannot reach the PostgreSQL server at ${source.host}:${source.port}`, {
      cause,
      hint: 'Check that PostgreSQL is running (systemctl status postgresql) and that DB_HOST / DB_PORT point at it.',
    });
  }
  if (/permission denied/i.test(text)) {
    return new PipelineError('INSUFFICIENT_PRIVILEGE', `${source.user} lacks a privilege on ${where}: ${text.match(/permission denied[^\n]*/i)?.[0] ?? ''}`, {
      cause,
      hint: `Grant read access: GRANT pg_read_all_data TO ${quoteIdent(source.user)}; (PostgreSQL 14 or newer), or run as the database owner.`,
    });
  }
  return undefined;
}
