/**
 * Resolving where and how to connect: from Mastodon's `.env.production`, from explicit options,
 * from libpq environment variables, or from an existing .pgpass. A password ends up only in a
 * private PGPASSFILE in the run's tmpDir and in the secrets registry.
 */
import { readFile, access } from 'node:fs/promises';
import { constants } from 'node:fs';
import { join } from 'node:path';
import { PipelineError, writePgPass, type PgSource, type SecretRegistry } from '@backup-pipeline/core';
import { parseEnvFile } from './env-file.js';

export type CredentialsFrom = 'mastodon' | 'options' | 'env' | 'pgpass';

export interface CredentialsOptions {
  from: CredentialsFrom;
  envFile: string;
  host?: string;
  port?: number;
  database?: string;
  user?: string;
  password?: string;
  passwordFile?: string;
  pgpassFile?: string;
  sslmode?: string;
  checkPrivileges: boolean;
}

export interface ResolvedCredentials {
  source: PgSource;
  /** Where the settings came from, for the plan and messages (no secret). */
  origin: string;
  hasPassword: boolean;
}

export interface ResolveContext {
  secrets: SecretRegistry;
  tmpDir: string;
  resolvePath(path: string): string;
  env?: NodeJS.ProcessEnv;
}

async function readPrivateFile(path: string, what: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new PipelineError('CREDENTIALS_FILE_UNREADABLE', `cannot read ${what} ${path}: ${code === 'ENOENT' ? 'it does not exist' : code === 'EACCES' ? 'permission denied' : code ?? 'error'}`, {
      hint:
        code === 'EACCES'
          ? `Run the backup as a user that can read ${path} (for Mastodon: the mastodon user), or make it readable to this user only.`
          : `Check the path (option ${what === 'the env file' ? 'envFile' : what === 'the password file' ? 'passwordFile' : 'pgpassFile'}).`,
      details: { path, code },
    });
  }
}

/** Parses `postgres://user:pass@host:port/db?sslmode=…&host=/socket/dir`. Never echoes the URL. */
export function parseDatabaseUrl(url: string, secrets?: SecretRegistry): { host: string; port: number; database?: string; user?: string; password?: string; sslmode?: string } {
  let u: URL;
  try {
    // `postgres://user@/db?host=/socket` has an empty host, which WHATWG URLs refuse.
    u = new URL(url.replace(/^(postgres(?:ql)?:\/\/[^/?#]*@)(?=[/?]|$)/, '$1_socket_'));
  } catch {
    throw new PipelineError('CREDENTIALS_INVALID', 'DATABASE_URL is not a valid URL', { hint: 'Use postgresql://USER:PASSWORD@HOST:PORT/DATABASE, with special characters in the password percent-encoded.' });
  }
  if (!/^postgres(ql)?:$/.test(u.protocol)) {
    throw new PipelineError('CREDENTIALS_INVALID', `DATABASE_URL must start with postgresql:// (found ${u.protocol}//)`, { hint: 'Use postgresql://USER:PASSWORD@HOST:PORT/DATABASE.' });
  }
  const dec = (s: string) => {
    try {
      return decodeURIComponent(s);
    } catch {
      return s;
    }
  };
  const password = u.password ? dec(u.password) : undefined;
  secrets?.add(password);
  secrets?.add(u.password);
  const hostParam = u.searchParams.get('host');
  const host = hostParam ?? (u.hostname && u.hostname !== '_socket_' ? dec(u.hostname).replace(/^\[(.*)\]$/, '$1') : '/var/run/postgresql');
  const port = Number(u.searchParams.get('port') ?? (u.port || 5432));
  const database = u.pathname.length > 1 ? dec(u.pathname.slice(1)) : undefined;
  return {
    host,
    port,
    database,
    user: u.username ? dec(u.username) : (u.searchParams.get('user') ?? undefined),
    password,
    sslmode: u.searchParams.get('sslmode') ?? undefined,
  };
}

async function withPassword(
  base: Omit<PgSource, 'passFile'>,
  password: string | undefined,
  ctx: ResolveContext,
): Promise<{ source: PgSource; hasPassword: boolean }> {
  if (!password) return { source: base, hasPassword: false };
  ctx.secrets.add(password);
  const passFile = join(ctx.tmpDir, `pgpass-${base.user.replace(/[^\w.-]/g, '_')}`);
  await writePgPass(passFile, base.user, password);
  return { source: { ...base, passFile }, hasPassword: true };
}

function missing(keys: string[], where: string): PipelineError {
  return new PipelineError('CREDENTIALS_MISSING', `${where} does not set ${keys.join(', ')}`, {
    hint: `Add ${keys.join(' and ')} to ${where}.`,
    details: { missing: keys },
  });
}

function port(value: string | undefined, where: string): number {
  if (value === undefined || value === '') return 5432;
  const p = Number(value);
  if (!Number.isInteger(p) || p < 1 || p > 65535) {
    throw new PipelineError('CREDENTIALS_INVALID', `${where}: the port is not a number between 1 and 65535`, { hint: 'Fix the port.' });
  }
  return p;
}

export async function resolveCredentials(options: CredentialsOptions, ctx: ResolveContext): Promise<ResolvedCredentials> {
  const env = ctx.env ?? process.env;
  switch (options.from) {
    case 'mastodon': {
      const file = ctx.resolvePath(options.envFile);
      const text = await readPrivateFile(file, 'the env file');
      const vars = parseEnvFile(text, file, (name) => env[name]);
      const get = (k: string) => vars.get(k)?.value;
      for (const k of ['DB_PASS', 'DATABASE_URL', 'SECRET_KEY_BASE', 'OTP_SECRET']) ctx.secrets.add(get(k));
      const databaseUrl = get('DATABASE_URL');
      if (databaseUrl) {
        const url = parseDatabaseUrl(databaseUrl, ctx.secrets);
        const base = {
          host: url.host,
          port: url.port,
          database: url.database ?? get('DB_NAME') ?? 'mastodon_production',
          user: url.user ?? 'mastodon',
          ...(url.sslmode ? { sslmode: url.sslmode } : {}),
        };
        return { ...(await withPassword(base, url.password, ctx)), origin: `DATABASE_URL in ${file}` };
      }
      const keys = ['DB_HOST', 'DB_PORT', 'DB_NAME', 'DB_USER', 'DB_PASS'];
      if (!keys.some((k) => vars.has(k))) {
        throw missing(['DB_HOST', 'DB_NAME', 'DB_USER', 'DB_PASS (or DATABASE_URL)'], file);
      }
      const sslmode = get('DB_SSLMODE');
      const base = {
        host: get('DB_HOST') || 'localhost',
        port: port(get('DB_PORT'), `DB_PORT in ${file}`),
        database: get('DB_NAME') || 'mastodon_production',
        user: get('DB_USER') || 'mastodon',
        ...(sslmode ? { sslmode } : {}),
      };
      return { ...(await withPassword(base, get('DB_PASS'), ctx)), origin: file };
    }
    case 'options':
    case 'pgpass': {
      const absent = (['database', 'user'] as const).filter((k) => !options[k]);
      if (absent.length) throw missing(absent, 'the stage options');
      const base = {
        host: options.host ?? 'localhost',
        port: options.port ?? 5432,
        database: options.database!,
        user: options.user!,
        ...(options.sslmode ? { sslmode: options.sslmode } : {}),
      };
      if (options.from === 'pgpass') {
        const passFile = ctx.resolvePath(options.pgpassFile ?? '~/.pgpass');
        await readPrivateFile(passFile, 'the pgpass file');
        return { source: { ...base, passFile }, hasPassword: true, origin: passFile };
      }
      let password = options.password;
      if (options.passwordFile) {
        password = (await readPrivateFile(ctx.resolvePath(options.passwordFile), 'the password file')).replace(/\r?\n$/, '');
      }
      return { ...(await withPassword(base, password, ctx)), origin: 'stage options' };
    }
    case 'env': {
      const absent = ['PGDATABASE', 'PGUSER'].filter((k) => !env[k]);
      if (absent.length) throw missing(absent, 'the environment');
      const base = {
        host: env.PGHOST || '/var/run/postgresql',
        port: port(env.PGPORT, 'PGPORT'),
        database: env.PGDATABASE!,
        user: env.PGUSER!,
        ...(env.PGSSLMODE ? { sslmode: env.PGSSLMODE } : {}),
      };
      if (env.PGPASSWORD) return { ...(await withPassword(base, env.PGPASSWORD, ctx)), origin: 'PG* environment variables' };
      if (env.PGPASSFILE) {
        await access(env.PGPASSFILE, constants.R_OK).catch(() => readPrivateFile(env.PGPASSFILE!, 'the pgpass file'));
        return { source: { ...base, passFile: env.PGPASSFILE }, hasPassword: true, origin: 'PG* environment variables' };
      }
      return { source: base, hasPassword: false, origin: 'PG* environment variables' };
    }
  }
}
