/**
 * The `bucket-copy` stage: copies Mastodon's media bucket (`S3_ENABLED=true`) to a bucket in
 * another account or provider, incrementally. Both buckets are listed; an object is copied only
 * when the target lacks it or differs in size or ETag; nothing is deleted at the target unless
 * `deleteExtraneous` says so.
 *
 * Where source and target share the endpoint and the credentials the copy is server-side
 * (`CopyObject`; multipart `UploadPartCopy` above 5 GiB, CopyObject's limit), otherwise each
 * object is streamed GetObject → Upload, never held whole in memory.
 *
 * A multipart ETag depends on the part size, so a copy's ETag may differ from its source's even
 * when the bytes are equal: the stage keeps a small state object in the target
 * (`<prefix>.backup-pipeline-bucket-copy.json`: key → source ETag, target ETag) and counts an
 * object as copied when the target still has the ETag it got from that source ETag.
 *
 * The artifact is this run's copy index (JSON Lines: a summary line, then one line per object
 * with what was done), so the set records what the target held for it.
 */
import { Readable } from 'node:stream';
import { join } from 'node:path';
import { readFile } from 'node:fs/promises';
import {
  CompleteMultipartUploadCommand,
  CopyObjectCommand,
  CreateMultipartUploadCommand,
  AbortMultipartUploadCommand,
  DeleteObjectsCommand,
  GetObjectCommand,
  HeadBucketCommand,
  HeadObjectCommand,
  ListObjectsV2Command,
  PutObjectCommand,
  S3Client,
  UploadPartCopyCommand,
  type S3ClientConfig,
} from '@aws-sdk/client-s3';
import { Upload } from '@aws-sdk/lib-storage';
import { definePlugin, isPipelineError, nextPageToken, parseEnvFile, PipelineError, recordDrill, writeFileAtomic, z, type Artifact, type RestoreContext, type SecretRegistry } from '@backup-pipeline/core';

export const FORMAT = 'bucket-copy-index';
const STATE_NAME = '.backup-pipeline-bucket-copy.json';

const Bucket = z
  .object({
    bucket: z.string().min(3).max(63).describe('Bucket name.'),
    prefix: z.string().default('').describe('Only keys under this prefix (source) / put copies under it (target).'),
    endpoint: z.string().url().optional().describe('Endpoint of an S3-compatible service (default: AWS).'),
    region: z.string().min(1).optional().describe('Region (default us-east-1 with an endpoint, else the SDK\'s resolution).'),
    forcePathStyle: z.boolean().optional().describe('Path-style URLs (`endpoint/bucket/key`); default true with an endpoint, as Mastodon does.'),
    accessKeyId: z.string().min(1).optional().describe('Access key id (default: the AWS credential chain).'),
    secretAccessKey: z.string().min(1).optional().describe('Secret access key: a `${file:…}` or `${ENV}` reference; masked in logs and errors.'),
  })
  .strict()
  .refine((o) => (o.accessKeyId === undefined) === (o.secretAccessKey === undefined), { message: 'give both accessKeyId and secretAccessKey, or neither', path: ['secretAccessKey'] });

export const optionsSchema = z
  .object({
    from: z
      .enum(['mastodon', 'options'])
      .default('mastodon')
      .describe("Where the source bucket comes from: Mastodon's .env.production (`mastodon`: S3_BUCKET, S3_ENDPOINT, S3_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY) or `source` (`options`)."),
    envFile: z.string().min(1).default('~/live/.env.production').describe('Mastodon env file read with `from: mastodon`.'),
    source: Bucket.optional().describe('The source bucket (`from: options`).'),
    target: Bucket.describe('The bucket the media is copied to (another account or provider).'),
    method: z
      .enum(['auto', 'server-side', 'stream'])
      .default('auto')
      .describe('`auto`: server-side CopyObject when source and target share the endpoint and the access key, streaming otherwise.'),
    exclude: z
      .array(z.string().min(1))
      .default(['cache/'])
      .describe("Key prefixes (under `prefix`) that are not copied, and never deleted at the target. Default `cache/`: remote media Mastodon fetches again when needed (often tens of GB); the run reports what it left out."),
    deleteExtraneous: z.boolean().default(false).describe('Delete objects under the target prefix that are no longer in the source. Default false: the target only grows.'),
    maxDeletePercent: z
      .number()
      .min(0)
      .max(100)
      .default(10)
      .describe('With `deleteExtraneous`: the most of the target\'s objects one run may delete, in percent. A source that lost more (a wrong prefix, an emptied bucket) fails the run and deletes nothing, for a person to look.'),
    concurrency: z.number().int().min(1).max(32).default(4).describe('Objects copied at the same time.'),
    multipartCopyThresholdMB: z.number().int().min(5).max(5 * 1024).default(5 * 1024).describe('Server-side copies of objects larger than this use multipart UploadPartCopy (CopyObject takes at most 5 GiB).'),
    partSizeMB: z.number().int().min(5).max(5120).default(512).describe('Part size of multipart copies and streamed uploads, in MiB.'),
    name: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9._-]*$/).default('bucket-copy.jsonl').describe('File name of the copy index in the set.'),
    maxAttempts: z.number().int().min(1).max(20).default(5).describe('Attempts per request for transient errors.'),
  })
  .strict()
  .superRefine((o, ctx) => {
    if (o.from === 'options' && !o.source) ctx.addIssue({ code: 'custom', path: ['source'], message: 'required with from: options' });
    if (o.from === 'mastodon' && o.source) ctx.addIssue({ code: 'custom', path: ['source'], message: 'only used with from: options (from is mastodon: the source is read from envFile)' });
  });

export type BucketCopyOptions = z.output<typeof optionsSchema>;
type BucketOptions = z.output<typeof Bucket>;

export interface Side {
  bucket: string;
  prefix: string;
  endpoint?: string;
  region?: string;
  forcePathStyle: boolean;
  accessKeyId?: string;
  secretAccessKey?: string;
  /** Where these settings came from (no secrets). */
  origin: string;
}

const normPrefix = (p: string) => {
  const q = p.replace(/^\/+/, '');
  return q && !q.endsWith('/') ? `${q}/` : q;
};

function side(o: BucketOptions, origin: string): Side {
  return { ...o, prefix: normPrefix(o.prefix), forcePathStyle: o.forcePathStyle ?? o.endpoint !== undefined, origin };
}

/** The media bucket Mastodon writes to, from its env file (as config/initializers/paperclip.rb reads it). */
export function sourceFromMastodon(vars: Map<string, { value: string }>, file: string, secrets: SecretRegistry): Side {
  const get = (k: string) => vars.get(k)?.value || undefined;
  secrets.add(get('AWS_SECRET_ACCESS_KEY'));
  if (get('S3_ENABLED') !== 'true') {
    throw new PipelineError('BUCKET_COPY_NO_BUCKET', `${file} does not say S3_ENABLED=true: Mastodon keeps its media on disk`, {
      hint: 'Back up the local media folder (public/system) with the files or media stage instead, or give the bucket with from: options.',
    });
  }
  const bucket = get('S3_BUCKET');
  if (!bucket) throw new PipelineError('BUCKET_COPY_NO_BUCKET', `${file} says S3_ENABLED=true but sets no S3_BUCKET`, { hint: 'Add S3_BUCKET, or give the bucket with from: options.' });
  const endpoint = get('S3_ENDPOINT');
  return {
    bucket,
    prefix: '',
    endpoint,
    region: get('S3_REGION'),
    forcePathStyle: endpoint !== undefined && get('S3_OVERRIDE_PATH_STYLE') !== 'true',
    accessKeyId: get('AWS_ACCESS_KEY_ID'),
    secretAccessKey: get('AWS_SECRET_ACCESS_KEY'),
    origin: file,
  };
}

export function clientFor(s: Side, maxAttempts: number): S3Client {
  // The same client settings as the s3 destination plugin.
  const config: S3ClientConfig = { region: s.region ?? (s.endpoint ? 'us-east-1' : undefined), endpoint: s.endpoint, forcePathStyle: s.forcePathStyle, maxAttempts };
  if (s.accessKeyId && s.secretAccessKey) config.credentials = { accessKeyId: s.accessKeyId, secretAccessKey: s.secretAccessKey };
  if (s.endpoint) {
    config.requestChecksumCalculation = 'WHEN_REQUIRED';
    config.responseChecksumValidation = 'WHEN_REQUIRED';
  }
  return new S3Client(config);
}

export const describeSide = (s: Side) => `s3://${s.bucket}/${s.prefix}${s.endpoint ? ` at ${s.endpoint}` : ''}`;

/** Server-side copies need one endpoint and one set of credentials that can read the source and write the target. */
export function sameProvider(a: Side, b: Side): boolean {
  const ep = (e?: string) => (e ? e.replace(/\/+$/, '').toLowerCase() : '');
  return ep(a.endpoint) === ep(b.endpoint) && (a.accessKeyId ?? '') === (b.accessKeyId ?? '') && (a.secretAccessKey ?? '') === (b.secretAccessKey ?? '');
}

export interface Listed {
  key: string;
  size: number;
  etag: string;
}

const unquote = (etag: string | undefined) => (etag ?? '').replace(/^"|"$/g, '');

/** The server answered NotImplemented to UploadPartCopy. */
class PartCopyUnsupported extends Error {}
const notImplemented = (error: unknown) => {
  const e = error as { name?: string; Code?: string; $metadata?: { httpStatusCode?: number } };
  return e?.name === 'NotImplemented' || e?.Code === 'NotImplemented' || e?.$metadata?.httpStatusCode === 501;
};

export type Action = 'copied' | 'unchanged' | 'deleted';
export interface IndexEntry {
  key: string;
  size: number;
  etag: string;
  action: Action;
}
export interface CopySummary {
  source: string;
  target: string;
  method: 'server-side' | 'stream';
  objects: number;
  bytes: number;
  copied: number;
  bytesCopied: number;
  skipped: number;
  bytesSkipped: number;
  deleted: number;
  /** Source objects under an `exclude` prefix, not copied. */
  excluded: number;
  bytesExcluded: number;
}

/** What the target holds of each source object: key → the source ETag it was copied from, and the ETag the copy got. */
export type State = Record<string, { source: string; target: string }>;

/**
 * Which source objects to copy: those the target lacks, or holds with another size, or with an
 * ETag that is neither the source's nor the one a copy from this very source ETag got (multipart
 * ETags depend on the part size, so equal bytes can have different ETags). `next` keeps the state
 * entries that still describe the target.
 */
export function compareListings(sources: readonly Listed[], target: ReadonlyMap<string, Listed>, state: State): { todo: Listed[]; unchanged: Listed[]; next: State } {
  const todo: Listed[] = [];
  const unchanged: Listed[] = [];
  const next: State = {};
  for (const o of sources) {
    const t = target.get(o.key);
    const recorded = state[o.key];
    const same = t !== undefined && t.size === o.size && (t.etag === o.etag || (recorded?.source === o.etag && recorded.target === t.etag));
    if (same) unchanged.push(o);
    else todo.push(o);
    if (same && recorded && recorded.target === t.etag) next[o.key] = recorded;
  }
  return { todo, unchanged, next };
}

export default definePlugin({
  name: 'bucket-copy',
  description: "Copies Mastodon's media bucket (S3_ENABLED=true) to a bucket in another account or provider, incrementally by ETag and size; server-side where it can.",
  options: optionsSchema,
  errors: {
    BUCKET_COPY_NO_BUCKET: 'The env file does not say S3_ENABLED=true with an S3_BUCKET: back up public/system instead, or give the bucket with from: options.',
    BUCKET_COPY_CONFIG_UNREADABLE: 'Fix envFile or run as the user that can read it.',
    BUCKET_COPY_ACCESS_DENIED: 'Check the credentials: the source\'s must list and read, the target\'s list, read and write.',
    BUCKET_COPY_FAILED: 'Check the endpoint and bucket are reachable; objects already copied stay copied and are not copied again.',
    BUCKET_COPY_SAME_BUCKET: 'Copy to another bucket, better in another account or provider.',
    BUCKET_COPY_INDEX_INVALID: 'The copy index of this set is damaged: run the copy again.',
    BUCKET_COPY_DELETE_REFUSED: 'Check the source bucket and prefix (were its objects deleted?). If the deletions are meant, run once with a higher maxDeletePercent.',
    BUCKET_COPY_TARGET_INCOMPLETE: 'Objects were deleted or overwritten at the target since the set was made: run the copy again, keep deleteExtraneous off.',
  },
  apply(hooks, options, { log, resolvePath, secrets }) {
    let src: Side | undefined;
    const dst = side(options.target, 'stage options (target)');
    secrets.add(dst.secretAccessKey);
    secrets.add(options.source?.secretAccessKey);
    const clients = new Map<Side, S3Client>();
    const client = (s: Side) => clients.get(s) ?? clients.set(s, clientFor(s, options.maxAttempts)).get(s)!;

    const fail = (what: string, s: Side, error: unknown): PipelineError => {
      if (isPipelineError(error)) return error;
      const e = error as Error & { name?: string; $metadata?: { httpStatusCode?: number } };
      if (e?.name === 'AbortError') return new PipelineError('ABORTED', `${what} was stopped because the run was interrupted`);
      const status = e?.$metadata?.httpStatusCode ? ` (HTTP ${e.$metadata.httpStatusCode})` : '';
      const denied = e?.$metadata?.httpStatusCode === 403 || /AccessDenied|InvalidAccessKeyId|SignatureDoesNotMatch/.test(e?.name ?? '');
      return new PipelineError(denied ? 'BUCKET_COPY_ACCESS_DENIED' : 'BUCKET_COPY_FAILED', secrets.mask(`${what} on ${describeSide(s)}: ${e?.name ?? 'Error'}${status}: ${String(e?.message ?? e).split('\n')[0]}`), {
        hint: denied ? `Check the credentials of ${s.origin} and that they may list and read (source) or write (target) the bucket.` : 'Check the endpoint and bucket are reachable; objects already copied stay copied.',
      });
    };
    const send = async <T>(what: string, s: Side, fn: () => Promise<T>): Promise<T> => {
      try {
        return await fn();
      } catch (error) {
        throw fail(what, s, error);
      }
    };

    async function list(s: Side, signal: AbortSignal): Promise<Listed[]> {
      const out: Listed[] = [];
      let token: string | undefined;
      do {
        const page = await send(`listing`, s, () => client(s).send(new ListObjectsV2Command({ Bucket: s.bucket, Prefix: s.prefix || undefined, ContinuationToken: token }), { abortSignal: signal }));
        for (const o of page.Contents ?? []) if (o.Key !== undefined) out.push({ key: o.Key.slice(s.prefix.length), size: o.Size ?? 0, etag: unquote(o.ETag) });
        token = nextPageToken({ truncated: page.IsTruncated, token: page.NextContinuationToken }, `listing ${describeSide(s)}`);
      } while (token);
      return out;
    }

    async function readState(signal: AbortSignal): Promise<State> {
      try {
        const got = await client(dst).send(new GetObjectCommand({ Bucket: dst.bucket, Key: dst.prefix + STATE_NAME }), { abortSignal: signal });
        const parsed = JSON.parse((await got.Body?.transformToString()) ?? '{}') as { objects?: State };
        return parsed.objects && typeof parsed.objects === 'object' ? parsed.objects : {};
      } catch (error) {
        const e = error as { name?: string; $metadata?: { httpStatusCode?: number } };
        if (e?.name === 'NoSuchKey' || e?.$metadata?.httpStatusCode === 404) return {};
        if (error instanceof SyntaxError) {
          log.warn({ target: describeSide(dst) }, `${STATE_NAME} in the target is not valid JSON; comparing by ETag and size only`);
          return {};
        }
        throw fail('reading the copy state', dst, error);
      }
    }

    let partCopyWarned = false;
    const copySource = (key: string) => `${src!.bucket}/${(src!.prefix + key).split('/').map(encodeURIComponent).join('/')}`;

    async function copyServerSide(o: Listed, signal: AbortSignal): Promise<string> {
      const Key = dst.prefix + o.key;
      if (o.size <= options.multipartCopyThresholdMB * 1024 * 1024) {
        const r = await send(`copying ${o.key}`, dst, () => client(dst).send(new CopyObjectCommand({ Bucket: dst.bucket, Key, CopySource: copySource(o.key) }), { abortSignal: signal }));
        return unquote(r.CopyObjectResult?.ETag);
      }
      const created = await send(`starting the multipart copy of ${o.key}`, dst, () => client(dst).send(new CreateMultipartUploadCommand({ Bucket: dst.bucket, Key }), { abortSignal: signal }));
      const UploadId = created.UploadId!;
      try {
        const part = options.partSizeMB * 1024 * 1024;
        const parts: Array<{ ETag: string; PartNumber: number }> = [];
        for (let start = 0, n = 1; start < o.size; start += part, n++) {
          const end = Math.min(start + part, o.size) - 1;
          const r = await client(dst)
            .send(new UploadPartCopyCommand({ Bucket: dst.bucket, Key, UploadId, PartNumber: n, CopySource: copySource(o.key), CopySourceRange: `bytes=${start}-${end}` }), { abortSignal: signal })
            .catch((error: unknown) => {
              throw notImplemented(error) ? new PartCopyUnsupported() : fail(`copying part ${n} of ${o.key}`, dst, error);
            });
          parts.push({ ETag: r.CopyPartResult!.ETag!, PartNumber: n });
        }
        const done = await send(`completing the multipart copy of ${o.key}`, dst, () => client(dst).send(new CompleteMultipartUploadCommand({ Bucket: dst.bucket, Key, UploadId, MultipartUpload: { Parts: parts } }), { abortSignal: signal }));
        return unquote(done.ETag);
      } catch (error) {
        await client(dst).send(new AbortMultipartUploadCommand({ Bucket: dst.bucket, Key, UploadId })).catch(() => {});
        if (!(error instanceof PartCopyUnsupported)) throw error;
        // Some S3-compatible servers have CopyObject but not UploadPartCopy: stream this one instead.
        if (!partCopyWarned) log.warn({ target: describeSide(dst) }, `${describeSide(dst)} does not implement UploadPartCopy: objects over ${options.multipartCopyThresholdMB} MiB are streamed instead`);
        partCopyWarned = true;
        return copyStreaming(o, signal);
      }
    }

    async function copyStreaming(o: Listed, signal: AbortSignal): Promise<string> {
      const got = await send(`reading ${o.key}`, src!, () => client(src!).send(new GetObjectCommand({ Bucket: src!.bucket, Key: src!.prefix + o.key }), { abortSignal: signal }));
      if (!got.Body) throw new PipelineError('BUCKET_COPY_FAILED', `${o.key} on ${describeSide(src!)} came without a body`);
      const upload = new Upload({
        client: client(dst),
        params: {
          Bucket: dst.bucket,
          Key: dst.prefix + o.key,
          Body: got.Body as Readable,
          ContentLength: got.ContentLength,
          ContentType: got.ContentType,
          CacheControl: got.CacheControl,
          ContentDisposition: got.ContentDisposition,
          ContentEncoding: got.ContentEncoding,
          Metadata: got.Metadata,
        },
        partSize: Math.max(5 * 1024 * 1024, Math.min(options.partSizeMB * 1024 * 1024, 64 * 1024 * 1024)),
        queueSize: 1,
        leavePartsOnError: false,
      });
      const onAbort = () => void upload.abort().catch(() => {});
      signal.addEventListener('abort', onAbort, { once: true });
      try {
        const r = await send(`uploading ${o.key}`, dst, () => upload.done());
        const etag = unquote((r as { ETag?: string }).ETag);
        if (etag) return etag;
        const head = await send(`checking ${o.key}`, dst, () => client(dst).send(new HeadObjectCommand({ Bucket: dst.bucket, Key: dst.prefix + o.key }), { abortSignal: signal }));
        if ((head.ContentLength ?? -1) !== o.size) throw new PipelineError('BUCKET_COPY_FAILED', `${o.key} on ${describeSide(dst)} has ${head.ContentLength} bytes after the copy, the source ${o.size}`);
        return unquote(head.ETag);
      } finally {
        signal.removeEventListener('abort', onAbort);
      }
    }

    hooks.connect.tapPromise('bucket-copy', async (ctx) => {
      if (options.from === 'options') {
        src = side(options.source!, 'stage options (source)');
      } else {
        const file = resolvePath(options.envFile);
        const text = await readFile(file, 'utf8').catch((error: unknown) => {
          const code = (error as NodeJS.ErrnoException).code;
          throw new PipelineError('BUCKET_COPY_CONFIG_UNREADABLE', `cannot read the env file ${file}: ${code === 'ENOENT' ? 'it does not exist' : (code ?? 'error')}`, {
            hint: 'Fix envFile (usually ~/live/.env.production) or run as the user that can read it.',
          });
        });
        src = sourceFromMastodon(parseEnvFile(text, file), file, ctx.secrets);
      }
      ctx.secrets.add(src.secretAccessKey);
      ctx.secrets.add(dst.secretAccessKey);
    });

    const method = () => (options.method === 'auto' ? (sameProvider(src!, dst) ? 'server-side' : 'stream') : options.method);

    hooks.preflight.tapPromise('bucket-copy', async (ctx) => {
      if (src!.bucket === dst.bucket && sameProvider(src!, dst) && (src!.prefix.startsWith(dst.prefix) || dst.prefix.startsWith(src!.prefix))) {
        throw new PipelineError('BUCKET_COPY_SAME_BUCKET', `the target ${describeSide(dst)} overlaps the source ${describeSide(src!)}`, { hint: 'Copy to another bucket (better: another account or provider).' });
      }
      await send('checking the source bucket', src!, () => client(src!).send(new HeadBucketCommand({ Bucket: src!.bucket }), { abortSignal: ctx.signal }));
      await send('checking the target bucket', dst, () => client(dst).send(new HeadBucketCommand({ Bucket: dst.bucket }), { abortSignal: ctx.signal }));
      log.info({ source: describeSide(src!), target: describeSide(dst), method: method() }, `media bucket ${describeSide(src!)} → ${describeSide(dst)} (${method()})`);
    });

    hooks.plan.tapPromise('bucket-copy', async (plan) => {
      plan.add({
        plugin: 'bucket-copy',
        hook: 'produce',
        description: `copy what differs (ETag, size) from ${src ? describeSide(src) : 'the media bucket'} to ${describeSide(dst)}, ${src ? method() : options.method}${options.deleteExtraneous ? ', deleting target objects no longer in the source' : ', deleting nothing at the target'}; index in ${options.name}`,
      });
    });

    hooks.produce.tapPromise('bucket-copy', async (ctx) => {
      const how = method();
      const [listed, targets, state] = await Promise.all([list(src!, ctx.signal), list(dst, ctx.signal), readState(ctx.signal)]);
      const isExcluded = (key: string) => options.exclude.some((p) => key.startsWith(p));
      const sources = listed.filter((o) => !isExcluded(o.key));
      const excluded = listed.filter((o) => isExcluded(o.key));
      const have = new Map(targets.filter((t) => t.key !== STATE_NAME && !isExcluded(t.key)).map((t) => [t.key, t]));
      const { todo, unchanged, next } = compareListings(sources, have, state);
      const entries: IndexEntry[] = unchanged.map((o) => ({ key: o.key, size: o.size, etag: o.etag, action: 'unchanged' as const }));
      let bytesCopied = 0;
      let done = 0;
      const copyOne = async (o: Listed) => {
        const etag = how === 'server-side' ? await copyServerSide(o, ctx.signal) : await copyStreaming(o, ctx.signal);
        next[o.key] = { source: o.etag, target: etag };
        entries.push({ key: o.key, size: o.size, etag: o.etag, action: 'copied' });
        bytesCopied += o.size;
        done++;
        ctx.progress({ task: 'copy', done, total: todo.length, bytes: bytesCopied });
      };
      // A bounded pool: `concurrency` objects at a time, the first failure stops the rest.
      const queue = [...todo];
      let failed: unknown;
      await Promise.all(
        Array.from({ length: Math.min(options.concurrency, queue.length) }, async () => {
          while (queue.length > 0 && failed === undefined && !ctx.signal.aborted) {
            const o = queue.shift()!;
            await copyOne(o).catch((error: unknown) => (failed ??= error));
          }
        }),
      );
      // What was copied before a failure stays copied: record it so the next run does not copy it again.
      await send('writing the copy state', dst, () =>
        client(dst).send(new PutObjectCommand({ Bucket: dst.bucket, Key: dst.prefix + STATE_NAME, Body: JSON.stringify({ source: describeSide(src!), objects: next }), ContentType: 'application/json' })),
      ).catch((error: unknown) => log.warn({ target: describeSide(dst) }, `could not write ${STATE_NAME}: ${(error as Error).message}`));
      if (failed !== undefined) throw failed;
      if (ctx.signal.aborted) throw new PipelineError('ABORTED', 'the bucket copy was interrupted');

      let deleted = 0;
      if (options.deleteExtraneous) {
        const wanted = new Set(sources.map((o) => o.key));
        const extra = [...have.keys()].filter((k) => !wanted.has(k));
        // The target is the backup: a source that suddenly lacks much of it is a reason to stop, not to follow.
        if (extra.length > 0 && (wanted.size === 0 || extra.length > (have.size * options.maxDeletePercent) / 100)) {
          throw new PipelineError(
            'BUCKET_COPY_DELETE_REFUSED',
            `${describeSide(src!)} lacks ${extra.length} of the ${have.size} objects at ${describeSide(dst)} (more than maxDeletePercent ${options.maxDeletePercent}%); nothing was deleted at the target`,
          );
        }
        for (let i = 0; i < extra.length; i += 1000) {
          const batch = extra.slice(i, i + 1000);
          const r = await send('deleting objects no longer in the source', dst, () =>
            client(dst).send(new DeleteObjectsCommand({ Bucket: dst.bucket, Delete: { Objects: batch.map((k) => ({ Key: dst.prefix + k })), Quiet: true } }), { abortSignal: ctx.signal }),
          );
          if (r.Errors?.length) throw new PipelineError('BUCKET_COPY_FAILED', `deleting on ${describeSide(dst)}: ${r.Errors.length} object(s) not deleted (${r.Errors[0]!.Key}: ${r.Errors[0]!.Code})`);
          for (const k of batch) entries.push({ key: k, size: have.get(k)!.size, etag: have.get(k)!.etag, action: 'deleted' });
          deleted += batch.length;
        }
      }

      entries.sort((a, b) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0));
      const summary: CopySummary = {
        source: describeSide(src!),
        target: describeSide(dst),
        method: how,
        objects: sources.length,
        bytes: sources.reduce((n, o) => n + o.size, 0),
        copied: todo.length,
        bytesCopied,
        skipped: sources.length - todo.length,
        bytesSkipped: sources.reduce((n, o) => n + o.size, 0) - bytesCopied,
        deleted,
        excluded: excluded.length,
        bytesExcluded: excluded.reduce((n, o) => n + o.size, 0),
      };
      const path = join(ctx.setDir, options.name);
      const lines = (function* () {
        yield JSON.stringify({ summary }) + '\n';
        for (const e of entries) yield JSON.stringify(e) + '\n';
      })();
      const digest = await writeFileAtomic(path, Readable.from(lines), { signal: ctx.signal });
      const artifact: Artifact = { name: options.name, path, kind: 'media-bucket', format: FORMAT, compression: 'none', bytes: digest.bytes, sha256: digest.sha256, meta: { ...summary } };
      ctx.addArtifact(artifact);
      log.info(
        { ...summary },
        `${describeSide(src!)} → ${describeSide(dst)}: ${summary.copied} of ${summary.objects} objects copied (${summary.bytesCopied} bytes, ${how}), ${summary.skipped} unchanged${deleted ? `, ${deleted} deleted` : ''}${summary.excluded ? `; left out ${summary.excluded} objects (${summary.bytesExcluded} bytes) under ${options.exclude.join(', ')}` : ''}`,
      );
    });

    // The index is checked against itself; `verify --restore-test` also checks that the target
    // still holds every object it lists (size), and reports it as the media part of the drill.
    // Other stages' streamed artifacts are nothing for this verify tap: say so, so they stay one pass.
    hooks.verifyStream.tapPromise('bucket-copy', async (request) => {
      if (request.artifact.format !== FORMAT) request.claim();
    });
    hooks.verify.tapPromise('bucket-copy', async (artifact, ctx) => {
      if (artifact.format !== FORMAT) return;
      const started = Date.now();
      const text = await readFile(artifact.path, 'utf8');
      const [head, ...rest] = text.split('\n').filter(Boolean);
      const summary = (JSON.parse(head ?? '{}') as { summary?: CopySummary }).summary;
      const listed = rest.map((l) => JSON.parse(l) as IndexEntry).filter((e) => e.action !== 'deleted');
      if (!summary || listed.length !== summary.objects) {
        throw new PipelineError('BUCKET_COPY_INDEX_INVALID', `${artifact.name} lists ${listed.length} objects, its summary ${summary?.objects ?? 'nothing'}`, { hint: 'Do not rely on this set for the media; run the copy again.' });
      }
      const stored = 'request' in ctx && 'stored' in ctx ? (ctx as RestoreContext) : undefined;
      if (!stored?.request.restoreTest) return;
      if (!src) throw new PipelineError('BUCKET_COPY_FAILED', 'the bucket-copy stage was not connected');
      const present = new Map((await list(dst, ctx.signal)).map((o) => [o.key, o.size]));
      const missing = listed.filter((e) => present.get(e.key) !== e.size);
      if (missing.length > 0) {
        throw new PipelineError('BUCKET_COPY_TARGET_INCOMPLETE', `${describeSide(dst)} lacks ${missing.length} of the ${listed.length} objects this set's copy index lists (e.g. ${missing[0]!.key})`, {
          hint: 'Objects were deleted or overwritten at the target since; run the copy again and keep deleteExtraneous off.',
        });
      }
      recordDrill(artifact, {
        part: 'media',
        bytes: summary.bytes,
        durationMs: Date.now() - started,
        detail: `${listed.length} objects (${summary.bytes} bytes) present in ${describeSide(dst)}, as the copy index lists them`,
      });
    });

  },
});
