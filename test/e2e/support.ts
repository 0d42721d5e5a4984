/** Shared setup of the end-to-end tests: a real cluster with a Mastodon-shaped database, and the CLI. */
import { chmod, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { generateMastodonData, loadMastodonSchema, mastodonEnvText, startPostgres, type PostgresServer } from '@backup-pipeline/testing';

export const ROOT = resolve(fileURLToPath(import.meta.url), '../../..');
export const BIN = join(ROOT, 'packages', 'cli', 'bin', 'pipeline.js');

/** A password with every character that breaks naive .pgpass, dotenv or shell handling. */
export const HOSTILE_PASSWORD = `p:a\\s's"w#rd ok`;

export interface MastodonHost {
  pg: PostgresServer;
  dir: string;
  envFile: string;
  database: string;
  user: string;
}

/** A throwaway cluster with `mastodon_production` owned by `mastodon`, and a `.env.production` for it. */
export async function mastodonHost(options: { scale?: 'tiny' | 'small'; password?: string } = {}): Promise<MastodonHost> {
  const password = options.password ?? HOSTILE_PASSWORD;
  const pg = await startPostgres();
  const database = 'mastodon_production';
  const user = 'mastodon';
  await pg.createRole(user, password, { login: true, createdb: true });
  await pg.createDatabase(database, { owner: user });
  await loadMastodonSchema(pg, database, { owner: user });
  await generateMastodonData(pg, database, { scale: options.scale ?? 'tiny', owner: user });
  const dir = await mkdtemp(join(tmpdir(), 'bp-e2e-'));
  await chmod(dir, 0o700);
  const envFile = join(dir, '.env.production');
  await writeFile(envFile, mastodonEnvText({ host: pg.host, port: pg.port, database, user, password, extra: ['SECRET_KEY_BASE=abc123'] }), { mode: 0o600 });
  return { pg, dir, envFile, database, user };
}

export function pipeline(args: string[], cwd: string, env: Record<string, string> = {}) {
  return execa(process.execPath, [BIN, ...args], { cwd, reject: false, env: { NO_COLOR: '1', CI: 'true', ...env }, timeout: 300_000 });
}

export async function writeConfig(dir: string, config: unknown): Promise<string> {
  const file = join(dir, 'pipeline.config.json');
  await writeFile(file, JSON.stringify(config, null, 2));
  return file;
}

/** Where most end-to-end tests keep their sets: one local folder beside the config. */
const LOCAL_FOLDER: Record<string, unknown> = { folder: { use: 'local', path: './folder' } };

/**
 * Writes the config most end-to-end tests share: the work folder `./work`, and each named pipeline
 * backing up the Mastodon source through its stages into every destination of the config (the local
 * `./folder` unless others are given).
 */
export function writeMastodonConfig(dir: string, pipelines: Record<string, unknown[]>, destinations = LOCAL_FOLDER): Promise<string> {
  const names = Object.keys(destinations);
  return writeConfig(dir, {
    workDir: './work',
    destinations,
    pipelines: Object.fromEntries(Object.entries(pipelines).map(([name, stages]) => [name, { source: 'mastodon', stages, destinations: names }])),
  });
}
