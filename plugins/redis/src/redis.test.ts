/**
 * The redis stage against a real redis-server on 127.0.0.1 with a password (started by the test):
 * snapshot → redis-check-rdb → `verify --restore-test` (a throwaway redis-server loads it) →
 * `restore --files-to`; a wrong password and a server that is down give one clear error each,
 * never with the password in it.
 */
import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createLogger, hashFile, isPipelineError, resolveConfig, Runner, SecretRegistry, type PipelineError } from '@backup-pipeline/core';
import { dotenvQuote, startRedis, type RedisServer } from '@backup-pipeline/testing';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { parseKeyspace, parseRedisUrl, redisCliArgs, redisCliEnv } from './index.js';

const here = dirname(fileURLToPath(import.meta.url));
const pluginEntry = resolve(here, '../dist/index.js');
const tmpRoot = resolve(here, '../../../.vitest-tmp');
const PASSWORD = 'rédis pass$word-7f3a9c';

let redis: RedisServer;
let dir: string;

beforeAll(async () => {
  redis = await startRedis({ password: PASSWORD });
  // 120 keys in db0 (20 of them with a long TTL), 5 in db3: what a Mastodon Redis has, in small.
  const set = ['MSET', ...Array.from({ length: 100 }, (_, i) => [`feed:home:${i}`, `status-${i}`]).flat()];
  await redis.cli(set);
  for (let i = 0; i < 20; i++) await redis.cli(['SET', `cache:${i}`, 'x'.repeat(100), 'EX', '86400']);
  for (let i = 0; i < 5; i++) await redis.cli(['-n', '3', 'RPUSH', `queue:${i}`, 'job-a', 'job-b']);
}, 60_000);
afterAll(() => redis?.stop());

beforeEach(async () => {
  await mkdir(tmpRoot, { recursive: true });
  dir = await mkdtemp(join(tmpRoot, 'redis-'));
  return () => rm(dir, { recursive: true, force: true });
});

async function runnerFor(env: string, stage: Record<string, unknown> = {}) {
  const envFile = join(dir, '.env.production');
  await writeFile(envFile, env, { mode: 0o600 });
  const config = await resolveConfig(join(dir, 'pipeline.config.json'), {
    workDir: join(dir, 'work'),
    pipelines: { nightly: { source: 'mastodon', stages: [{ use: pluginEntry, envFile, ...stage }] } },
  });
  const lines: string[] = [];
  const log = await createLogger({ secrets: config.secrets, level: 'debug', format: 'json', write: (l) => void lines.push(l) });
  return { runner: new Runner(config, log), lines, workDir: join(dir, 'work') };
}

const envOf = (port: number, password = PASSWORD) => `LOCAL_DOMAIN=example.test\nREDIS_HOST=127.0.0.1\nREDIS_PORT=${port}\nREDIS_PASSWORD=${dotenvQuote(password)}\n`;

const failure = (p: Promise<unknown>) => p.then(() => expect.unreachable('it should fail'), (e: unknown) => (isPipelineError(e) ? e : expect.unreachable(String(e))) as PipelineError);

const drillDirs = async () => (await readdir(tmpdir())).filter((n) => n.startsWith('bp-redis-drill-'));

describe('redis stage (real redis-server, password from .env.production)', () => {
  it('snapshots with redis-cli --rdb (0600, checked), drills it in a throwaway server, restores dump.rdb into a folder', async () => {
    const { runner, lines, workDir } = await runnerFor(envOf(redis.port));
    const { summary, manifest } = await runner.run('nightly');
    const entry = manifest!.artifacts.find((a) => a.name === 'redis.rdb')!;
    expect(entry).toMatchObject({ kind: 'redis', format: 'redis-rdb', compression: 'none' });
    expect(entry.meta).toMatchObject({ keyspace: { db0: { keys: 120, expires: 20 }, db3: { keys: 5, expires: 0 } }, keys: 125, rdb: { keys: 125, expires: 20 } });
    const file = join(workDir, summary.setId, 'redis.rdb');
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect(execFileSync('redis-check-rdb', [file], { encoding: 'utf8' })).toContain('RDB looks OK');
    expect(manifest!.tools['redis-cli']).toMatch(/^\d+\.\d+/);

    const before = await drillDirs();
    const verified = await runner.verifyStored('nightly', { set: 'latest', restoreTest: true });
    const drill = verified.artifacts.find((a) => a.name === 'redis.rdb')!.meta.drill as { part: string; bytes: number; durationMs: number; detail: string };
    expect(drill).toMatchObject({ part: 'redis', bytes: entry.bytes });
    expect(drill.durationMs).toBeGreaterThan(0);
    expect(drill.detail).toContain('125 keys in 2 databases');
    // The throwaway server and its folder are gone.
    expect((await drillDirs()).filter((d) => !before.includes(d))).toEqual([]);

    const out = join(dir, 'restored');
    const restored = await runner.restore('nightly', { set: 'latest', filesTo: out });
    expect(restored.reports.map((r) => r.files)).toEqual([['dump.rdb']]);
    expect((await stat(join(out, 'dump.rdb'))).mode & 0o777).toBe(0o600);
    expect((await hashFile(join(out, 'dump.rdb'))).sha256).toBe(entry.sha256);
    // Never over an existing file.
    const again = await failure(runner.restore('nightly', { set: 'latest', filesTo: out }));
    expect(again.code).toBe('RESTORE_TARGET_NOT_EMPTY');

    const all = lines.join('\n');
    expect(all).not.toContain(PASSWORD);
    expect(all).toContain(`snapshot of Redis at 127.0.0.1:${redis.port}: redis.rdb`);
  }, 120_000);

  it('the password reaches redis-cli only in REDISCLI_AUTH, never in its argv (a recording redis-cli on PATH)', async () => {
    const bin = join(dir, 'bin');
    const record = join(dir, 'argv.log');
    await mkdir(bin);
    await writeFile(join(bin, 'redis-cli'), `#!/bin/sh\nprintf 'argv: %s\\n' "$*" >> '${record}'\n[ -n "$REDISCLI_AUTH" ] && echo 'REDISCLI_AUTH set' >> '${record}'\nexec ${execFileSync('sh', ['-c', 'command -v redis-cli'], { encoding: 'utf8' }).trim()} "$@"\n`, { mode: 0o755 });
    const path = process.env.PATH;
    process.env.PATH = `${bin}:${path}`;
    try {
      const { runner } = await runnerFor(envOf(redis.port));
      await runner.run('nightly');
    } finally {
      process.env.PATH = path;
    }
    const seen = await readFile(record, 'utf8');
    expect(seen).toMatch(/^argv: -h 127\.0\.0\.1 -p \d+ --no-auth-warning --rdb /m);
    expect(seen).toContain('REDISCLI_AUTH set');
    expect(seen).not.toContain(PASSWORD);
    expect(seen).not.toContain('-a ');
  }, 60_000);

  it('the drill compares with the snapshot: a set whose recorded key counts differ fails REDIS_DRILL_MISMATCH', async () => {
    const { runner, workDir } = await runnerFor(envOf(redis.port));
    const { summary } = await runner.run('nightly');
    // Another server's snapshot with fewer keys, put in place of this one (manifest fixed up to match its checksum).
    const other = await startRedis({ password: 'other-server' });
    try {
      await other.cli(['SET', 'only', 'one']);
      const file = join(workDir, summary.setId, 'redis.rdb');
      execFileSync('redis-cli', ['-h', '127.0.0.1', '-p', String(other.port), '--no-auth-warning', '--rdb', file], { env: { ...process.env, REDISCLI_AUTH: 'other-server' }, stdio: 'ignore' });
      const digest = await hashFile(file);
      const manifestFile = join(workDir, summary.setId, 'manifest.json');
      const manifest = JSON.parse(await readFile(manifestFile, 'utf8')) as { artifacts: Array<{ name: string; bytes: number; sha256: string; meta: { rdb: { keys: number } } }> };
      const entry = manifest.artifacts.find((a) => a.name === 'redis.rdb')!;
      Object.assign(entry, digest);
      entry.meta.rdb.keys = 1; // what redis-check-rdb reads of the file: the mismatch is in the per-db counts
      await writeFile(manifestFile, JSON.stringify(manifest, null, 2));
      const error = await failure(runner.verifyStored('nightly', { set: summary.setId, restoreTest: true }));
      expect(error.code).toBe('REDIS_DRILL_MISMATCH');
      expect(error.message).toContain('db3: 5 keys at snapshot time, none restored');
    } finally {
      await other.stop();
    }
  }, 120_000);

  it('a wrong password: one REDIS_AUTH_FAILED error before anything is written, without the password', async () => {
    const wrong = 'wrong-pässword-91b2';
    const { runner, lines, workDir } = await runnerFor(envOf(redis.port, wrong));
    const error = await failure(runner.run('nightly'));
    expect(error.code).toBe('REDIS_AUTH_FAILED');
    expect(error.hook).toBe('preflight');
    expect(error.message).toContain(`Redis at 127.0.0.1:${redis.port} refused the password`);
    expect(JSON.stringify({ message: error.message, hint: error.hint, details: error.details }) + lines.join('\n')).not.toContain(wrong);
    expect((await readdir(workDir).catch(() => [])).filter((n) => !n.startsWith('.'))).toEqual([]);
  }, 60_000);

  it('no password where one is needed: REDIS_AUTH_FAILED saying none was configured', async () => {
    const { runner } = await runnerFor(`REDIS_HOST=127.0.0.1\nREDIS_PORT=${redis.port}\n`);
    const error = await failure(runner.run('nightly'));
    expect(error.code).toBe('REDIS_AUTH_FAILED');
    expect(error.message).toContain('needs a password and none was configured');
  }, 60_000);

  it('the server is down: REDIS_UNREACHABLE naming where it looked', async () => {
    const down = await startRedis({ password: PASSWORD });
    const port = down.port;
    await down.stop();
    const { runner, lines } = await runnerFor(envOf(port));
    const error = await failure(runner.run('nightly'));
    expect(error.code).toBe('REDIS_UNREACHABLE');
    expect(error.message).toBe(`cannot connect to Redis at 127.0.0.1:${port} (the preflight check; settings from ${join(dir, '.env.production')})`);
    expect(lines.join('\n')).not.toContain(PASSWORD);
  }, 60_000);

  it("Sidekiq's own Redis (SIDEKIQ_REDIS_URL): the main stage says so; instance: sidekiq snapshots that server", async () => {
    const sidekiq = await startRedis({ password: 'sidekiq-pass-93kd' });
    try {
      await sidekiq.cli(['RPUSH', 'queue:default', 'a', 'b']);
      await sidekiq.cli(['SET', 'schedule', 'x']);
      const env = envOf(redis.port) + `SIDEKIQ_REDIS_URL=redis://:sidekiq-pass-93kd@127.0.0.1:${sidekiq.port}\n`;
      const main = await runnerFor(env);
      const first = await main.runner.run('nightly');
      expect(first.manifest!.artifacts[0]).toMatchObject({ name: 'redis.rdb', meta: { keys: 125 } });
      expect(main.lines.some((l) => l.includes("Mastodon keeps Sidekiq's queues in another Redis (SIDEKIQ_REDIS_*"))).toBe(true);
      await rm(join(dir, 'work'), { recursive: true, force: true });
      const queues = await runnerFor(env, { instance: 'sidekiq' });
      const second = await queues.runner.run('nightly');
      expect(second.manifest!.artifacts[0]).toMatchObject({ name: 'redis-sidekiq.rdb', meta: { keys: 2, server: `127.0.0.1:${sidekiq.port}` } });
      expect(queues.lines.join('\n')).not.toContain('sidekiq-pass-93kd');
    } finally {
      await sidekiq.stop();
    }
  }, 60_000);

  it('from: options with a password file and a redis:// URL', async () => {
    const passwordFile = join(dir, 'redis-pass');
    await writeFile(passwordFile, PASSWORD + '\n', { mode: 0o600 });
    const { runner } = await runnerFor('', { from: 'options', envFile: undefined, url: `redis://127.0.0.1:${redis.port}/0`, passwordFile });
    const { manifest } = await runner.run('nightly');
    expect(manifest!.artifacts[0]!.meta).toMatchObject({ keys: 125 });
  }, 60_000);
});

describe('connection settings', () => {
  it.each([
    ['redis://localhost:6379', { host: 'localhost', port: 6379, tls: false, db: 0 }],
    ['redis://:p%40ss@10.0.0.5:6380/2', { host: '10.0.0.5', port: 6380, password: 'p@ss', db: 2 }],
    ['rediss://mastodon:secret@redis.example.org', { host: 'redis.example.org', port: 6379, user: 'mastodon', password: 'secret', tls: true }],
    ['unix:///run/redis/redis.sock?db=1', { socket: '/run/redis/redis.sock', db: 1 }],
    ['redis://[::1]:6379', { host: '::1' }],
  ])('%s', (url, expected) => {
    expect(parseRedisUrl(url, 'REDIS_URL')).toMatchObject(expected);
  });

  it('refuses other schemes without echoing the URL', () => {
    expect(() => parseRedisUrl('http://user:hunter22@x', 'REDIS_URL')).toThrow(/must start with redis:\/\//);
    try {
      parseRedisUrl('http://user:hunter22@x', 'REDIS_URL');
    } catch (error) {
      expect((error as Error).message).not.toContain('hunter22');
    }
  });

  it('the password is in REDISCLI_AUTH, never in the arguments', () => {
    const secrets = new SecretRegistry();
    const conn = { ...parseRedisUrl('redis://u:s3cret-pw@h:1', 'x', secrets), origin: 'x' };
    expect(redisCliArgs(conn).join(' ')).not.toContain('s3cret-pw');
    expect(redisCliArgs(conn)).toEqual(['-h', 'h', '-p', '1', '--user', 'u', '--no-auth-warning']);
    expect(redisCliEnv(conn)).toEqual({ REDISCLI_AUTH: 's3cret-pw' });
    expect(secrets.mask('x s3cret-pw y')).not.toContain('s3cret-pw');
  });

  it('reads INFO keyspace', () => {
    expect(parseKeyspace('# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl=5\r\ndb12:keys=7,expires=0,avg_ttl=0\r\n')).toEqual({ db0: { keys: 3, expires: 1 }, db12: { keys: 7, expires: 0 } });
  });
});
