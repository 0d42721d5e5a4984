/**
 * The `redis` stage: a consistent snapshot of Mastodon's Redis (an RDB file) as an artifact.
 *
 * The snapshot is taken with `redis-cli --rdb FILE`: the server forks and streams a point-in-time
 * RDB over the connection (the replication protocol), so this needs no access to the server's own
 * files — the Redis `dir` (`/var/lib/redis`, mode 0750, owned by `redis`) is not readable by the
 * mastodon user, and may be on another host. (`BGSAVE` + waiting for `LASTSAVE` only makes the
 * server write `dump.rdb` into that folder, which would then have to be read from there.)
 *
 * The password goes to redis-cli only through `REDISCLI_AUTH`, never in argv. The RDB is checked
 * with `redis-check-rdb`; `restore --files-to DIR` writes `DIR/dump.rdb`; `verify --restore-test`
 * loads it into a throwaway redis-server (a Unix socket in a private folder) and compares the key
 * counts with those recorded at snapshot time.
 */
import { createReadStream } from 'node:fs';
import { chmod, copyFile, constants, mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  definePlugin,
  hashFile,
  isPipelineError,
  PipelineError,
  recordDrill,
  writeFileAtomic,
  z,
  type Artifact,
  type RestoreContext,
  type RunContext,
} from '@backup-pipeline/core';
import { describeRedis, redisCliArgs, redisCliEnv, resolveRedisConnection, type ConnectionOptions, type RedisConnection } from './connection.js';

export { describeRedis, parseRedisUrl, redisCliArgs, redisCliEnv, resolveRedisConnection, type RedisConnection } from './connection.js';

/** The artifact format this stage writes and restores. */
export const RDB_FORMAT = 'redis-rdb';

export const optionsSchema = z
  .object({
    from: z
      .enum(['mastodon', 'options'])
      .default('mastodon')
      .describe("Where the connection comes from: Mastodon's .env.production (`mastodon`: REDIS_URL, or REDIS_HOST, REDIS_PORT, REDIS_USER, REDIS_PASSWORD) or these options (`options`)."),
    envFile: z.string().min(1).default('~/live/.env.production').describe('Mastodon env file read with `from: mastodon`.'),
    instance: z
      .enum(['main', 'sidekiq', 'cache'])
      .default('main')
      .describe('Which of Mastodon\'s Redis servers (`from: mastodon`): `main` (REDIS_*: feeds, and Sidekiq\'s queues unless SIDEKIQ_REDIS_* is set), `sidekiq` (SIDEKIQ_REDIS_*, else the main one), `cache` (CACHE_REDIS_*). The artifact is named after it unless `name` is set.'),
    url: z.string().min(1).optional().describe('`redis://[USER@]HOST:PORT`, `rediss://…` (TLS) or `unix:///PATH` (`from: options`); give the password with passwordFile, not in the URL.'),
    host: z.string().min(1).optional().describe('Host (`from: options`; default localhost).'),
    port: z.number().int().min(1).max(65535).optional().describe('TCP port (`from: options`; default 6379).'),
    socket: z.string().min(1).optional().describe('Unix socket path instead of host and port (`from: options`).'),
    user: z.string().min(1).optional().describe('ACL user (`from: options`; Redis 6+).'),
    password: z.string().optional().describe('Password (`from: options`); write it as a `${file:PATH}` reference, never inline.'),
    passwordFile: z.string().min(1).optional().describe('File holding the password (`from: options`); a trailing newline is ignored.'),
    tls: z.boolean().default(false).describe('Connect with TLS (`from: options`; a rediss:// URL implies it).'),
    name: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/)
      .optional()
      .describe('File name of the snapshot in the set (default `redis.rdb`, `redis-sidekiq.rdb` or `redis-cache.rdb` after `instance`).'),
    restoreTest: z.boolean().default(false).describe('Also run the restore drill (throwaway redis-server, key counts compared) during every backup, not only with `verify --restore-test`.'),
    loadTimeoutSeconds: z.number().int().min(1).max(86400).default(600).describe('How long the restore drill waits for the throwaway redis-server to load the snapshot.'),
  })
  .strict()
  .superRefine((o, ctx) => {
    if (o.instance !== 'main' && o.from !== 'mastodon') ctx.addIssue({ code: 'custom', path: ['instance'], message: `only used with from: mastodon (from is ${o.from})` });
    for (const key of ['url', 'host', 'port', 'socket', 'user', 'password', 'passwordFile'] as const) {
      if (o[key] !== undefined && o.from !== 'options') ctx.addIssue({ code: 'custom', path: [key], message: `only used with from: options (from is ${o.from})` });
    }
    if (o.password !== undefined && o.passwordFile !== undefined) ctx.addIssue({ code: 'custom', path: ['passwordFile'], message: 'give password or passwordFile, not both' });
    if (o.socket !== undefined && (o.host !== undefined || o.port !== undefined || o.url !== undefined)) ctx.addIssue({ code: 'custom', path: ['socket'], message: 'give socket, or url, or host/port' });
    if (o.url !== undefined && (o.host !== undefined || o.port !== undefined)) ctx.addIssue({ code: 'custom', path: ['url'], message: 'give url or host/port, not both' });
  });

export type RedisOptions = z.output<typeof optionsSchema>;

/** Keys and keys with a TTL, per database (`db0`…), as `INFO keyspace` reports them. */
export type Keyspace = Record<string, { keys: number; expires: number }>;

export function parseKeyspace(info: string): Keyspace {
  const out: Keyspace = {};
  for (const line of info.split(/\r?\n/)) {
    const m = /^(db\d+):keys=(\d+),expires=(\d+)/.exec(line.trim());
    if (m) out[m[1]!] = { keys: Number(m[2]), expires: Number(m[3]) };
  }
  return out;
}

const total = (k: Keyspace) => Object.values(k).reduce((n, d) => n + d.keys, 0);

/** What redis-check-rdb says of a file: whether it is sound, and the keys it read. */
export interface RdbCheck {
  keys: number;
  expires: number;
  alreadyExpired: number;
}

/** Turns what redis-cli printed into one clear error (never with the password in it), or undefined. */
function redisError(text: string, conn: RedisConnection, doing: string): PipelineError | undefined {
  const where = describeRedis(conn);
  if (/WRONGPASS|invalid password|invalid username-password/i.test(text)) {
    return new PipelineError('REDIS_AUTH_FAILED', `Redis at ${where} refused the password (${doing}; settings from ${conn.origin})`, {
      hint: conn.origin.includes('REDIS_URL') || conn.origin.startsWith('/') ? 'Check REDIS_PASSWORD (or the password in REDIS_URL) and REDIS_USER in the env file.' : 'Check password / passwordFile and user in the stage options.',
    });
  }
  if (/NOAUTH/.test(text)) {
    return new PipelineError('REDIS_AUTH_FAILED', `Redis at ${where} needs a password and none was configured (${doing}; settings from ${conn.origin})`, {
      hint: 'Set REDIS_PASSWORD in the env file, or password / passwordFile in the stage options.',
    });
  }
  if (/NOPERM/.test(text)) {
    return new PipelineError('REDIS_PERMISSION_DENIED', `the Redis user ${conn.user ?? 'default'} at ${where} may not run what ${doing} needs`, {
      hint: 'The snapshot needs the INFO, PING and SYNC/PSYNC commands (ACL: +info +ping +sync +psync +replconf). Managed Redis services that disable replication cannot be snapshotted this way.',
    });
  }
  if (/Could not connect|Connection refused|No such file or directory|Name or service not known|Connection reset|timed out/i.test(text)) {
    return new PipelineError('REDIS_UNREACHABLE', `cannot connect to Redis at ${where} (${doing}; settings from ${conn.origin})`, {
      hint: 'Check that redis-server is running and the host, port or socket (REDIS_HOST, REDIS_PORT, REDIS_URL) are right.',
    });
  }
  return undefined;
}

type Ctx = Pick<RunContext, 'exec' | 'secrets' | 'signal'>;

/** Runs redis-cli with the connection's arguments and the password in REDISCLI_AUTH; classifies failures. */
async function redisCli(ctx: Ctx, conn: RedisConnection, args: string[], doing: string): Promise<string> {
  let result;
  try {
    result = await ctx.exec('redis-cli', [...redisCliArgs(conn), ...args], { env: redisCliEnv(conn), label: 'redis-cli' });
  } catch (error) {
    if (isPipelineError(error)) {
      const details = error.details ?? {};
      throw redisError(`${error.message}\n${String(details.stderr ?? '')}`, conn, doing) ?? error;
    }
    throw error;
  }
  // redis-cli prints a refused command's error on stdout and still exits 0.
  const failure = redisError(`${result.stdout}\n${result.stderr}`, conn, doing);
  if (failure) throw failure;
  if (/^(ERR|-ERR|LOADING|MISCONF|READONLY)\b/m.test(result.stdout)) {
    throw new PipelineError('REDIS_FAILED', `Redis at ${describeRedis(conn)} answered an error (${doing}): ${ctx.secrets.mask(result.stdout.trim().split('\n')[0] ?? '')}`, {
      hint: 'See the Redis server log.',
    });
  }
  return result.stdout;
}

/** redis-check-rdb over a file: throws REDIS_RDB_INVALID unless it says the file is sound. */
export async function checkRdb(path: string, ctx: Pick<RunContext, 'exec'>): Promise<RdbCheck> {
  const out = await ctx.exec('redis-check-rdb', [path], { label: 'redis-check-rdb', okExitCodes: [0, 1] });
  const text = `${out.stdout}\n${out.stderr}`;
  if (out.exitCode !== 0 || !/RDB looks OK/.test(text)) {
    const why = text.split('\n').find((l) => /error|corrupt|unexpected|wrong|invalid/i.test(l)) ?? text.trim().split('\n').at(-1) ?? '';
    throw new PipelineError('REDIS_RDB_INVALID', `${path} is not a sound RDB file (redis-check-rdb: ${why.trim().slice(0, 200)})`, { hint: 'Take a new snapshot; do not restore this file.' });
  }
  const num = (re: RegExp) => Number(re.exec(text)?.[1] ?? 0);
  return { keys: num(/(\d+) keys read/), expires: num(/(\d+) expires/), alreadyExpired: num(/(\d+) already expired/) };
}

const isStored = (ctx: RunContext): ctx is RestoreContext => 'request' in ctx && 'stored' in ctx;

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    const t = setTimeout(resolve, ms);
    signal.addEventListener('abort', () => (clearTimeout(t), resolve()), { once: true });
  });

export interface DrillResult {
  keyspace: Keyspace;
  keys: number;
  durationMs: number;
  mismatches: string[];
}

/**
 * The restore drill: restore the artifact into a private throwaway folder (through the `restore`
 * hook, as a person would), start redis-server on a Unix socket there (no TCP port, persistence
 * off), wait for it to load the RDB, read the key counts, stop it and remove everything.
 */
export async function drill(artifact: Artifact, ctx: RunContext, loadTimeoutMs: number): Promise<DrillResult> {
  const started = Date.now();
  // A short path under the system temp folder: a Unix socket path is limited to ~107 bytes.
  const dir = await mkdtemp(join(tmpdir(), 'bp-redis-drill-'));
  const socket = join(dir, 'redis.sock');
  const local: RedisConnection = { socket, tls: false, db: 0, origin: 'the restore drill' };
  let server: ReturnType<RunContext['exec']> | undefined;
  let exited = false;
  try {
    await ctx.restore(artifact, { directory: dir, jobs: 1 });
    server = ctx.exec(
      'redis-server',
      ['--port', '0', '--unixsocket', socket, '--unixsocketperm', '700', '--dir', dir, '--dbfilename', 'dump.rdb', '--save', '', '--appendonly', 'no', '--logfile', join(dir, 'redis.log'), '--daemonize', 'no'],
      { label: 'redis-server (restore drill)', stdout: 'ignore' },
    );
    const settled = server.then(
      () => undefined,
      () => undefined,
    );
    void settled.then(() => (exited = true));
    const deadline = Date.now() + loadTimeoutMs;
    for (;;) {
      if (exited) {
        const log = await readFile(join(dir, 'redis.log'), 'utf8').catch(() => '');
        const why = log.split('\n').filter((l) => /#|error|bad|fatal/i.test(l)).slice(-2).join(' | ');
        throw new PipelineError('REDIS_DRILL_FAILED', `the throwaway redis-server stopped before it loaded ${artifact.name}${why ? `: ${why.slice(0, 300)}` : ''}`, {
          hint: 'The snapshot may need a newer Redis than this host has (RDB versions only load forward), or be damaged.',
        });
      }
      const pong = await ctx.exec('redis-cli', [...redisCliArgs(local), 'PING'], { label: 'redis-cli', okExitCodes: [0, 1] }).catch(() => undefined);
      if (pong?.stdout.trim() === 'PONG') break;
      if (Date.now() > deadline || ctx.signal.aborted) {
        throw new PipelineError('REDIS_DRILL_FAILED', `the throwaway redis-server did not load ${artifact.name} within ${Math.round(loadTimeoutMs / 1000)} s`, { hint: 'Raise loadTimeoutSeconds.' });
      }
      await sleep(50, ctx.signal);
    }
    const keyspace = parseKeyspace(await redisCli(ctx, local, ['INFO', 'keyspace'], 'the restore drill'));
    const keys = total(keyspace);
    const mismatches: string[] = [];
    const rdb = artifact.meta.rdb as RdbCheck | undefined;
    // Keys with a TTL may have expired since the snapshot: they are not loaded, and not missing.
    if (rdb && (keys > rdb.keys - rdb.alreadyExpired || keys < rdb.keys - rdb.alreadyExpired - rdb.expires)) {
      mismatches.push(`the snapshot holds ${rdb.keys - rdb.alreadyExpired} keys (${rdb.expires} with a TTL), the restored server has ${keys}`);
    }
    const recorded = (artifact.meta.keyspace ?? {}) as Keyspace;
    for (const [db, at] of Object.entries(recorded)) {
      const now = keyspace[db]?.keys ?? 0;
      if (at.keys > at.expires && now === 0) mismatches.push(`${db}: ${at.keys} keys at snapshot time, none restored`);
    }
    return { keyspace, keys, durationMs: Date.now() - started, mismatches };
  } finally {
    if (server && !exited) {
      server.kill();
      await server.catch(() => undefined);
    }
    await rm(dir, { recursive: true, force: true });
  }
}

export default definePlugin({
  name: 'redis',
  description: "A consistent snapshot of Mastodon's Redis (redis-cli --rdb, the password in REDISCLI_AUTH), checked with redis-check-rdb, restorable and drilled.",
  options: optionsSchema,
  errors: {
    REDIS_CONFIG_INVALID: 'Fix REDIS_URL / REDIS_PORT in the env file or url / port in the options (redis://[USER:PASSWORD@]HOST:PORT[/DB], rediss://…, unix:///PATH).',
    REDIS_CONFIG_UNREADABLE: 'Run as a user that can read the env file or password file (for Mastodon: the mastodon user), or fix the path.',
    REDIS_AUTH_FAILED: 'Check REDIS_PASSWORD and REDIS_USER (or passwordFile and user); the password itself is never shown.',
    REDIS_PERMISSION_DENIED: 'The snapshot needs PING, INFO and SYNC/PSYNC (ACL: +ping +info +sync +psync +replconf).',
    REDIS_UNREACHABLE: 'Check that redis-server runs and the host, port or socket are right.',
    REDIS_FAILED: 'See the Redis server log.',
    REDIS_SNAPSHOT_FAILED: 'Check the Redis server log (a failed fork, memory) and that replication commands are allowed.',
    REDIS_RDB_INVALID: 'Do not restore this file; take a new snapshot.',
    REDIS_DRILL_FAILED: 'The throwaway redis-server could not load the snapshot: a newer Redis made it, or it is damaged; or raise loadTimeoutSeconds.',
    REDIS_DRILL_MISMATCH: 'The restored key counts differ from the snapshot: do not rely on it; take a new one.',
  },
  apply(hooks, options, { log, resolvePath }) {
    const name = options.name ?? (options.instance === 'main' ? 'redis.rdb' : `redis-${options.instance}.rdb`);
    let conn: RedisConnection | undefined;
    const connection = () => {
      if (!conn) throw new PipelineError('REDIS_CONFIG_INVALID', 'the Redis connection was not resolved', { hint: 'This is a bug: the connect hook of the redis stage did not run.' });
      return conn;
    };

    hooks.connect.tapPromise('redis', async (ctx) => {
      conn = await resolveRedisConnection(options as ConnectionOptions, { secrets: ctx.secrets, resolvePath });
    });

    hooks.preflight.tapPromise('redis', async (ctx) => {
      const c = connection();
      const version = await ctx.exec('redis-cli', ['--version'], { label: 'redis-cli' }).catch((error: unknown) => {
        throw isPipelineError(error) && error.code === 'EXEC_NOT_FOUND'
          ? new PipelineError('EXEC_NOT_FOUND', 'redis-cli is not installed', { hint: 'Install it: apt-get install redis-tools (redis-cli and redis-check-rdb).' })
          : error;
      });
      ctx.tools['redis-cli'] = version.stdout.trim().replace(/^redis-cli\s*/, '');
      const pong = await redisCli(ctx, c, ['PING'], 'the preflight check');
      if (pong.trim() !== 'PONG') throw new PipelineError('REDIS_FAILED', `Redis at ${describeRedis(c)} did not answer PING`, { hint: 'Check the server log.' });
      const server = await redisCli(ctx, c, ['INFO', 'server'], 'the preflight check');
      const v = /redis_version:(\S+)/.exec(server)?.[1];
      if (v) ctx.facts.redisVersion = v;
      if (options.instance === 'main' && c.separate?.includes('sidekiq')) {
        log.warn({ envFile: c.origin }, `Mastodon keeps Sidekiq's queues in another Redis (SIDEKIQ_REDIS_* in ${c.origin}): add a redis stage with instance: sidekiq to snapshot them too`);
      }
      log.info({ redis: describeRedis(c), version: v }, `Redis at ${describeRedis(c)} answers (Redis ${v ?? 'unknown version'}, settings from ${c.origin})`);
    });

    hooks.plan.tapPromise('redis', async (plan) => {
      const c = conn;
      plan.add({
        plugin: 'redis',
        hook: 'produce',
        description: `snapshot Redis${c ? ` at ${describeRedis(c)}` : ''} with redis-cli --rdb into ${name}${c?.password ? ' (password in REDISCLI_AUTH)' : ''}, check it with redis-check-rdb${options.restoreTest ? ', then load it into a throwaway redis-server' : ''}`,
      });
    });

    hooks.produce.tapPromise('redis', async (ctx) => {
      const c = connection();
      const keyspace = parseKeyspace(await redisCli(ctx, c, ['INFO', 'keyspace'], 'reading the key counts'));
      const tmp = join(ctx.tmpDir, `redis-snapshot-${process.pid}.rdb`);
      try {
        await redisCli(ctx, c, ['--rdb', tmp], 'taking the snapshot');
        const size = (await stat(tmp).catch(() => undefined))?.size ?? 0;
        if (size === 0) throw new PipelineError('REDIS_SNAPSHOT_FAILED', `redis-cli --rdb wrote nothing from ${describeRedis(c)}`, { hint: 'Check the Redis server log (a fork that failed, out of memory).' });
        const rdb = await checkRdb(tmp, ctx);
        const target = join(ctx.setDir, name);
        const digest = await writeFileAtomic(target, createReadStream(tmp), { signal: ctx.signal });
        const artifact: Artifact = {
          name,
          path: target,
          kind: 'redis',
          format: RDB_FORMAT,
          compression: 'none',
          bytes: digest.bytes,
          sha256: digest.sha256,
          meta: { server: describeRedis(c), ...(ctx.facts.redisVersion ? { redisVersion: ctx.facts.redisVersion } : {}), db: c.db, keyspace, keys: total(keyspace), rdb },
        };
        ctx.addArtifact(artifact);
        log.info({ artifact: name, bytes: digest.bytes, keys: rdb.keys }, `snapshot of Redis at ${describeRedis(c)}: ${name} (${digest.bytes} bytes, ${rdb.keys} keys)`);
      } catch (error) {
        if (isPipelineError(error) && error.code === 'EXEC_FAILED' && /--rdb/.test(String(error.details?.command ?? ''))) {
          throw new PipelineError('REDIS_SNAPSHOT_FAILED', `redis-cli --rdb failed against ${describeRedis(c)}: ${error.message}`, {
            hint: 'The snapshot uses the replication protocol (SYNC): check the server log, the ACL of the user (+sync +psync +replconf) and free memory for the fork.',
            cause: error,
          });
        }
        throw error;
      } finally {
        await rm(tmp, { force: true });
      }
    });

    // Other stages' streamed artifacts are nothing for this verify tap: say so, so they stay one pass.
    hooks.verifyStream.tapPromise('redis', async (request) => {
      if (request.artifact.format !== RDB_FORMAT) request.claim();
    });
    hooks.verify.tapPromise('redis', async (artifact, ctx) => {
      if (artifact.format !== RDB_FORMAT) return;
      const check = await checkRdb(artifact.path, ctx);
      const recorded = artifact.meta.rdb as RdbCheck | undefined;
      if (recorded && recorded.keys !== check.keys) {
        throw new PipelineError('REDIS_RDB_INVALID', `${artifact.name} holds ${check.keys} keys, the snapshot had ${recorded.keys}`, { hint: 'Do not restore this file; take a new snapshot.' });
      }
      const wanted = isStored(ctx) ? ctx.request.restoreTest === true : options.restoreTest;
      if (!wanted) {
        log.info({ artifact: artifact.name, keys: check.keys }, `verified ${artifact.name}: redis-check-rdb reads ${check.keys} keys`);
        return;
      }
      const result = await drill(artifact, ctx, options.loadTimeoutSeconds * 1000);
      if (result.mismatches.length > 0) {
        throw new PipelineError('REDIS_DRILL_MISMATCH', `${artifact.name} restored with other key counts than its snapshot: ${result.mismatches.join('; ')}`, {
          hint: 'Do not rely on this snapshot; take a new one and check the Redis server.',
          details: { keyspace: result.keyspace },
        });
      }
      const dbs = Object.keys(result.keyspace).length;
      if (isStored(ctx)) recordDrill(artifact, {
        part: artifact.kind,
        bytes: artifact.bytes,
        durationMs: result.durationMs,
        detail: `loaded by a throwaway redis-server: ${result.keys} keys in ${dbs} database${dbs === 1 ? '' : 's'}, as at snapshot time`,
      });
      artifact.meta.restoreDrill = { keyspace: result.keyspace };
      log.info({ artifact: artifact.name, keys: result.keys, durationMs: result.durationMs }, `restore drill of ${artifact.name}: ${result.keys} keys loaded in ${result.durationMs} ms, as at snapshot time`);
    });

    // `pipeline restore SET --files-to DIR`: DIR/dump.rdb, for a person to put in Redis's `dir`
    // (see the README: stop Redis, replace dump.rdb, fix its owner, start). Never over a file.
    hooks.restore.for(RDB_FORMAT).tapPromise('redis', async (artifact, target, ctx) => {
      if (!target.directory) return undefined;
      const started = Date.now();
      const plain = artifact.compression === 'none' ? artifact : await ctx.decompress(artifact);
      const to = join(target.directory, 'dump.rdb');
      await copyFile(plain.path, to, constants.COPYFILE_EXCL).catch((error: unknown) => {
        throw new PipelineError('RESTORE_TARGET_NOT_EMPTY', `${to} already exists; not overwritten (${(error as NodeJS.ErrnoException).code})`, { hint: 'Restore into an empty folder.' });
      });
      await chmod(to, 0o600);
      const got = await hashFile(to, ctx.signal);
      if (got.sha256 !== plain.sha256) {
        await rm(to, { force: true });
        throw new PipelineError('CHECKSUM_MISMATCH', `${to} does not match ${artifact.name} after copying`, { hint: 'Check the disk of the restore folder.' });
      }
      log.info({ into: to }, `wrote ${to}: stop Redis, put it in Redis's dir (redis-cli CONFIG GET dir), chown redis:redis, start Redis (see the redis stage's README)`);
      return { artifact: artifact.name, into: target.directory, files: ['dump.rdb'], mismatches: [], durationMs: Date.now() - started };
    });
  },
});
