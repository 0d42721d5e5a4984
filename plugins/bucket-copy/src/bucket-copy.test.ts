/**
 * The bucket-copy stage against the loopback S3 server (s3rver): two buckets on one server
 * (server-side CopyObject) and two servers (streamed GetObject → Upload, source read from a
 * Mastodon .env.production). First run copies all, the second only what changed, an ETag that
 * differs at the target is copied again, nothing is deleted unless asked, credentials never logged.
 */
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { CreateBucketCommand, DeleteObjectCommand, GetObjectCommand, ListObjectsV2Command, PutObjectCommand, S3Client } from '@aws-sdk/client-s3';
import { createLogger, resolveConfig, Runner } from '@backup-pipeline/core';
import { startS3Server, type S3Server } from '@backup-pipeline/testing';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { compareListings, type Listed, type State } from './index.js';

const here = dirname(fileURLToPath(import.meta.url));
const pluginEntry = resolve(here, '../dist/index.js');
const tmpRoot = resolve(here, '../../../.vitest-tmp');

let a: S3Server;
let b: S3Server;
let dir: string;
let n = 0;

const clientOf = (s: S3Server) => new S3Client({ endpoint: s.endpoint, region: s.region, forcePathStyle: true, credentials: { accessKeyId: s.accessKeyId, secretAccessKey: s.secretAccessKey } });

async function put(s: S3Server, bucket: string, key: string, body: string | Buffer) {
  await clientOf(s).send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: body, ContentType: 'image/png' }));
}
async function contents(s: S3Server, bucket: string): Promise<Record<string, string>> {
  const c = clientOf(s);
  const out: Record<string, string> = {};
  const listed = await c.send(new ListObjectsV2Command({ Bucket: bucket }));
  for (const o of listed.Contents ?? []) {
    if (o.Key!.startsWith('.backup-pipeline')) continue;
    const got = await c.send(new GetObjectCommand({ Bucket: bucket, Key: o.Key! }));
    const bytes = Buffer.from(await got.Body!.transformToByteArray());
    out[o.Key!] = bytes.length > 64 ? `${bytes.length} bytes ${bytes.subarray(0, 8).toString('hex')}` : bytes.toString();
  }
  return out;
}

const MEDIA: Record<string, string> = {
  'accounts/avatars/000/000/001/original/a.png': 'avatar one',
  'accounts/headers/000/000/001/original/h.png': 'header one',
  'media_attachments/files/109/000/001/original/file with space.png': 'spaced',
  'media_attachments/files/109/000/002/original/ünï.png': 'unicode',
  'custom_emojis/images/000/000/001/original/blobcat.png': 'emoji',
  'empty.txt': '',
};

beforeAll(async () => {
  a = await startS3Server({ bucket: 'media-src' });
  b = await startS3Server({ bucket: 'media-offsite' });
});
afterAll(async () => {
  await a?.stop();
  await b?.stop();
});

beforeEach(async () => {
  await mkdir(tmpRoot, { recursive: true });
  dir = await mkdtemp(join(tmpRoot, 'bucket-copy-'));
  return () => rm(dir, { recursive: true, force: true });
});

async function runner(stage: Record<string, unknown>) {
  const config = await resolveConfig(join(dir, 'pipeline.config.json'), { workDir: join(dir, 'work'), pipelines: { nightly: { source: 'mastodon', stages: [{ use: pluginEntry, ...stage }] } } });
  const lines: string[] = [];
  const log = await createLogger({ secrets: config.secrets, level: 'debug', format: 'json', write: (l) => void lines.push(l) });
  const r = new Runner(config, log);
  return {
    lines,
    run: async () => {
      const result = await r.run('nightly');
      const index = (await readFile(join(dir, 'work', result.summary.setId, 'bucket-copy.jsonl'), 'utf8')).trim().split('\n').map((l) => JSON.parse(l) as Record<string, unknown>);
      return { ...result, index, summary: result.manifest!.artifacts[0]!.meta };
    },
    verify: () => r.verifyStored('nightly', { set: 'latest', restoreTest: true }),
  };
}

/** A source and a target bucket on the first server, with its credentials. */
async function bucketPair(tag: string): Promise<{ src: string; dst: string; cred: { endpoint: string; accessKeyId: string; secretAccessKey: string } }> {
  const src = `${tag}src-${++n}`;
  const dst = `${tag}dst-${n}`;
  for (const Bucket of [src, dst]) await clientOf(a).send(new CreateBucketCommand({ Bucket }));
  return { src, dst, cred: { endpoint: a.endpoint, accessKeyId: a.accessKeyId, secretAccessKey: a.secretAccessKey } };
}

describe('bucket-copy, one provider: server-side CopyObject', () => {
  it('copies all, then only what changed; a different ETag at the target is copied again; deletes only with deleteExtraneous', async () => {
    const { src, dst, cred } = await bucketPair('');
    for (const [k, v] of Object.entries(MEDIA)) await put(a, src, k, v);
    // Remote media Mastodon caches in the bucket: left out, and reported.
    await put(a, src, 'cache/media_attachments/files/110/000/001/original/remote.png', 'remote');
    const stage = { from: 'options', source: { bucket: src, ...cred }, target: { bucket: dst, ...cred } };
    const r = await runner(stage);

    const first = await r.run();
    expect(first.summary).toMatchObject({ method: 'server-side', objects: 6, copied: 6, skipped: 0, deleted: 0, bytesCopied: Object.values(MEDIA).join('').length, excluded: 1, bytesExcluded: 6 });
    expect(await contents(a, dst)).toEqual(MEDIA);
    expect(first.index[0]).toMatchObject({ summary: { copied: 6 } });
    expect(first.index.slice(1).map((e) => e.action)).toEqual(Array(6).fill('copied'));

    // One changed, one new: two copied, five unchanged.
    await put(a, src, 'accounts/avatars/000/000/001/original/a.png', 'avatar one, changed');
    await put(a, src, 'media_attachments/files/110/new.png', 'new');
    const second = await r.run();
    expect(second.summary).toMatchObject({ objects: 7, copied: 2, skipped: 5, bytesCopied: 'avatar one, changed'.length + 3 });
    expect(second.index.filter((e) => e.action === 'copied').map((e) => e.key)).toEqual(['accounts/avatars/000/000/001/original/a.png', 'media_attachments/files/110/new.png']);

    // Same size, other content at the target: its ETag differs, so it is copied again.
    await put(a, dst, 'custom_emojis/images/000/000/001/original/blobcat.png', 'EMOJI');
    const third = await r.run();
    expect(third.summary).toMatchObject({ copied: 1, skipped: 6 });
    expect((await contents(a, dst))['custom_emojis/images/000/000/001/original/blobcat.png']).toBe('emoji');

    // Gone from the source: kept at the target by default…
    await clientOf(a).send(new DeleteObjectCommand({ Bucket: src, Key: 'empty.txt' }));
    const fourth = await r.run();
    expect(fourth.summary).toMatchObject({ objects: 6, copied: 0, deleted: 0 });
    expect(Object.keys(await contents(a, dst))).toContain('empty.txt');
    // …deleted only when the option says so.
    const pruning = await runner({ ...stage, deleteExtraneous: true, maxDeletePercent: 50 });
    const fifth = await pruning.run();
    expect(fifth.summary).toMatchObject({ copied: 0, deleted: 1 });
    expect(Object.keys(await contents(a, dst))).not.toContain('empty.txt');

    // The drill: the target holds every object of the set's index.
    const verified = await r.verify();
    expect(verified.artifacts[0]!.meta.drill).toMatchObject({ part: 'media', detail: expect.stringContaining('6 objects') });
    await clientOf(a).send(new DeleteObjectCommand({ Bucket: dst, Key: 'media_attachments/files/110/new.png' }));
    await expect(r.verify()).rejects.toMatchObject({ code: 'BUCKET_COPY_TARGET_INCOMPLETE' });
  }, 120_000);
});

describe('bucket-copy deletions', () => {
  it('refuses to follow a source that lost more than maxDeletePercent of the target, deleting nothing; a higher limit lets it', async () => {
    const { src, dst, cred } = await bucketPair('g');
    for (const [k, v] of Object.entries(MEDIA)) await put(a, src, k, v);
    const stage = { from: 'options', source: { bucket: src, ...cred }, target: { bucket: dst, ...cred }, deleteExtraneous: true };
    await (await runner(stage)).run();
    const keys = Object.keys(MEDIA);
    for (const k of keys.slice(1)) await clientOf(a).send(new DeleteObjectCommand({ Bucket: src, Key: k }));
    await expect((await runner(stage)).run()).rejects.toMatchObject({ code: 'BUCKET_COPY_DELETE_REFUSED', message: expect.stringContaining(`lacks ${keys.length - 1} of the ${keys.length} objects`) });
    expect(Object.keys(await contents(a, dst)).sort()).toEqual([...keys].sort());
    const allowed = await (await runner({ ...stage, maxDeletePercent: 100 })).run();
    expect(allowed.summary).toMatchObject({ deleted: keys.length - 1 });
    expect(Object.keys(await contents(a, dst))).toEqual([keys[0]]);
  }, 120_000);
});

describe('bucket-copy, multipart server-side copy', () => {
  it('an object over the threshold goes through UploadPartCopy; a server without it (s3rver) gets that object streamed instead, said once', async () => {
    const { src, dst, cred } = await bucketPair('p');
    const big = Buffer.alloc(6 * 1024 * 1024 + 17, 3);
    big.write('header', 0);
    await put(a, src, 'media_attachments/files/112/original/big.mp4', big);
    await put(a, src, 'small.png', 'small');
    const r = await runner({ from: 'options', source: { bucket: src, ...cred }, target: { bucket: dst, ...cred }, multipartCopyThresholdMB: 5, partSizeMB: 5 });
    const first = await r.run();
    expect(first.summary).toMatchObject({ method: 'server-side', copied: 2, bytesCopied: big.length + 5 });
    expect((await contents(a, dst))['media_attachments/files/112/original/big.mp4']).toBe(`${big.length} bytes ${big.subarray(0, 8).toString('hex')}`);
    expect(r.lines.filter((l) => l.includes('does not implement UploadPartCopy'))).toHaveLength(1);
    expect((await r.run()).summary).toMatchObject({ copied: 0, skipped: 2 });
  }, 120_000);
});

describe('bucket-copy, two providers: streamed, source from .env.production', () => {
  it('streams every object (multipart for the large one), then copies nothing; credentials never logged', async () => {
    const src = `msrc-${++n}`;
    const dst = `mdst-${n}`;
    await clientOf(a).send(new CreateBucketCommand({ Bucket: src }));
    await clientOf(b).send(new CreateBucketCommand({ Bucket: dst }));
    for (const [k, v] of Object.entries(MEDIA)) await put(a, src, k, v);
    const big = Buffer.alloc(12 * 1024 * 1024, 7);
    big.write('start', 0);
    await put(a, src, 'media_attachments/files/111/original/video.mp4', big);
    const envFile = join(dir, '.env.production');
    await writeFile(
      envFile,
      `LOCAL_DOMAIN=example.test\nS3_ENABLED=true\nS3_BUCKET=${src}\nS3_ENDPOINT=${a.endpoint}\nS3_REGION=us-east-1\nAWS_ACCESS_KEY_ID=${a.accessKeyId}\nAWS_SECRET_ACCESS_KEY=${a.secretAccessKey}\nS3_ALIAS_HOST=files.example.test\n`,
      { mode: 0o600 },
    );
    const r = await runner({ envFile, target: { bucket: dst, endpoint: b.endpoint, accessKeyId: b.accessKeyId, secretAccessKey: b.secretAccessKey }, partSizeMB: 5 });
    const first = await r.run();
    expect(first.summary).toMatchObject({ method: 'stream', objects: 7, copied: 7, bytesCopied: Object.values(MEDIA).join('').length + big.length });
    const copied = await contents(b, dst);
    expect(copied['media_attachments/files/111/original/video.mp4']).toBe(`${big.length} bytes ${big.subarray(0, 8).toString('hex')}`);
    expect(Object.keys(copied).sort()).toEqual([...Object.keys(MEDIA), 'media_attachments/files/111/original/video.mp4'].sort());

    // (s3rver gives a multipart upload a plain MD5 ETag; the differing-ETag case is in the compareListings table below.)
    const etag = async (s: S3Server, bucket: string) => (await clientOf(s).send(new ListObjectsV2Command({ Bucket: bucket }))).Contents!.find((o) => o.Key!.endsWith('video.mp4'))!.ETag;
    expect(await etag(b, dst)).toBeDefined();
    const second = await r.run();
    expect(second.summary).toMatchObject({ copied: 0, skipped: 7 });

    const all = r.lines.join('\n') + JSON.stringify(first.manifest) + JSON.stringify(first.index);
    expect(all).not.toContain(a.secretAccessKey);
    expect(all).toContain(`s3://${src}/ at ${a.endpoint} → s3://${dst}/ at ${b.endpoint}: 0 of 7 objects copied`);
  }, 180_000);

  it('S3_ENABLED not true: BUCKET_COPY_NO_BUCKET before anything is copied', async () => {
    const envFile = join(dir, '.env.production');
    await writeFile(envFile, 'S3_ENABLED=false\nS3_BUCKET=x\n');
    const r = await runner({ envFile, target: { bucket: 'media-offsite', endpoint: b.endpoint, accessKeyId: b.accessKeyId, secretAccessKey: b.secretAccessKey } });
    await expect(r.run()).rejects.toMatchObject({ code: 'BUCKET_COPY_NO_BUCKET' });
  });

  it('wrong target credentials: BUCKET_COPY_ACCESS_DENIED in preflight, without the secret', async () => {
    const r = await runner({
      from: 'options',
      source: { bucket: 'media-src', endpoint: a.endpoint, accessKeyId: a.accessKeyId, secretAccessKey: a.secretAccessKey },
      target: { bucket: 'media-offsite', endpoint: b.endpoint, accessKeyId: 'WRONGKEY', secretAccessKey: 'wrong-secret-123456' },
    });
    const error = (await r.run().catch((e: unknown) => e)) as { code: string; hook: string; message: string };
    expect(error).toMatchObject({ code: 'BUCKET_COPY_ACCESS_DENIED', hook: 'preflight' });
    expect(error.message + r.lines.join('\n')).not.toContain('wrong-secret-123456');
  });
});

describe('compareListings (which objects to copy)', () => {
  const o = (key: string, size: number, etag: string): Listed => ({ key, size, etag });
  const cases: Array<[string, Listed[], Listed[], State, string[]]> = [
    ['missing at the target', [o('a', 1, 'e1')], [], {}, ['a']],
    ['same size and ETag', [o('a', 1, 'e1')], [o('a', 1, 'e1')], {}, []],
    ['other size', [o('a', 1, 'e1')], [o('a', 2, 'e1')], {}, ['a']],
    ['other ETag, no state', [o('a', 1, 'e1')], [o('a', 1, 'x-2')], {}, ['a']],
    ['multipart ETag of a copy of this source ETag', [o('a', 1, 'e1')], [o('a', 1, 'x-2')], { a: { source: 'e1', target: 'x-2' } }, []],
    ['the source changed since that copy', [o('a', 1, 'e2')], [o('a', 1, 'x-2')], { a: { source: 'e1', target: 'x-2' } }, ['a']],
    ['the target was overwritten since that copy', [o('a', 1, 'e1')], [o('a', 1, 'y-2')], { a: { source: 'e1', target: 'x-2' } }, ['a']],
  ];
  it.each(cases)('%s', (_name, sources, targets, state, expected) => {
    const result = compareListings(sources, new Map(targets.map((t) => [t.key, t])), state);
    expect(result.todo.map((t) => t.key)).toEqual(expected);
    expect(result.unchanged.length + result.todo.length).toBe(sources.length);
  });
  it('keeps only state entries that still describe the target', () => {
    const { next } = compareListings([o('a', 1, 'e1'), o('b', 1, 'e2')], new Map([['a', o('a', 1, 'x-2')], ['b', o('b', 1, 'z')]]), { a: { source: 'e1', target: 'x-2' }, b: { source: 'e2', target: 'old' } });
    expect(next).toEqual({ a: { source: 'e1', target: 'x-2' } });
  });
});
