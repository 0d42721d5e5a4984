/**
 * The `s3` destination: sets stored as objects under `PREFIX/SET_ID/` in an S3 bucket (AWS or any
 * S3-compatible server). Uploads stream from disk through a multipart upload (never the whole file
 * in memory) with the sha256 kept in the object's metadata and checked (size and metadata) with
 * HeadObject afterwards; downloads stream to disk through the core's atomic writer and are checked
 * against that sha256.
 */
import { randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, rename, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough, type Readable } from 'node:stream';
import {
  DeleteObjectCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  type S3ClientConfig,
  type ServerSideEncryption,
  type StorageClass,
  type _Object,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import {
  definePlugin,
  DigestStream,
  isPipelineError,
  parseSetId,
  writeFileAtomic,
  MANIFEST_NAME,
  PARTIAL_SUFFIX,
  PipelineError,
  z,
  type Destination,
  type DestinationOperationOptions,
  type Logger,
  type PutSource,
  type SecretRegistry,
  type StoredFile,
  type StoredSet,
  assertFileName,
  assertSetId,
  checkTreeFile,
  eachLimited,
  listSets,
  nextPageToken,
  parseTreeIndex,
  pathInTree,
  readTreeIndex,
  treeSealName,
  writeTreeIndex,
  type TreeEntry,
  type TreeOperationOptions,
  type TreePutResult,
  type TreeSource,
} from '@backup-pipeline/core';

export const S3Options = z
  .object({
    bucket: z.string().min(3).max(63).describe('Bucket name.'),
    prefix: z
      .string()
      .default('')
      .refine((p) => !p.split('/').includes('..'), 'no ".." segments')
      .describe('Key prefix the sets are stored under, e.g. `mastodon/` (a trailing slash is added when missing).'),
    region: z.string().min(1).optional().describe('AWS region (default: the AWS SDK\'s own resolution — AWS_REGION, ~/.aws/config; `us-east-1` when `endpoint` is set).'),
    endpoint: z.string().url().optional().describe('Endpoint URL of an S3-compatible service (MinIO, Garage, Ceph, Backblaze B2, Wasabi, Scaleway…). Default: AWS.'),
    forcePathStyle: z.boolean().default(false).describe('Use path-style URLs (`endpoint/bucket/key`); most self-hosted S3 servers need this.'),
    storageClass: z
      .enum(['STANDARD', 'STANDARD_IA', 'ONEZONE_IA', 'INTELLIGENT_TIERING', 'GLACIER_IR', 'GLACIER', 'DEEP_ARCHIVE', 'REDUCED_REDUNDANCY', 'EXPRESS_ONEZONE'])
      .optional()
      .describe('Storage class of uploaded objects (default: the bucket\'s). Archive classes (GLACIER, DEEP_ARCHIVE) cannot be read back without a restore.'),
    serverSideEncryption: z.enum(['AES256', 'aws:kms', 'aws:kms:dsse']).optional().describe('Server-side encryption of uploaded objects.'),
    sseKmsKeyId: z.string().min(1).optional().describe('KMS key id for `serverSideEncryption: aws:kms`.'),
    accessKeyId: z.string().min(1).optional().describe('Access key id. Default: the standard AWS credential chain (environment, ~/.aws, instance role).'),
    secretAccessKey: z.string().min(1).optional().describe('Secret access key (use `${file:…}` or `${ENV}`; it is masked in logs and errors). Required with `accessKeyId`.'),
    partSizeMB: z.number().int().min(5).max(5120).default(16).describe('Multipart part size in MiB (5–5120). Memory used is about partSizeMB × queueSize.'),
    queueSize: z.number().int().min(1).max(16).default(4).describe('Parts uploaded concurrently per file.'),
    maxAttempts: z.number().int().min(1).max(20).default(5).describe('Attempts per request for transient errors (the SDK\'s retry; the runner retries whole files too).'),
  })
  .strict()
  .refine((o) => (o.accessKeyId === undefined) === (o.secretAccessKey === undefined), {
    message: 'give both accessKeyId and secretAccessKey, or neither (to use the AWS credential chain)',
    path: ['secretAccessKey'],
  });
export type S3Options = z.output<typeof S3Options>;

const SHA256_META = 'sha256';
const PROBE_PREFIX = '.backup-pipeline-probe-';

function isNotFound(error: unknown): boolean {
  const e = error as { name?: string; $metadata?: { httpStatusCode?: number } };
  return e?.name === 'NoSuchKey' || e?.name === 'NotFound' || e?.$metadata?.httpStatusCode === 404;
}


export class S3Destination implements Destination {
  readonly client: S3Client;
  readonly prefix: string;

  constructor(
    readonly options: S3Options,
    private readonly secrets: SecretRegistry,
    private readonly log?: Logger,
  ) {
    secrets.add(options.secretAccessKey);
    const config: S3ClientConfig = {
      region: options.region ?? (options.endpoint ? 'us-east-1' : undefined),
      endpoint: options.endpoint,
      forcePathStyle: options.forcePathStyle,
      maxAttempts: options.maxAttempts,
    };
    if (options.accessKeyId && options.secretAccessKey) {
      config.credentials = { accessKeyId: options.accessKeyId, secretAccessKey: options.secretAccessKey };
    }
    if (options.endpoint) {
      // Third-party S3 servers often reject the SDK's default CRC checksums.
      config.requestChecksumCalculation = 'WHEN_REQUIRED';
      config.responseChecksumValidation = 'WHEN_REQUIRED';
    }
    this.client = new S3Client(config);
    const p = options.prefix.replace(/^\/+/, '');
    this.prefix = p && !p.endsWith('/') ? `${p}/` : p;
  }

  describe(): string {
    return `s3://${this.options.bucket}/${this.prefix}${this.options.endpoint ? ` at ${this.options.endpoint}` : ''}`;
  }

  private key(setId: string, name?: string): string {
    return `${this.prefix}${setId}/${name ?? ''}`;
  }

  /** Wraps an SDK error: one line, secrets masked, SET_NOT_FOUND for a missing object. */
  private fail(what: string, error: unknown): PipelineError {
    if (isPipelineError(error)) return error;
    const e = error as Error & { $metadata?: { httpStatusCode?: number } };
    if ((e as { name?: string })?.name === 'AbortError') return new PipelineError('ABORTED', `${what} was stopped because the run was interrupted`);
    const status = e?.$metadata?.httpStatusCode ? ` (HTTP ${e.$metadata.httpStatusCode})` : '';
    const message = this.secrets.mask(`${what} on ${this.describe()}: ${e?.name ?? 'Error'}${status}: ${String(e?.message ?? e).split('\n')[0]}`);
    return new PipelineError(isNotFound(error) ? 'SET_NOT_FOUND' : 'DESTINATION_FAILED', message);
  }

  private async send<T>(what: string, fn: () => Promise<T>): Promise<T> {
    try {
      return await fn();
    } catch (error) {
      throw this.fail(what, error);
    }
  }

  async check(options: DestinationOperationOptions = {}): Promise<void> {
    const { bucket } = this.options;
    await this.send(`checking bucket ${bucket}`, () => this.client.send(new HeadBucketCommand({ Bucket: bucket }), { abortSignal: options.signal }));
    const key = `${this.prefix}${PROBE_PREFIX}${randomBytes(6).toString('hex')}`;
    await this.send('writing a probe object', () =>
      this.client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: 'backup-pipeline write check\n' }), { abortSignal: options.signal }),
    );
    try {
      await this.client.send(new DeleteObjectCommand({ Bucket: bucket, Key: key }), { abortSignal: options.signal });
    } catch (error) {
      // Append-only credentials can still receive backups; retention will fail later and say so.
      this.log?.warn(`${this.describe()}: cannot delete objects (${this.fail('deleting the probe object', error).message}); retention will not be able to remove old sets`);
    }
  }

  async put(setId: string, name: string, source: PutSource, options: DestinationOperationOptions = {}): Promise<void> {
    assertSetId(setId);
    assertFileName(name);
    const { bucket } = this.options;
    const key = this.key(setId, name);
    const sent = await this.upload(source.path, key, source.sha256, {
      contentType: name.endsWith('.json') ? 'application/json' : 'application/octet-stream',
      queueSize: this.options.queueSize,
      uploading: `${setId}/${name}`,
      stopped: `upload of ${setId}/${name}`,
      signal: options.signal,
      onBytes: options.onBytes,
    });
    const head = await this.send(`checking ${setId}/${name}`, () => this.client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }), { abortSignal: options.signal }));
    const problem =
      sent.sha256 !== source.sha256 || sent.bytes !== source.bytes
        ? `the file read had sha256 ${sent.sha256} (${sent.bytes} bytes), expected ${source.sha256} (${source.bytes} bytes)`
        : head.ContentLength !== source.bytes
          ? `the stored object has ${head.ContentLength} bytes, expected ${source.bytes}`
          : head.Metadata?.[SHA256_META] !== source.sha256
            ? `the stored object's sha256 metadata is ${head.Metadata?.[SHA256_META] ?? 'missing'}, expected ${source.sha256}`
            : undefined;
    if (problem) {
      await this.client.send(new DeleteObjectCommand({ Bucket: bucket, Key: key })).catch(() => {});
      throw new PipelineError('CHECKSUM_MISMATCH', `${setId}/${name} on ${this.describe()}: ${problem}`);
    }
  }

  /**
   * Streams the file at PATH to KEY in a multipart upload with this destination's storage options and
   * SHA256 in the object's metadata, hashing what is read on the way; returns that hash, for the caller
   * to hold against what it expected and against the stored object. Stopped when the signal aborts.
   */
  private async upload(
    path: string,
    key: string,
    sha256: string,
    how: { contentType: string; queueSize: number; uploading: string; stopped: string; signal?: AbortSignal; onBytes?: (bytes: number) => void },
  ): Promise<ReturnType<DigestStream['digest']>> {
    const digest = new DigestStream();
    const file = createReadStream(path);
    file.on('error', (e) => digest.destroy(e));
    file.pipe(digest);
    const upload = new Upload({
      client: this.client,
      params: {
        Bucket: this.options.bucket,
        Key: key,
        Body: digest,
        ContentType: how.contentType,
        Metadata: { [SHA256_META]: sha256 },
        StorageClass: this.options.storageClass as StorageClass | undefined,
        ServerSideEncryption: this.options.serverSideEncryption as ServerSideEncryption | undefined,
        SSEKMSKeyId: this.options.sseKmsKeyId,
      },
      partSize: this.options.partSizeMB * 1024 * 1024,
      queueSize: how.queueSize,
      leavePartsOnError: false,
    });
    const { onBytes, signal } = how;
    if (onBytes) upload.on('httpUploadProgress', (p) => p.loaded !== undefined && onBytes(p.loaded));
    const onAbort = () => void upload.abort().catch(() => {});
    signal?.addEventListener('abort', onAbort, { once: true });
    try {
      await upload.done();
    } catch (error) {
      file.destroy();
      if (signal?.aborted) throw new PipelineError('ABORTED', `${how.stopped} was stopped because the run was interrupted`);
      throw this.fail(`uploading ${how.uploading}`, error);
    } finally {
      signal?.removeEventListener('abort', onAbort);
    }
    return digest.digest();
  }

  /** Every key under `prefix`, page by page. */
  private async *objects(prefix: string, signal?: AbortSignal): AsyncGenerator<_Object> {
    let token: string | undefined;
    do {
      const page = await this.send(`listing ${prefix || '/'}`, () =>
        this.client.send(new ListObjectsV2Command({ Bucket: this.options.bucket, Prefix: prefix, ContinuationToken: token }), { abortSignal: signal }),
      );
      yield* page.Contents ?? [];
      token = nextPageToken({ truncated: page.IsTruncated, token: page.NextContinuationToken }, `listing ${prefix || '/'} on ${this.describe()}`);
    } while (token);
  }

  async list(options: DestinationOperationOptions = {}): Promise<StoredSet[]> {
    const ids: string[] = [];
    let token: string | undefined;
    do {
      const page = await this.send('listing sets', () =>
        this.client.send(new ListObjectsV2Command({ Bucket: this.options.bucket, Prefix: this.prefix, Delimiter: '/', ContinuationToken: token }), { abortSignal: options.signal }),
      );
      for (const cp of page.CommonPrefixes ?? []) {
        const id = cp.Prefix?.slice(this.prefix.length, -1);
        if (id && parseSetId(id) && !id.endsWith(PARTIAL_SUFFIX)) ids.push(id);
      }
      token = nextPageToken({ truncated: page.IsTruncated, token: page.NextContinuationToken }, `listing sets on ${this.describe()}`);
    } while (token);

    const describeSet = async (id: string): Promise<StoredSet> => {
      let manifestAt: Date | undefined;
      let latest: Date | undefined;
      const files: StoredFile[] = [];
      const setPrefix = this.key(id, '');
      for await (const o of this.objects(this.key(id), options.signal)) {
        if (o.Key === this.key(id, MANIFEST_NAME)) manifestAt = o.LastModified;
        if (o.LastModified && (!latest || o.LastModified > latest)) latest = o.LastModified;
        const name = o.Key?.startsWith(setPrefix) ? o.Key.slice(setPrefix.length) : undefined;
        if (name && !name.includes('/')) files.push({ name, bytes: o.Size ?? 0 });
      }
      return { id, hasManifest: manifestAt !== undefined, modifiedAt: manifestAt ?? latest, files, ...treesOf(files) };
    };
    const sets: StoredSet[] = [];
    for (let i = 0; i < ids.length; i += 8) sets.push(...(await Promise.all(ids.slice(i, i + 8).map(describeSet))));
    return sets.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  async get(setId: string, name: string, toPath: string, options: DestinationOperationOptions = {}): Promise<void> {
    assertSetId(setId);
    assertFileName(name);
    const key = this.key(setId, name);
    const object = await this.send(`downloading ${setId}/${name}`, () =>
      this.client.send(new GetObjectCommand({ Bucket: this.options.bucket, Key: key }), { abortSignal: options.signal }),
    );
    if (!object.Body) throw new PipelineError('DESTINATION_FAILED', `${setId}/${name} on ${this.describe()} came without a body`);
    const temp = `${toPath}.download`;
    try {
      const written = await writeFileAtomic(temp, object.Body as Readable, { signal: options.signal, onBytes: options.onBytes });
      const expected = object.Metadata?.[SHA256_META];
      if ((expected && expected !== written.sha256) || (object.ContentLength !== undefined && object.ContentLength !== written.bytes)) {
        throw new PipelineError('CHECKSUM_MISMATCH', `${setId}/${name} from ${this.describe()} has sha256 ${written.sha256} (${written.bytes} bytes), expected ${expected} (${object.ContentLength} bytes)`);
      }
      await rename(temp, toPath);
    } catch (error) {
      await rm(temp, { force: true });
      throw this.fail(`downloading ${setId}/${name}`, error);
    }
  }

  /** The object's body as a stream (restore checks its sha256 on the way, in one pass). */
  async read(setId: string, name: string, options: DestinationOperationOptions = {}): Promise<Readable> {
    assertSetId(setId);
    assertFileName(name);
    const object = await this.send(`downloading ${setId}/${name}`, () =>
      this.client.send(new GetObjectCommand({ Bucket: this.options.bucket, Key: this.key(setId, name) }), { abortSignal: options.signal }),
    );
    if (!object.Body) throw new PipelineError('DESTINATION_FAILED', `${setId}/${name} on ${this.describe()} came without a body`);
    const body = object.Body as Readable;
    const what = `downloading ${setId}/${name}`;
    let bytes = 0;
    // A transfer cut short makes the stream fail, named as this destination's failure.
    const out = new PassThrough({ highWaterMark: 1024 * 1024 });
    body.on('data', (chunk: Buffer) => options.onBytes?.((bytes += chunk.length)));
    body.on('error', (error) => out.destroy(this.fail(what, error) as Error));
    out.on('close', () => body.destroy());
    body.pipe(out);
    return out;
  }

  async delete(setId: string, options: DestinationOperationOptions = {}): Promise<void> {
    assertSetId(setId);
    const { bucket } = this.options;
    // Contents this set's trees reference: deleted after the set, unless another set references them too.
    const candidates = await this.referencedBy(setId, options);
    // The manifest goes first: a set deleted halfway is then incomplete, never a broken "complete" set.
    await this.send(`deleting ${setId}/${MANIFEST_NAME}`, () =>
      this.client.send(new DeleteObjectCommand({ Bucket: bucket, Key: this.key(setId, MANIFEST_NAME) }), { abortSignal: options.signal }),
    );
    let batch: string[] = [];
    const flush = async () => {
      if (batch.length === 0) return;
      const keys = batch;
      batch = [];
      const result = await this.send(`deleting ${setId}`, () =>
        this.client.send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: keys.map((Key) => ({ Key })), Quiet: true } }), { abortSignal: options.signal }),
      );
      if (result.Errors?.length) {
        const e = result.Errors[0]!;
        throw new PipelineError('DESTINATION_FAILED', `deleting ${setId} on ${this.describe()}: ${result.Errors.length} object(s) not deleted (${e.Key}: ${e.Code} ${e.Message ?? ''})`);
      }
    };
    // Collect first, then delete: deleting while paginating can skip keys.
    const keys: string[] = [];
    for await (const o of this.objects(this.key(setId), options.signal)) if (o.Key) keys.push(o.Key);
    for (const key of keys) {
      batch.push(key);
      if (batch.length === 1000) await flush();
    }
    await flush();
    await this.sweep(candidates, options);
  }

  // ── trees: contents as objects keyed by sha256 under `PREFIX.objects/sha256/`, shared by every set;
  //    a set's tree is its seal `SET/NAME.tree` (the index: which content each path has) ─────────────

  private objectKey(sha256: string): string {
    return `${this.prefix}${OBJECTS_DIR}${sha256.slice(0, 2)}/${sha256}`;
  }

  /** sha256 → size and time of every content object. */
  private async contentObjects(signal?: AbortSignal): Promise<Map<string, { bytes: number; modifiedAt?: Date }>> {
    const out = new Map<string, { bytes: number; modifiedAt?: Date }>();
    // ListObjects (v1, paged by the last key): understood by every S3-compatible server, at any count.
    let marker: string | undefined;
    for (;;) {
      const page = await this.send('listing contents', () =>
        this.client.send(new ListObjectsCommand({ Bucket: this.options.bucket, Prefix: `${this.prefix}${OBJECTS_DIR}`, Marker: marker }), { abortSignal: signal }),
      );
      for (const o of page.Contents ?? []) {
        const sha = o.Key?.slice(o.Key.lastIndexOf('/') + 1);
        if (sha && /^[0-9a-f]{64}$/.test(sha)) out.set(sha, { bytes: o.Size ?? 0, modifiedAt: o.LastModified });
      }
      marker = page.Contents?.at(-1)?.Key;
      if (!page.IsTruncated || !marker) return out;
    }
  }

  async putTree(setId: string, name: string, source: TreeSource, options: TreeOperationOptions = {}): Promise<TreePutResult> {
    assertSetId(setId);
    assertFileName(name);
    const { bucket } = this.options;
    const present = await this.contentObjects(options.signal);
    // One upload per new content (two paths with the same bytes share one object).
    const wanted = new Map<string, TreeEntry>();
    for (const entry of source.entries) if (!present.has(entry.sha256) || present.get(entry.sha256)!.bytes !== entry.bytes) wanted.set(entry.sha256, entry);
    let bytesWritten = 0;
    await eachLimited(
      [...wanted.values()],
      8,
      async (entry) => {
        const key = this.objectKey(entry.sha256);
        // One part at a time for each content: eachLimited already has eight contents going up at once.
        const sent = await this.upload(pathInTree(source.dir, entry.path), key, entry.sha256, {
          contentType: 'application/octet-stream',
          queueSize: 1,
          uploading: `${setId}/${name}/${entry.path}`,
          stopped: `upload of tree ${setId}/${name}`,
          signal: options.signal,
        });
        const head = await this.send(`checking ${setId}/${name}/${entry.path}`, () => this.client.send(new HeadObjectCommand({ Bucket: bucket, Key: key }), { abortSignal: options.signal }));
        if (sent.sha256 !== entry.sha256 || sent.bytes !== entry.bytes || head.ContentLength !== entry.bytes || head.Metadata?.[SHA256_META] !== entry.sha256) {
          await this.client.send(new DeleteObjectCommand({ Bucket: bucket, Key: key })).catch(() => {});
          throw new PipelineError('CHECKSUM_MISMATCH', `${setId}/${name}/${entry.path} on ${this.describe()}: read ${sent.sha256} (${sent.bytes} bytes), stored ${head.ContentLength} bytes with sha256 ${head.Metadata?.[SHA256_META] ?? 'missing'}; expected ${entry.sha256} (${entry.bytes} bytes)`);
        }
        bytesWritten += entry.bytes;
        options.onBytes?.(bytesWritten);
      },
      options.signal,
    );
    // The seal last: the index of the tree, which is also what keeps its contents from being swept.
    const work = await mkdtemp(join(tmpdir(), 's3-seal-'));
    try {
      const seal = join(work, 'seal');
      const digest = await writeTreeIndex(seal, source.entries);
      await this.put(setId, treeSealName(name), { path: seal, ...digest }, { signal: options.signal });
    } finally {
      await rm(work, { recursive: true, force: true });
    }
    return { files: source.entries.length, bytes: source.entries.reduce((n, e) => n + e.bytes, 0), filesWritten: wanted.size, bytesWritten };
  }

  async getTree(setId: string, name: string, entries: readonly TreeEntry[], toDir: string, options: TreeOperationOptions = {}): Promise<void> {
    assertSetId(setId);
    assertFileName(name);
    const { bucket } = this.options;
    await this.send(`checking tree ${setId}/${name}`, () => this.client.send(new HeadObjectCommand({ Bucket: bucket, Key: this.key(setId, treeSealName(name)) }), { abortSignal: options.signal }));
    let done = 0;
    await eachLimited(
      entries,
      8,
      async (entry) => {
        const object = await this.send(`downloading ${setId}/${name}/${entry.path}`, () =>
          this.client.send(new GetObjectCommand({ Bucket: bucket, Key: this.objectKey(entry.sha256) }), { abortSignal: options.signal }),
        );
        if (!object.Body) throw new PipelineError('DESTINATION_FAILED', `${setId}/${name}/${entry.path} on ${this.describe()} came without a body`);
        const to = pathInTree(toDir, entry.path);
        const written = await writeFileAtomic(to, object.Body as Readable, { signal: options.signal });
        try {
          checkTreeFile(entry, written, `${this.describe()} ${setId}/${name}`);
        } catch (error) {
          await rm(to, { force: true });
          throw error;
        }
        options.onBytes?.((done += entry.bytes));
      },
      options.signal,
    );
  }

  async treeEntries(setId: string, name: string, options: TreeOperationOptions = {}): Promise<TreeEntry[]> {
    assertSetId(setId);
    assertFileName(name);
    const work = await mkdtemp(join(tmpdir(), 's3-seal-'));
    try {
      const path = join(work, 'seal');
      await this.get(setId, treeSealName(name), path, options);
      return await readTreeIndex(path);
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  }

  /** The contents the trees of `setId` reference (its seals), read before the set is deleted. */
  private async referencedBy(setId: string, options: DestinationOperationOptions): Promise<Set<string>> {
    const out = new Set<string>();
    for await (const o of this.objects(this.key(setId), options.signal)) {
      const name = o.Key?.slice(this.key(setId).length);
      if (!name || name.includes('/') || !name.endsWith('.tree')) continue;
      const entries = await this.sealEntries(o.Key!, options).catch(() => undefined);
      for (const e of entries ?? []) out.add(e.sha256);
    }
    return out;
  }

  private async sealEntries(key: string, options: DestinationOperationOptions): Promise<TreeEntry[]> {
    const object = await this.send(`reading ${key}`, () => this.client.send(new GetObjectCommand({ Bucket: this.options.bucket, Key: key }), { abortSignal: options.signal }));
    return parseTreeIndex(await object.Body!.transformToString('utf8'));
  }

  /**
   * Deletes content objects no remaining set references: those `candidates` named (what a deleted
   * set referenced), and any left unreferenced for more than a day (uploads of a run that failed
   * before its seal). When any seal cannot be read, nothing is deleted (its references are unknown).
   */
  private async sweep(candidates: Set<string>, options: DestinationOperationOptions): Promise<void> {
    const referenced = new Set<string>();
    for (const set of await listSets(this)) {
      // A set whose manifest names a tree that has no seal (lost, or never finished) is damaged and
      // kept for a person; its contents may still be all there, and its references are unknown.
      const sealed = new Set((set.trees ?? []).map((t) => t.name));
      const lost = set.hasManifest && !set.manifest ? ['(its manifest cannot be read)'] : (set.manifest?.artifacts ?? []).flatMap((a) => (a.tree && !sealed.has(a.tree.name) ? [a.tree.name] : []));
      if (lost.length > 0) {
        this.log?.warn(`${this.describe()}: set ${set.id} names tree(s) ${lost.join(', ')} without a seal; no content is deleted until a person looks at it`);
        return;
      }
      for (const tree of set.trees ?? []) {
        const entries = await this.sealEntries(this.key(set.id, treeSealName(tree.name)), options).catch((error: unknown) => {
          this.log?.warn(`${this.describe()}: the seal of tree ${set.id}/${tree.name} cannot be read (${(error as Error).message}); unreferenced contents are kept for now`);
          return undefined;
        });
        if (!entries) return;
        for (const e of entries) referenced.add(e.sha256);
      }
    }
    const dayAgo = Date.now() - 24 * 3600_000;
    const doomed = [...(await this.contentObjects(options.signal))]
      .filter(([sha, o]) => !referenced.has(sha) && (candidates.has(sha) || (o.modifiedAt !== undefined && o.modifiedAt.getTime() < dayAgo)))
      .map(([sha]) => this.objectKey(sha));
    for (let i = 0; i < doomed.length; i += 1000) {
      const keys = doomed.slice(i, i + 1000);
      const result = await this.send('deleting unreferenced contents', () =>
        this.client.send(new DeleteObjectsCommand({ Bucket: this.options.bucket, Delete: { Objects: keys.map((Key) => ({ Key })), Quiet: true } }), { abortSignal: options.signal }),
      );
      if (result.Errors?.length) throw new PipelineError('DESTINATION_FAILED', `deleting unreferenced contents on ${this.describe()}: ${result.Errors.length} object(s) not deleted`);
    }
  }
}

/** Content objects live here, beside (never inside) the set prefixes; `list` never takes it for a set. */
const OBJECTS_DIR = '.objects/sha256/';

/** The trees a set's listing shows sealed (`NAME.tree`). */
function treesOf(files: readonly StoredFile[]): { trees?: Array<{ name: string }> } {
  const trees = files.filter((f) => f.name.endsWith('.tree') && f.name.length > '.tree'.length).map((f) => ({ name: f.name.slice(0, -'.tree'.length) }));
  return trees.length > 0 ? { trees } : {};
}

export default definePlugin({
  name: 's3',
  description: 'Destination: an S3 bucket (AWS or any S3-compatible service: MinIO, Garage, Ceph, B2, Wasabi…).',
  destination: {
    options: S3Options,
    create: (options, api) => new S3Destination(options, api.secrets, api.log),
  },
});
