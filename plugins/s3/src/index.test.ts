import { createHash, randomBytes } from 'node:crypto';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DeleteObjectCommand, ListObjectsCommand, S3Client } from '@aws-sdk/client-s3';
import { createLogger, hashFile, listSets, makeSetId, MANIFEST_FORMAT, MANIFEST_NAME, resolveConfig, Runner, SecretRegistry, writeTreeIndex, type PutSource, type TreeEntry } from '@backup-pipeline/core';
import { startFaultProxy, startS3Server, writeProducerPlugin, type FaultProxy, type S3Server } from '@backup-pipeline/testing';
import { writeLargeFile } from '@backup-pipeline/testing/conformance';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import plugin, { S3Destination, S3Options } from './index.js';

let s3: S3Server;
let proxy: FaultProxy;
let dir: string;

beforeAll(async () => {
  s3 = await startS3Server();
  proxy = await startFaultProxy(s3.endpoint);
  dir = await mkdtemp(join(tmpdir(), 's3-test-'));
});
afterAll(async () => {
  await proxy?.stop();
  await s3?.stop();
  await rm(dir, { recursive: true, force: true });
});

async function make(extra: Record<string, unknown> = {}, secrets = new SecretRegistry()) {
  const log = await createLogger({ secrets, level: 'silent' });
  const options = S3Options.parse({
    bucket: s3.bucket,
    endpoint: proxy.endpoint,
    forcePathStyle: true,
    accessKeyId: s3.accessKeyId,
    secretAccessKey: s3.secretAccessKey,
    partSizeMB: 5,
    ...extra,
  });
  return (await plugin.destination!.create(options, { name: 's3', log, secrets, configDir: '/', resolvePath: (p) => p })) as S3Destination;
}

async function source(content: Buffer | string): Promise<PutSource> {
  const path = join(dir, `src-${randomBytes(4).toString('hex')}`);
  await writeFile(path, content);
  return { path, bytes: Buffer.byteLength(content), sha256: createHash('sha256').update(content).digest('hex') };
}

describe('s3 options', () => {
  it('needs both keys or neither, and rejects unknown options', () => {
    expect(S3Options.safeParse({ bucket: 'abc', accessKeyId: 'x' }).success).toBe(false);
    expect(S3Options.safeParse({ bucket: 'abc', nope: true }).success).toBe(false);
    expect(S3Options.safeParse({ bucket: 'abc', partSizeMB: 4 }).success).toBe(false);
    expect(S3Options.safeParse({ bucket: 'abc' }).success).toBe(true);
  });
  it('registers the secret key and never describes it', async () => {
    const secrets = new SecretRegistry();
    const d = await make({ prefix: '/a/b' }, secrets);
    expect(secrets.has(s3.secretAccessKey)).toBe(true);
    expect(d.describe()).toBe(`s3://${s3.bucket}/a/b/ at ${proxy.endpoint}`);
  });
});

describe('s3 faults through a proxy', () => {
  it('retries 503 SlowDown and 500 transparently', async () => {
    const d = await make({ prefix: 'retry' });
    const src = await source('retry me\n');
    proxy.setMode({ kind: 'status', status: 503 }, 2);
    await d.put('20300101T000000Z-x', 'a.txt', src);
    proxy.setMode({ kind: 'status', status: 500 }, 1);
    const out = join(dir, 'retry-out');
    await d.get('20300101T000000Z-x', 'a.txt', out);
    expect((await hashFile(out)).sha256).toBe(src.sha256);
  });

  it('retries a multipart upload whose part connection drops', async () => {
    const d = await make({ prefix: 'drop' });
    const big = await writeLargeFile(join(dir, 'big'), 12 * 1024 * 1024);
    proxy.setMode({ kind: 'drop-after', bytes: 1024 * 1024 }, 1);
    await d.put('20300101T000000Z-x', 'big.bin', big);
    const out = join(dir, 'big-out');
    await d.get('20300101T000000Z-x', 'big.bin', out);
    expect((await hashFile(out)).sha256).toBe(big.sha256);
  });

  it('fails with DESTINATION_FAILED when the server keeps failing, without the secret in the message', async () => {
    const secret = 'SuperSecretKey/with+chars-1234567890';
    const d = await make({ prefix: 'fail', secretAccessKey: secret, maxAttempts: 2 });
    proxy.setMode({ kind: 'status', status: 500 });
    try {
      const error = await d.put('20300101T000000Z-x', 'a.txt', await source('x')).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: 'DESTINATION_FAILED' });
      expect((error as Error).message).toMatch(/InternalError/);
      expect((error as Error).message).not.toContain(secret);
    } finally {
      proxy.setMode({ kind: 'pass' });
    }
    // Unknown key id: the server refuses the request; the message still never holds the secret.
    const wrong = await make({ prefix: 'fail', accessKeyId: 'UNKNOWNKEY', secretAccessKey: secret, maxAttempts: 1 });
    const error = await wrong.check().catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'DESTINATION_FAILED' });
    expect(JSON.stringify({ m: (error as Error).message, d: (error as { details?: unknown }).details })).not.toContain(secret);
  });

  it('slow answers (every request delayed) still complete: check, put and get, with the sha256 kept', async () => {
    const d = await make({ prefix: 'slow' });
    const faults = proxy.stats.faults;
    proxy.setMode({ kind: 'delay', ms: 300 });
    try {
      await d.check();
      const src = await source('slow but whole\n');
      await d.put('20300101T000000Z-slow', 'a.txt', src);
      const out = join(dir, 'slow-out');
      await d.get('20300101T000000Z-slow', 'a.txt', out);
      expect(await hashFile(out)).toMatchObject({ sha256: src.sha256, bytes: src.bytes });
    } finally {
      proxy.setMode({ kind: 'pass' });
    }
    // The requests really went through the delay.
    expect(proxy.stats.faults - faults).toBeGreaterThanOrEqual(3);
    await d.delete('20300101T000000Z-slow');
  });
});

describe('s3 abort', () => {
  it('stops an upload when the run is interrupted and leaves no object behind', async () => {
    const d = await make({ prefix: 'abort' });
    const big = await writeLargeFile(join(dir, 'abort-big'), 24 * 1024 * 1024);
    const controller = new AbortController();
    proxy.setMode({ kind: 'delay', ms: 200 });
    try {
      const requests = proxy.stats.requests;
      const put = d.put('20300101T000000Z-x', 'big.bin', big, { signal: controller.signal });
      const outcome = put.catch((e: unknown) => e);
      // Abort once the upload has reached the server (a request is in flight), not after a guessed delay.
      for (let i = 0; proxy.stats.requests === requests; i++) {
        if (i > 1500) throw new Error('no upload request reached the proxy in 30 s');
        await new Promise((r) => setTimeout(r, 20));
      }
      controller.abort();
      expect(await outcome).toMatchObject({ code: 'ABORTED' });
    } finally {
      proxy.setMode({ kind: 'pass' });
    }
    await expect(d.get('20300101T000000Z-x', 'big.bin', join(dir, 'abort-out'))).rejects.toMatchObject({ code: 'SET_NOT_FOUND' });
  });
});

describe('s3 through the runner', () => {
  it('ships a set and lists it complete', async () => {
    const producer = await writeProducerPlugin(dir, { artifact: 'db.dump', content: 'pretend dump\n'.repeat(5000), kind: 'database', format: 'pg-custom' });
    const secretFile = join(dir, 's3-secret');
    await writeFile(secretFile, s3.secretAccessKey + '\n', { mode: 0o600 });
    const config = await resolveConfig(join(dir, 'pipeline.config.yaml'), {
      workDir: join(dir, 'work'),
      destinations: {
        bucket: {
          use: join(import.meta.dirname, 'index.ts'),
          bucket: s3.bucket,
          prefix: 'runner',
          endpoint: s3.endpoint,
          forcePathStyle: true,
          accessKeyId: s3.accessKeyId,
          secretAccessKey: `\${file:${secretFile}}`,
        },
      },
      pipelines: { nightly: { source: 'mastodon', stages: [{ use: producer }], destinations: ['bucket'] } },
    });
    const lines: string[] = [];
    const log = await createLogger({ secrets: config.secrets, format: 'json', level: 'debug', write: (l) => void lines.push(l) });
    const { summary } = await new Runner(config, log).run('nightly');
    expect(summary.destinations).toEqual([expect.objectContaining({ destination: 'bucket', ok: true, files: 2 })]);
    const d = new S3Destination(S3Options.parse({ bucket: s3.bucket, prefix: 'runner', endpoint: s3.endpoint, forcePathStyle: true, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey }), new SecretRegistry());
    expect(await d.list()).toEqual([expect.objectContaining({ id: summary.setId, hasManifest: true })]);
  });
});

describe('s3 content objects', () => {
  it('deletes no content while a kept set names a tree whose seal is lost, and says so', async () => {
    const warnings: string[] = [];
    const secrets = new SecretRegistry();
    const log = await createLogger({ secrets, format: 'json', level: 'warn', write: (l) => void warnings.push(l) });
    const options = S3Options.parse({ bucket: s3.bucket, prefix: `lost-seal-${randomBytes(3).toString('hex')}/`, endpoint: s3.endpoint, forcePathStyle: true, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey });
    const d = new S3Destination(options, secrets, log);
    const tree = join(dir, `tree-${randomBytes(3).toString('hex')}`);
    await mkdir(tree);
    const entries: TreeEntry[] = [];
    for (const name of ['a.bin', 'b.bin']) {
      const content = randomBytes(2000);
      await writeFile(join(tree, name), content);
      entries.push({ path: name, bytes: content.length, sha256: createHash('sha256').update(content).digest('hex'), mode: 0o644, mtimeMs: Date.now() });
    }
    // Two complete sets holding the same contents (the second upload writes nothing new).
    const ids = [makeSetId(new Date(Date.UTC(2026, 0, 1)), 'mastodon'), makeSetId(new Date(Date.UTC(2026, 0, 2)), 'mastodon')];
    for (const id of ids) {
      await d.putTree(id, 'media', { dir: tree, entries });
      const index = join(dir, `index-${id}`);
      const digest = await writeTreeIndex(index, entries);
      await d.put(id, 'media.index.jsonl', { path: index, ...digest });
      const manifest = {
        format: MANIFEST_FORMAT, id, pipeline: 'nightly', source: 'mastodon', createdAt: new Date().toISOString(), completedAt: new Date().toISOString(),
        framework: { name: 'backup-pipeline', version: '0.0.0', node: process.version }, host: 'test', stages: [], facts: {}, tools: {}, verified: false,
        artifacts: [{ name: 'media.index.jsonl', kind: 'files', format: 'media-tree', compression: 'none', bytes: digest.bytes, sha256: digest.sha256, meta: {}, tree: { name: 'media', files: 2, bytes: 4000, listSha256: digest.sha256 } }],
      };
      await d.put(id, MANIFEST_NAME, await source(JSON.stringify(manifest)));
    }
    const client = new S3Client({ endpoint: s3.endpoint, region: s3.region, forcePathStyle: true, credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey } });
    const contents = async () => ((await client.send(new ListObjectsCommand({ Bucket: s3.bucket, Prefix: `${d.prefix}.objects/` }))).Contents ?? []).length;
    expect(await contents()).toBe(2);
    // The second set's seal is lost: it lists damaged, and its contents are still all there.
    await client.send(new DeleteObjectCommand({ Bucket: s3.bucket, Key: `${d.prefix}${ids[1]}/media.tree` }));
    expect((await listSets(d, { scratchDir: dir })).find((s) => s.id === ids[1])).toMatchObject({ state: 'damaged' });
    // Deleting the first set would leave its contents unreferenced by any seal: they stay.
    await d.delete(ids[0]!);
    expect(await contents()).toBe(2);
    expect(warnings.join('\n')).toContain(`set ${ids[1]} names tree(s) media without a seal; no content is deleted until a person looks at it`);
    client.destroy();
  });
});
