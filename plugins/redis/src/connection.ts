/**
 * Where the Redis server is and how to log in: from Mastodon's `.env.production` (`REDIS_URL`, or
 * `REDIS_HOST`, `REDIS_PORT`, `REDIS_USER`, `REDIS_PASSWORD`, `REDIS_DB`, as Mastodon's
 * `RedisConfiguration` reads them) or from the stage options. The password is only ever handed to
 * redis-cli through `REDISCLI_AUTH`, never in argv, and is registered as a secret.
 */
import { readFile } from 'node:fs/promises';
import { parseEnvFile, PipelineError, type SecretRegistry } from '@backup-pipeline/core';

export interface RedisConnection {
  host?: string;
  port?: number;
  /** A Unix socket path (instead of host and port). */
  socket?: string;
  user?: string;
  password?: string;
  tls: boolean;
  /** The database Mastodon uses (the snapshot holds every database anyway). */
  db: number;
  /** Where the settings came from, for messages (never the password). */
  origin: string;
  /** With `from: mastodon`: Mastodon's other Redis servers the env file names (`sidekiq`, `cache`). */
  separate?: string[];
}

export interface ConnectionOptions {
  from: 'mastodon' | 'options';
  /** Which of Mastodon's Redis servers (`from: mastodon`): the main one, Sidekiq's, the cache's. */
  instance: 'main' | 'sidekiq' | 'cache';
  envFile: string;
  url?: string;
  host?: string;
  port?: number;
  socket?: string;
  user?: string;
  password?: string;
  passwordFile?: string;
  tls: boolean;
}

const invalid = (where: string, why: string) =>
  new PipelineError('REDIS_CONFIG_INVALID', `${where}: ${why}`, { hint: 'Use redis://[USER:PASSWORD@]HOST:PORT[/DB], rediss://… for TLS, or unix:///PATH/redis.sock.' });

function portOf(value: string | undefined, where: string): number {
  if (value === undefined || value === '') return 6379;
  const port = Number(value);
  if (!Number.isInteger(port) || port < 1 || port > 65535) throw invalid(where, 'the port is not a number between 1 and 65535');
  return port;
}

function dbOf(value: string | undefined | null, where: string): number {
  if (value === undefined || value === null || value === '') return 0;
  const db = Number(value);
  if (!Number.isInteger(db) || db < 0) throw invalid(where, 'the database number is not a non-negative integer');
  return db;
}

/** `redis://user:pass@host:6379/0`, `rediss://…`, `unix:///run/redis/redis.sock?db=1`. Never echoes the URL. */
export function parseRedisUrl(url: string, where: string, secrets?: SecretRegistry): Omit<RedisConnection, 'origin'> {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw invalid(where, 'not a valid URL');
  }
  const dec = (s: string) => {
    try {
      return decodeURIComponent(s);
    } catch {
      return s;
    }
  };
  const password = u.password ? dec(u.password) : undefined;
  secrets?.add(u.password);
  secrets?.add(password);
  const user = u.username ? dec(u.username) : undefined;
  if (u.protocol === 'unix:') {
    if (!u.pathname) throw invalid(where, 'a unix:// URL needs the socket path');
    return { socket: dec(u.pathname), user, password, tls: false, db: dbOf(u.searchParams.get('db'), where) };
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') throw invalid(where, `must start with redis://, rediss:// or unix:// (found ${u.protocol}//)`);
  return {
    host: u.hostname ? dec(u.hostname).replace(/^\[(.*)\]$/, '$1') : 'localhost',
    port: portOf(u.port, where),
    user,
    password,
    tls: u.protocol === 'rediss:',
    db: dbOf(u.pathname.replace(/^\//, '') || u.searchParams.get('db'), where),
  };
}

async function readPrivate(path: string, what: string): Promise<string> {
  try {
    return await readFile(path, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new PipelineError('REDIS_CONFIG_UNREADABLE', `cannot read ${what} ${path}: ${code === 'ENOENT' ? 'it does not exist' : code === 'EACCES' ? 'permission denied' : (code ?? 'error')}`, {
      hint: code === 'EACCES' ? `Run the backup as a user that can read ${path} (for Mastodon: the mastodon user).` : 'Check the path in the stage options.',
    });
  }
}

export async function resolveRedisConnection(
  options: ConnectionOptions,
  ctx: { secrets: SecretRegistry; resolvePath(path: string): string; env?: NodeJS.ProcessEnv },
): Promise<RedisConnection> {
  if (options.from === 'mastodon') {
    const file = ctx.resolvePath(options.envFile);
    const env = ctx.env ?? process.env;
    const vars = parseEnvFile(await readPrivate(file, 'the env file'), file, (name) => env[name]);
    const get = (k: string) => vars.get(k)?.value;
    for (const p of ['', 'SIDEKIQ_', 'CACHE_']) {
      ctx.secrets.add(get(`${p}REDIS_PASSWORD`));
      ctx.secrets.add(get(`${p}REDIS_URL`));
    }
    // Mastodon's RedisConfiguration: SIDEKIQ_REDIS_* and CACHE_REDIS_* name other servers; when
    // none of them is set, Sidekiq and the cache use the main one.
    const prefix = options.instance === 'main' ? '' : `${options.instance.toUpperCase()}_`;
    const own = prefix !== '' && ['URL', 'HOST', 'PORT', 'PASSWORD', 'USER', 'DB'].some((k) => get(`${prefix}REDIS_${k}`));
    const P = own ? `${prefix}REDIS_` : 'REDIS_';
    const separate = (['sidekiq', 'cache'] as const).filter((i) => i !== options.instance && ['URL', 'HOST', 'PORT'].some((k) => get(`${i.toUpperCase()}_REDIS_${k}`)));
    const url = get(`${P}URL`);
    if (url) return { ...parseRedisUrl(url, `${P}URL in ${file}`, ctx.secrets), origin: `${P}URL in ${file}`, separate };
    return {
      separate,
      host: get(`${P}HOST`) || 'localhost',
      port: portOf(get(`${P}PORT`), `${P}PORT in ${file}`),
      user: get(`${P}USER`) || undefined,
      password: get(`${P}PASSWORD`) || undefined,
      tls: false,
      db: dbOf(get(`${P}DB`), `${P}DB in ${file}`),
      origin: file,
    };
  }
  let password = options.password;
  if (options.passwordFile) password = (await readPrivate(ctx.resolvePath(options.passwordFile), 'the password file')).replace(/\r?\n$/, '');
  ctx.secrets.add(password);
  if (options.url) {
    ctx.secrets.add(options.url);
    const parsed = parseRedisUrl(options.url, 'the url option', ctx.secrets);
    return { ...parsed, password: password ?? parsed.password, tls: parsed.tls || options.tls, origin: 'stage options' };
  }
  if (options.socket) return { socket: ctx.resolvePath(options.socket), user: options.user, password, tls: false, db: 0, origin: 'stage options' };
  return { host: options.host ?? 'localhost', port: options.port ?? 6379, user: options.user, password, tls: options.tls, db: 0, origin: 'stage options' };
}

/** redis-cli's connection arguments: no password (that goes in `redisCliEnv`). */
export function redisCliArgs(conn: RedisConnection): string[] {
  const where = conn.socket ? ['-s', conn.socket] : ['-h', conn.host ?? 'localhost', '-p', String(conn.port ?? 6379)];
  return [...where, ...(conn.user ? ['--user', conn.user] : []), ...(conn.tls ? ['--tls'] : []), '--no-auth-warning'];
}

/** The environment that carries the password to redis-cli (REDISCLI_AUTH), empty without one. */
export function redisCliEnv(conn: RedisConnection): Record<string, string | undefined> {
  return { REDISCLI_AUTH: conn.password ?? undefined };
}

export function describeRedis(conn: RedisConnection): string {
  return `${conn.user ? `${conn.user}@` : ''}${conn.socket ?? `${conn.host}:${conn.port}`}${conn.tls ? ' (TLS)' : ''}`;
}
