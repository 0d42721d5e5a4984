/**
 * Whether Mastodon keeps its media in object storage (`S3_ENABLED=true` in `.env.production`,
 * compared exactly as Mastodon does), and where: read once here so `init`, the files stage and a
 * media stage say the same thing instead of silently archiving an empty local folder.
 */
import { readFile } from 'node:fs/promises';
import { resolve } from 'node:path';
import { parseEnvFile, type EnvEntry } from './env-file.js';

/** Where Mastodon's media lives when it is in a bucket. No credentials. */
export interface MastodonObjectStorage {
  bucket?: string;
  endpoint?: string;
  region?: string;
  /** S3_ALIAS_HOST: the public host media is served from (not where it is stored). */
  aliasHost?: string;
}

/** The bucket Mastodon's media is in, or undefined when `S3_ENABLED` is not `true` (media is local). */
export function mastodonObjectStorage(env: ReadonlyMap<string, EnvEntry> | Readonly<Record<string, string | undefined>>): MastodonObjectStorage | undefined {
  const get = (key: string): string | undefined => (env instanceof Map ? (env as ReadonlyMap<string, EnvEntry>).get(key)?.value : (env as Record<string, string | undefined>)[key]) || undefined;
  if (get('S3_ENABLED') !== 'true') return undefined;
  return { bucket: get('S3_BUCKET'), endpoint: get('S3_ENDPOINT'), region: get('S3_REGION'), aliasHost: get('S3_ALIAS_HOST') };
}

/** Reads `envFile` and answers as `mastodonObjectStorage`; a file that cannot be read or parsed throws. */
export async function readMastodonObjectStorage(envFile: string): Promise<MastodonObjectStorage | undefined> {
  return mastodonObjectStorage(parseEnvFile(await readFile(envFile, 'utf8'), envFile));
}

/** `bucket mastodon-media at https://s3.example.org`: for messages (no credentials in it). */
export function describeObjectStorage(s3: MastodonObjectStorage): string {
  return `${s3.bucket ? `bucket ${s3.bucket}` : 'a bucket (S3_BUCKET not set)'}${s3.endpoint ? ` at ${s3.endpoint}` : s3.region ? ` in ${s3.region}` : ''}`;
}

/**
 * The warning a stage that archives local media gives when Mastodon's media is in a bucket, or
 * undefined when it is local (or no env file can be read to tell). `envFile` defaults to where
 * Mastodon keeps it relative to its media folder: `<mediaDir>/../../.env.production`
 * (`~/live/public/system` → `~/live/.env.production`).
 */
export async function objectStorageNotice(mediaDir: string | undefined, envFile?: string): Promise<string | undefined> {
  const file = envFile ?? (mediaDir ? resolve(mediaDir, '..', '..', '.env.production') : undefined);
  if (!file) return undefined;
  const s3 = await readMastodonObjectStorage(file).catch(() => undefined);
  if (!s3) return undefined;
  return `media is in object storage (S3_ENABLED=true in ${file}, ${describeObjectStorage(s3)}): ${mediaDir ? `${mediaDir} holds no uploads and ` : ''}this set holds no media; back the bucket up with a bucket-to-bucket copy stage`;
}
