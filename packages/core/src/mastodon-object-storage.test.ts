/** S3_ENABLED detection, read the way Mastodon reads it, and the notice a media stage gives. */
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { parseEnvFile } from './env-file.js';
import { describeObjectStorage, mastodonObjectStorage, objectStorageNotice } from './mastodon-object-storage.js';

describe('mastodonObjectStorage', () => {
  it.each([
    ['S3_ENABLED=true\nS3_BUCKET=media\nS3_ENDPOINT=https://s3.example\n', { bucket: 'media', endpoint: 'https://s3.example' }],
    ["S3_ENABLED='true'\nS3_BUCKET=\"m b\"\nS3_REGION=eu-west-1\n", { bucket: 'm b', region: 'eu-west-1' }],
    ['S3_ENABLED=false\nS3_BUCKET=media\n', undefined],
    ['S3_ENABLED=TRUE\n', undefined], // Mastodon compares with == 'true'
    ['S3_ENABLED=1\n', undefined],
    ['S3_BUCKET=media\n', undefined],
  ])('%j', (text, expected) => {
    const found = mastodonObjectStorage(parseEnvFile(text));
    if (expected === undefined) expect(found).toBeUndefined();
    else expect(found).toMatchObject(expected);
  });

  it('describes the bucket without credentials', () => {
    const s3 = mastodonObjectStorage({ S3_ENABLED: 'true', S3_BUCKET: 'media', S3_ENDPOINT: 'https://s3.example', AWS_SECRET_ACCESS_KEY: 'never-this' })!;
    expect(describeObjectStorage(s3)).toBe('bucket media at https://s3.example');
    expect(JSON.stringify(s3)).not.toContain('never-this');
    expect(describeObjectStorage({})).toBe('a bucket (S3_BUCKET not set)');
  });
});

describe('objectStorageNotice', () => {
  it('finds .env.production two levels above public/system, says nothing for local media or without a readable env file', async () => {
    const live = await mkdtemp(join(tmpdir(), 'bp-s3-notice-'));
    try {
      const media = join(live, 'public', 'system');
      await mkdir(media, { recursive: true });
      expect(await objectStorageNotice(media)).toBeUndefined();
      await writeFile(join(live, '.env.production'), 'S3_ENABLED=false\n');
      expect(await objectStorageNotice(media)).toBeUndefined();
      await writeFile(join(live, '.env.production'), 'S3_ENABLED=true\nS3_BUCKET=files.example\nAWS_SECRET_ACCESS_KEY=hidden-secret\n');
      const notice = await objectStorageNotice(media);
      expect(notice).toBe(`media is in object storage (S3_ENABLED=true in ${join(live, '.env.production')}, bucket files.example): ${media} holds no uploads and this set holds no media; back the bucket up with a bucket-to-bucket copy stage`);
      expect(notice).not.toContain('hidden-secret');
    } finally {
      await rm(live, { recursive: true, force: true });
    }
  });
});
