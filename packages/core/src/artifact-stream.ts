/**
 * One pass over a produced artifact: the producer's stream is verified, compressed, hashed and
 * transformed (encrypted) while it is made, and written once into the set.
 *
 *   producer ─▶ tee ─▶ compressor ─▶ (Node: sha256 of `plain`) ─▶ filter … filter ─▶ (Node: sha256) ─▶ file
 *                ├──▶ FIFO ─▶ verifier (pg_restore --list)
 *                ├──▶ FIFO ─▶ verifier (pg_restore -f /dev/null)
 *                └──▶ FIFO ─▶ head -c 16 (the producer's first bytes)
 *
 * Verifiers (`verifyStream` taps) read the producer's plain bytes through `tee` and named pipes in
 * the run's private folder: no byte of theirs passes through Node.js. Transforms
 * (`transformFilter` taps) offer a program that reads stdin and writes stdout; the core splices
 * the longest prefix of the pipeline's transforms that offer one, in stage order, and leaves the
 * rest to the file-based `transform` hook (a second pass, said in the log). Every process and the
 * file write are settled with `settleChain`: the first real cause is reported, the rest stopped,
 * and nothing is left under the artifact's name. Verifiers' checks run once the chain finished;
 * a failure removes the file (the run then removes the set folder: nothing is shipped).
 */
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { Transform, type Readable } from 'node:stream';
import { DigestStream, writeFileAtomic } from './atomic-file.js';
import type { Artifact, Compression, Encryption, RunContext } from './context.js';
import { isPipelineError, toPipelineError } from './errors.js';
import { isChainConsequence, settleChain, type ExecOptions, type ExecProcess, type ExecResult } from './exec.js';

/** A program run on the stream: argv only (never a shell string), secrets in files or env, never in argv. */
export interface StreamProgram {
  command: string;
  args: readonly string[];
  env?: Record<string, string | undefined>;
  /** A short name for messages (default: the program's base name). */
  label?: string;
}

/** An OS process that reads the producer's plain stream while it is made (a verifier). */
export interface StreamConsumer extends StreamProgram {
  /**
   * `stdin` (default): the stream arrives on stdin. `path`: the core appends the path of a named
   * pipe as the last argument and the program opens it itself (one copy fewer).
   */
  input?: 'stdin' | 'path';
  /** The program may stop reading before the end (pg_restore --list reads only the table of contents). */
  partial?: boolean;
  /** Exit codes that count as success (default [0]). */
  okExitCodes?: number[];
  /**
   * Runs once the whole chain succeeded, with the program's result (its stdout): check it and
   * record what it found on `artifact.meta`; throwing fails the run and removes the file.
   */
  check?(result: ExecResult, artifact: Artifact): void | Promise<void>;
  /** Turns the program's own failure (not a consequence of another member's) into the error to report. */
  fail?(error: unknown): Error;
}

/** A transform's program: reads the stream on stdin, writes the transformed stream on stdout (an encryptor). */
export interface TransformFilter extends StreamProgram {
  /** The artifact's name after this filter (`db.dump.zst` → `db.dump.zst.gpg`). */
  rename(name: string): string;
  /** Set when the filter encrypts (the manifest then records `plain`, what the artifact was before). */
  encryption?: Encryption;
  /** Turns the program's failure into the error to report (GPG_ENCRYPT_FAILED…). */
  fail?(error: unknown): Error;
}

/** What an artifact being streamed will be (no path, size or digest yet). */
export interface PlannedArtifact {
  name: string;
  kind: string;
  format: string;
  /** The compression of the file (applied by the producer, or by the compressor the core splices). */
  compression: Compression;
  /**
   * The compression still on the bytes verifiers read: `none` unless the producer compresses its
   * own output outside the format (pg_dump's gzip of plain SQL). A verifier that cannot read it declines.
   */
  streamCompression: Compression;
  meta: Record<string, unknown>;
}

/** `verifyStream`: verifiers attach consumers to the stream about to be made. */
export interface VerifyStreamRequest {
  readonly artifact: PlannedArtifact;
  /** Reads the producer's plain bytes with this program while they are made. */
  attach(consumer: StreamConsumer): void;
  /**
   * This plugin's checks of the artifact are complete once its consumers passed (or it has
   * nothing to check on it): its `verify` tap is not called for this artifact. A plugin that taps
   * `verify` and does not claim is called on the staged file as before, and then no transform
   * filter is spliced (the file must stay the plain one until every verifier has read it).
   */
  claim(): void;
}

/** `transformFilter`: transforms offer a program the core splices into the stream. */
export interface TransformFilterRequest {
  readonly artifact: PlannedArtifact;
  /** Splices this program after the compressor. Its `transform` tap is then not called for this artifact. */
  offer(filter: TransformFilter): void;
}

/** What a producer asks of `ctx.streamArtifact`. */
export interface StreamArtifactRequest {
  artifact: Omit<PlannedArtifact, 'streamCompression'> & { streamCompression?: Compression };
  /** The folder the file goes into (the set folder). */
  dir: string;
  /** Starts the producing program with this stdout (`exec`'s stdout option). */
  start(stdout: ExecOptions['stdout']): ExecProcess;
  /** The compressor the core runs after the verifiers' tee (reads stdin, writes stdout). */
  compressor?: StreamProgram;
  /** The progress task name (`dump`). */
  task?: string;
}

export interface StreamedArtifact {
  artifact: Artifact;
  /** The first 16 bytes of the producer's output (empty: it wrote nothing). */
  head: Buffer;
  /** The producer's output size, when its bytes passed through Node.js (no compressor). */
  plainBytes?: number;
}

/** What the runner learned about a streamed artifact, to skip the taps that already served it. */
export interface StreamRecord {
  /** Plugins whose `verify` is done for it. */
  verifiedBy: Set<string>;
  /** Plugins whose `transform` was spliced into it. */
  transformedBy: Set<string>;
  /** The file as it was written: a file changed since (another stage rewrote it) is verified again. */
  size: number;
  mtimeMs: number;
}

/** Counts bytes and keeps the first 16, on the way through Node.js. */
class HeadCounter extends Transform {
  bytes = 0;
  head = Buffer.alloc(0);
  override _transform(chunk: Buffer, _e: BufferEncoding, done: (e?: Error | null, d?: Buffer) => void): void {
    if (this.head.length < 16) this.head = Buffer.concat([this.head, chunk.subarray(0, 16 - this.head.length)]);
    this.bytes += chunk.length;
    done(null, chunk);
  }
}

type Ctx = Pick<RunContext, 'exec' | 'signal' | 'tmpDir' | 'progress' | 'log'>;

export interface StreamPlan {
  consumers: Array<{ plugin: string; consumer: StreamConsumer }>;
  filters: Array<{ plugin: string; filter: TransformFilter }>;
}

/**
 * Runs the chain for `request` with the consumers and filters the runner collected; returns the
 * artifact written (its name after the filters) or throws the first real cause, leaving nothing
 * under its name.
 */
export async function runArtifactStream(request: StreamArtifactRequest, plan: StreamPlan, ctx: Ctx): Promise<StreamedArtifact> {
  const planned = request.artifact;
  const finalName = plan.filters.reduce((name, f) => f.filter.rename(name), planned.name);
  const path = join(request.dir, finalName);
  const task = request.task ?? 'produce';
  const compressor = request.compressor;
  // The producer's first bytes: seen by Node.js when nothing compresses, else read from the tee.
  const headProbe = compressor !== undefined;
  const teeOutputs = plan.consumers.length + (headProbe ? 1 : 0);
  const fifoDir = teeOutputs > 0 ? await mkdtemp(join(ctx.tmpDir, 'stream-')) : undefined;
  const fifos = Array.from({ length: teeOutputs }, (_, i) => join(fifoDir!, `out-${i}`));
  if (fifos.length > 0) await ctx.exec('mkfifo', ['-m', '600', '--', ...fifos], { label: 'mkfifo' });

  const upstream: ExecProcess[] = [];
  const readers: Array<{ proc: ExecProcess; plugin?: string; consumer?: StreamConsumer; feeder?: ExecProcess }> = [];
  const stopAll = () => {
    for (const p of [...upstream, ...readers.flatMap((r) => (r.feeder ? [r.feeder, r.proc] : [r.proc]))]) p.kill();
  };
  try {
    // Readers first: each opens its FIFO, which tee opens for writing when it starts.
    for (const [i, { plugin, consumer }] of plan.consumers.entries()) {
      const fifo = fifos[i]!;
      const options: ExecOptions = { env: consumer.env, label: consumer.label, okExitCodes: consumer.okExitCodes };
      if (consumer.input === 'path') {
        readers.push({ proc: ctx.exec(consumer.command, [...consumer.args, fifo], options), plugin, consumer });
      } else {
        const proc = ctx.exec(consumer.command, consumer.args, { ...options, stdin: { fromProcess: true } });
        const feeder = ctx.exec('cat', ['--', fifo], { stdout: { pipeTo: proc }, label: `cat (${consumer.label ?? consumer.command})` });
        readers.push({ proc, plugin, consumer, feeder });
      }
    }
    let head: ExecProcess | undefined;
    if (headProbe) {
      head = ctx.exec('head', ['-c', '16', '--', fifos[teeOutputs - 1]!], { stdout: 'stream', label: 'head' });
      readers.push({ proc: head });
    }

    // Then the chain, from its end: each process is started before the one that writes into it.
    let filterProcs: ExecProcess[] = [];
    const last = plan.filters.length - 1;
    for (let i = last; i >= 0; i--) {
      const { filter } = plan.filters[i]!;
      const next = filterProcs[0];
      const proc = ctx.exec(filter.command, filter.args, {
        env: filter.env,
        label: filter.label,
        // The first filter reads from Node.js (which hashes `plain`), the others from the one before.
        stdin: { fromProcess: true },
        stdout: next ? { pipeTo: next } : 'stream',
      });
      filterProcs = [proc, ...filterProcs];
    }
    const comp = compressor ? ctx.exec(compressor.command, compressor.args, { env: compressor.env, label: compressor.label, stdin: { fromProcess: true }, stdout: 'stream' }) : undefined;
    const tee = fifos.length > 0 ? ctx.exec('tee', ['-p', '--', ...fifos], { stdin: { fromProcess: true }, stdout: comp ? { pipeTo: comp } : 'stream', label: 'tee' }) : undefined;
    const firstAfterProducer = tee ?? comp;
    const producer = request.start(firstAfterProducer ? { pipeTo: firstAfterProducer } : 'stream');
    upstream.push(producer, ...(tee ? [tee] : []), ...(comp ? [comp] : []), ...filterProcs);

    // Node.js sees the stream where it leaves the last OS member before the filters (the file's
    // content before encryption: hashed as `plain`), then the filters' output (written, hashed).
    const plainSource: Readable = (comp ?? tee ?? producer).stdout!;
    const counter = compressor ? undefined : new HeadCounter();
    const plainHash = plan.filters.length > 0 ? new DigestStream() : undefined;
    let toWrite: Readable = plainSource;
    for (const stage of [counter, plainHash]) {
      if (!stage) continue;
      const from = toWrite;
      from.on('error', (e) => stage.destroy(e));
      toWrite = from.pipe(stage);
    }
    if (filterProcs.length > 0) {
      const into = filterProcs[0]!.stdin!;
      const feed = toWrite;
      // A filter that died is reported by its own exit. What still comes to it is read and dropped:
      // left unread, it would fill the pipes behind it, and the members before it (killed by then)
      // could never finish their output, so their promises would never settle.
      const drain = () => {
        feed.unpipe(into);
        feed.resume();
      };
      into.on('error', drain);
      into.on('close', () => {
        if (!into.writableFinished) drain();
      });
      feed.pipe(into);
      toWrite = filterProcs[last]!.stdout!;
    }
    let lastProgress = 0;
    const write = writeFileAtomic(path, toWrite, {
      signal: ctx.signal,
      onBytes: (bytes) => {
        if (bytes - lastProgress >= 1 << 20) {
          lastProgress = bytes;
          ctx.progress({ task, bytes });
        }
      },
    });

    // Each member's own failure, named by the plugin that brought it.
    const upstreamFailures: unknown[] = [];
    const named = (p: Promise<unknown>, fail?: (e: unknown) => Error, plugin?: string, hook?: string) =>
      p.catch((error: unknown) => {
        // A program that exited with its own non-zero code failed on its own, even when the chain
        // was being stopped by then (a sibling's broken pipe can be noticed first).
        const details = isPipelineError(error) ? error.details : undefined;
        const ownExit = typeof details?.exitCode === 'number' && details.exitCode !== 0 && !details.signal;
        if ((!ownExit && isChainConsequence(error)) || (isPipelineError(error) && ['ABORTED', 'EXEC_NOT_FOUND'].includes(error.code))) throw error;
        const mapped = toPipelineError(fail ? fail(error) : error);
        if (plugin) mapped.plugin ??= plugin;
        if (hook) mapped.hook ??= hook;
        throw mapped;
      });
    const consumerErrors = new Set<unknown>();
    const headChunks: Buffer[] = [];
    head?.stdout?.on('data', (c: Buffer) => headChunks.push(c));
    const members: Array<Promise<unknown>> = [
      ...[producer, ...(tee ? [tee] : []), ...(comp ? [comp] : [])].map((p) => p.catch((e: unknown) => (upstreamFailures.push(e), Promise.reject(e)))),
      ...plan.filters.map(({ filter, plugin }, i) => named(filterProcs[i]!, filter.fail, plugin, 'transformFilter').catch((e: unknown) => (upstreamFailures.push(e), Promise.reject(e)))),
      write.catch((e: unknown) => (upstreamFailures.push(e), Promise.reject(e))),
      ...readers.flatMap((r) => {
        const own = named(r.proc, r.consumer?.fail, r.plugin, 'verifyStream').catch((e: unknown) => (consumerErrors.add(e), Promise.reject(e)));
        return r.feeder ? [own, r.feeder] : [own];
      }),
    ];
    try {
      await settleChain(members, stopAll);
    } catch (caught) {
      // A verifier that saw a truncated stream because the producer (or a filter, or the disk)
      // failed first is a consequence: the upstream member's own failure is the cause.
      const cause = consumerErrors.has(caught) ? (upstreamFailures.find((e) => !isChainConsequence(e)) ?? caught) : caught;
      throw cause;
    }
    const digest = await write;
    ctx.progress({ task, bytes: digest.bytes });
    const headBytes = counter ? counter.head : Buffer.concat(headChunks).subarray(0, 16);
    const encryption = [...plan.filters].reverse().find((f) => f.filter.encryption)?.filter.encryption;
    const plainDigest = plainHash?.digest();
    const artifact: Artifact = {
      name: finalName,
      path,
      kind: planned.kind,
      format: planned.format,
      compression: planned.compression,
      ...(encryption ? { encryption } : {}),
      bytes: digest.bytes,
      sha256: digest.sha256,
      ...(plainDigest ? { plain: { name: planned.name, bytes: plainDigest.bytes, sha256: plainDigest.sha256 } } : {}),
      meta: planned.meta,
    };
    // The verifiers' own checks of what they read (the table of contents…), before anything ships.
    for (const r of readers) {
      if (!r.consumer?.check) continue;
      try {
        await r.consumer.check(await r.proc, artifact);
      } catch (error) {
        const e = toPipelineError(error);
        if (r.plugin) e.plugin ??= r.plugin;
        e.hook ??= 'verifyStream';
        throw e;
      }
    }
    return { artifact, head: headBytes, plainBytes: counter?.bytes };
  } catch (error) {
    stopAll();
    await rm(path, { force: true });
    throw error;
  } finally {
    if (fifoDir) await rm(fifoDir, { recursive: true, force: true });
  }
}

/** The file's identity as written, so the runner can tell a file another stage changed afterwards. */
export async function recordStream(artifact: Artifact, verifiedBy: Iterable<string>, transformedBy: Iterable<string>): Promise<StreamRecord> {
  const info = await stat(artifact.path);
  return { verifiedBy: new Set(verifiedBy), transformedBy: new Set(transformedBy), size: info.size, mtimeMs: info.mtimeMs };
}

/** Whether the staged file is still the one the stream wrote (same size and modification time). */
export async function unchangedSinceStream(artifact: Artifact, record: StreamRecord): Promise<boolean> {
  const info = await stat(artifact.path).catch(() => undefined);
  return info !== undefined && info.size === record.size && info.mtimeMs === record.mtimeMs && artifact.bytes === record.size;
}
