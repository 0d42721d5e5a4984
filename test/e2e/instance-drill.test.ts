/**
 * "Could I rebuild this instance from this set tonight?": a pipeline with the database (pg-dump),
 * the secrets (files stage with .env.production, encrypted with gpg), the media (the media stage,
 * and the files stage's tar of public/system) and Redis (a real password-protected redis-server),
 * then `pipeline verify latest --restore-test` through the CLI: every part is restored somewhere
 * throwaway and reported with its size and time-to-restore, in text and in --json.
 */
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { CreateBucketCommand, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { createGpgHome, dotenvQuote, startRedis, startS3Server, type GpgHome, type RedisServer, type S3Server } from '@backup-pipeline/testing';
import { HOSTILE_PASSWORD, mastodonHost, pipeline, writeMastodonConfig, type MastodonHost } from './support.js';

const REDIS_PASSWORD = 'redis pässword-e2e-4d1c';

let host: MastodonHost;
let gpg: GpgHome;
let redis: RedisServer;
let s3: S3Server;
let s3EnvFile: string;

const MEDIA: Record<string, string> = {
  'accounts/avatars/000/000/001/original/avatar.png': 'png-bytes',
  'media_attachments/files/109/000/001/original/photo.jpg': 'jpeg bytes '.repeat(100),
  'custom_emojis/images/000/000/001/original/blobcat.png': 'emoji',
  'cache/media_attachments/files/110/remote.jpg': 'remote cached media',
};

beforeAll(async () => {
  [host, gpg, redis, s3] = await Promise.all([mastodonHost(), createGpgHome(), startRedis({ password: REDIS_PASSWORD }), startS3Server({ bucket: 'instance-media' })]);
  await redis.cli(['MSET', 'a', '1', 'b', '2', 'c', '3']);
  await redis.cli(['-n', '1', 'RPUSH', 'queue:default', 'job']);
  const media = join(host.dir, 'live', 'public', 'system');
  for (const [path, content] of Object.entries(MEDIA)) {
    await mkdir(dirname(join(media, path)), { recursive: true });
    await writeFile(join(media, path), content);
  }
  await writeFile(host.envFile, `\nREDIS_HOST=127.0.0.1\nREDIS_PORT=${redis.port}\nREDIS_PASSWORD=${dotenvQuote(REDIS_PASSWORD)}\nOTP_SECRET=0123456789abcdef\nS3_ENABLED=false\n`, { flag: 'a' });
  // The same instance with its media in object storage: another env file says S3_ENABLED=true.
  const client = new S3Client({ endpoint: s3.endpoint, region: s3.region, forcePathStyle: true, credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey } });
  await client.send(new CreateBucketCommand({ Bucket: 'instance-media-copy' }));
  for (const [path, content] of Object.entries(MEDIA)) if (!path.startsWith('cache/')) await client.send(new PutObjectCommand({ Bucket: 'instance-media', Key: path, Body: content }));
  s3EnvFile = join(host.dir, 's3.env.production');
  await writeFile(
    s3EnvFile,
    (await readFile(host.envFile, 'utf8')).replace('S3_ENABLED=false', `S3_ENABLED=true\nS3_BUCKET=instance-media\nS3_ENDPOINT=${s3.endpoint}\nAWS_ACCESS_KEY_ID=${s3.accessKeyId}\nAWS_SECRET_ACCESS_KEY=${s3.secretAccessKey}`),
    { mode: 0o600 },
  );
  await writeMastodonConfig(host.dir, {
    nightly: [
      { use: 'credentials', envFile: host.envFile },
      { use: 'pg-dump', globals: false },
      { use: 'verify' },
      { use: 'files', envFile: host.envFile, mediaDir: media },
      { use: 'media', path: media },
      { use: 'redis', envFile: host.envFile },
      { use: 'gpg', gnupgHome: gpg.home, recipients: [gpg.fingerprint] },
    ],
    bucketed: [
      { use: 'credentials', envFile: s3EnvFile },
      { use: 'pg-dump', globals: false },
      { use: 'verify' },
      { use: 'files', envFile: s3EnvFile, mediaDir: media },
      { use: 'bucket-copy', envFile: s3EnvFile, target: { bucket: 'instance-media-copy', endpoint: s3.endpoint, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey } },
      { use: 'redis', envFile: s3EnvFile },
      { use: 'gpg', gnupgHome: gpg.home, recipients: [gpg.fingerprint] },
    ],
  });
}, 180_000);

afterAll(async () => {
  await Promise.allSettled([host?.pg.stop(), gpg?.cleanup(), redis?.stop(), s3?.stop()]);
});

interface Part {
  part: string;
  artifact: string;
  restored: boolean;
  bytes?: number;
  durationMs?: number;
  detail: string;
}

describe('full-instance restore drill', () => {
  it('verify latest --restore-test restores every part (database, secrets, media, redis) and reports size and time-to-restore', async () => {
    const run = await pipeline(['run', 'nightly'], host.dir);
    expect(run.exitCode, run.stderr).toBe(0);

    const json = await pipeline(['verify', 'latest', '--pipeline', 'nightly', '--from', 'folder', '--restore-test', '--gnupg-home', gpg.home, '--json'], host.dir);
    expect(json.exitCode, json.stderr).toBe(0);
    const report = JSON.parse(json.stdout) as { ok: boolean; drill: { parts: Part[]; missing: string[]; totalMs: number; complete: boolean } };
    const byPart = (name: string) => report.drill.parts.filter((p) => p.part === name);
    expect(new Set(report.drill.parts.map((p) => p.part))).toEqual(new Set(['database', 'secrets', 'media', 'redis']));
    expect(report.drill.missing).toEqual([]);
    for (const part of ['database', 'secrets', 'redis']) {
      const [p] = byPart(part);
      expect(p, part).toMatchObject({ restored: true });
      expect(p!.bytes, part).toBeGreaterThan(0);
      expect(p!.durationMs, part).toBeGreaterThanOrEqual(0);
    }
    expect(byPart('database')[0]!.detail).toMatch(/\d+ tables \/ \d+ rows restored, matching the dump's snapshot/);
    expect(byPart('secrets')[0]!.detail).toBe('.env.production unpacked and parsed, with SECRET_KEY_BASE, OTP_SECRET');
    expect(byPart('redis')[0]!.detail).toContain('4 keys in 2 databases');
    // The files stage's media tar is drilled (unpacked, files counted, cache/ left out).
    const tar = byPart('media').find((p) => p.artifact.startsWith('media.tar'));
    expect(tar).toMatchObject({ restored: true, detail: expect.stringMatching(/^3 files \(\d+ bytes\) unpacked$/) });
    // The media stage's tree is rebuilt whole from the destination, every file checked.
    const tree = byPart('media').find((p) => !p.artifact.startsWith('media.tar'));
    expect(tree).toMatchObject({ restored: true, detail: expect.stringMatching(/^3 files rebuilt from folder into a throwaway folder, every sha256 matches$/) });
    expect(tree!.bytes).toBeGreaterThan(0);
    expect(report.drill.totalMs).toBe(report.drill.parts.reduce((n, p) => n + (p.durationMs ?? 0), 0));

    const text = await pipeline(['verify', 'latest', '--pipeline', 'nightly', '--from', 'folder', '--restore-test', '--gnupg-home', gpg.home], host.dir);
    expect(text.exitCode, text.stderr).toBe(0);
    expect(text.stdout).toContain('Restore drill of ');
    for (const part of ['database', 'secrets', 'redis']) expect(text.stdout).toMatch(new RegExp(`^  ${part} +restores +\\d+(\\.\\d)? (B|KiB|MiB) +in \\d`, 'm'));
    expect(text.stdout).toMatch(/time to restore the drilled parts here: \d/);
    for (const out of [run.stdout, run.stderr, json.stdout, json.stderr, text.stdout, text.stderr]) {
      expect(out).not.toContain(REDIS_PASSWORD);
      expect(out).not.toContain(HOSTILE_PASSWORD);
    }
  }, 300_000);

  it('with S3_ENABLED=true: the files stage says media is in the bucket, bucket-copy copies it, and the drill reports the bucket as the media part', async () => {
    const run = await pipeline(['run', 'bucketed'], host.dir);
    expect(run.exitCode, run.stderr).toBe(0);
    expect(run.stdout + run.stderr).toContain(`media is in object storage (S3_ENABLED=true in ${s3EnvFile}, bucket instance-media at ${s3.endpoint}): it is not in this set`);
    const json = await pipeline(['verify', 'latest', '--pipeline', 'bucketed', '--from', 'folder', '--restore-test', '--gnupg-home', gpg.home, '--json'], host.dir);
    expect(json.exitCode, json.stderr).toBe(0);
    const report = JSON.parse(json.stdout) as { drill: { parts: Part[]; missing: string[]; complete: boolean } };
    expect(report.drill.parts.map((p) => [p.part, p.restored])).toEqual([
      ['database', true],
      ['secrets', true],
      ['media', true],
      ['redis', true],
    ]);
    expect(report.drill.parts[2]).toMatchObject({ artifact: 'bucket-copy.jsonl', detail: expect.stringContaining('3 objects') });
    expect(report.drill).toMatchObject({ missing: [], complete: true });
    for (const out of [run.stdout, run.stderr, json.stdout, json.stderr]) expect(out).not.toContain(REDIS_PASSWORD);
  }, 300_000);
});
