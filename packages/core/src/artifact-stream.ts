/**
 * One pass over a produced artifact: the producer's stream is verified, compressed, hashed and
 * transformed (encrypted) while it is made, and written once into the set. Every byte moves
 * between OS processes over pipes: none passes through Node.js.
 *
 *   producer ─▶ tee ─▶ compressor ─▶ tee ─▶ filter … filter ─▶ tee ─▶ file (NAME.partial, renamed when complete)
 *                ├──▶ FIFO ─▶ verifier      ├──▶ FIFO ─▶ sha256 (plain)  └──▶ FIFO ─▶ sha256 (the file)
 *                ├──▶ FIFO ─▶ verifier      └──▶ FIFO ─▶ wc -c (plain)
 *                └──▶ FIFO ─▶ head -c 16 (the producer's first bytes)
 *
 * Verifiers (`verifyStream` taps) read the producer's plain bytes through `tee` and named pipes in
 * the run's private folder. Transforms (`transformFilter` taps) offer a program that reads stdin
 * and writes stdout; the core splices the longest prefix of the pipeline's transforms that offer
 * one, in stage order, and leaves the rest to the file-based `transform` hook (a second pass, said
 * in the log). The file and the bytes before the filters (`plain`) are hashed by `openssl dgst`
 * (SHA-NI where the CPU has it; `sha256sum` where openssl is missing) reading a tee's named pipe
 * while the file is written. Without a compressor the tees next to each other are one. The tees
 * are the core's splice-tee (libexec/splice-tee.pl: the kernel's tee(2) and splice(2) move the
 * pages, where coreutils' tee copies every byte in and out), or coreutils' tee where it cannot run. Every
 * process is settled with `settleChain`: the first real cause is reported, the rest stopped, and
 * nothing is left under the artifact's name. Verifiers' checks run once the chain finished; a
 * failure removes the file (the run then removes the set folder: nothing is shipped).
 */
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { join } from 'node:path';
import { createPartialFile } from './atomic-file.js';
import type { Artifact, Compression, Encryption, KnownCompression, RunContext } from './context.js';
import { isPipelineError, PipelineError, toPipelineError } from './errors.js';
import { isChainConsequence, saysReaderLeft, settleChain, type ExecOptions, type ExecProcess, type ExecResult } from './exec.js';
import { digestOf, sha256Program, teeProgram } from './stream-programs.js';

export { SPLICE_TEE } from './stream-programs.js';

/** A program run on the stream: argv only (never a shell string), secrets in files or env, never in argv. */
export interface StreamProgram {
  command: string;
  args: readonly string[];
  env?: Record<string, string | undefined>;
  /** A short name for messages (default: the program's base name). */
  label?: string;
}

/** The file extension of each built-in compression (`db.dump` → `db.dump.zst`). */
export const COMPRESSION_EXTENSION: Readonly<Record<KnownCompression, string>> = { zstd: '.zst', lz4: '.lz4', gzip: '.gz', none: '' };

/** The compressor for a stream at the program's default level (zstd on every core); undefined for `none`. */
export function defaultCompressor(method: KnownCompression): StreamProgram | undefined {
  return { zstd: { command: 'zstd', args: ['-T0', '-q', '-c'] }, lz4: { command: 'lz4', args: ['-q', '-c'] }, gzip: { command: 'gzip', args: ['-c'] }, none: undefined }[method];
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
  const filtered = plan.filters.length > 0;
  const [hash, teeWith] = await Promise.all([sha256Program(), teeProgram()]);

  // The named pipes, by the tee that writes them: after the producer (verifiers, the head, and the
  // plain hash when nothing compresses), after the compressor (the plain hash), after the filters.
  const fifoDir = await mkdtemp(join(ctx.tmpDir, 'stream-'));
  const fifo = (name: string) => join(fifoDir, name);
  const consumerFifos = plan.consumers.map((_, i) => fifo(`verifier-${i}`));
  const headFifo = fifo('head');
  const plainFifos = filtered ? [fifo('plain-sha256'), fifo('plain-bytes')] : [];
  const outFifo = fifo('file-sha256');
  const afterProducer = [...consumerFifos, headFifo, ...(compressor ? [] : plainFifos)];
  const afterCompressor = compressor ? plainFifos : [];

  const procs: ExecProcess[] = [];
  const stopAll = () => {
    for (const p of procs) p.kill();
  };
  const started = (p: ExecProcess) => (procs.push(p), p);
  let progress: ReturnType<typeof setInterval> | undefined;
  const file = await createPartialFile(path);
  try {
    await ctx.exec('mkfifo', ['-m', '600', '--', ...afterProducer, ...afterCompressor, outFifo], { label: 'mkfifo' });

    // Readers first: each opens its FIFO, which a tee opens for writing when it starts.
    const readers: Array<{ proc: ExecProcess; plugin?: string; consumer?: StreamConsumer; feeder?: ExecProcess }> = [];
    for (const [i, { plugin, consumer }] of plan.consumers.entries()) {
      const path = consumerFifos[i]!;
      const options: ExecOptions = { env: consumer.env, label: consumer.label, okExitCodes: consumer.okExitCodes };
      if (consumer.input === 'path') {
        readers.push({ proc: started(ctx.exec(consumer.command, [...consumer.args, path], options)), plugin, consumer });
      } else {
        const proc = started(ctx.exec(consumer.command, consumer.args, { ...options, stdin: { fromProcess: true } }));
        const feeder = started(ctx.exec('cat', ['--', path], { stdout: { pipeTo: proc }, label: `cat (${consumer.label ?? consumer.command})` }));
        readers.push({ proc, plugin, consumer, feeder });
      }
    }
    const head = started(ctx.exec('head', ['-c', '16', '--', headFifo], { stdout: 'stream', label: 'head' }));
    const headChunks: Buffer[] = [];
    head.stdout?.on('data', (c: Buffer) => headChunks.push(c));
    const plainHash = filtered ? started(ctx.exec(hash.command, [...hash.args, plainFifos[0]!], { label: `${hash.label} (plain)` })) : undefined;
    const plainBytes = filtered ? started(ctx.exec('wc', ['-c', '--', plainFifos[1]!], { label: 'wc -c (plain)' })) : undefined;
    const fileHash = started(ctx.exec(hash.command, [...hash.args, outFifo], { label: hash.label }));

    // Then the chain, from its end: each process is started before the one that writes into it.
    const tee = (fifos: string[], stdout: ExecOptions['stdout'], options: Partial<ExecOptions> = {}) =>
      started(ctx.exec(teeWith.command, [...teeWith.args, ...fifos], { stdin: { fromProcess: true }, stdout, label: teeWith.label, ...options }));
    const teeFile = tee([outFifo], { file: file.partial }, { writes: path });
    let next = teeFile;
    const filterProcs: ExecProcess[] = [];
    for (let i = plan.filters.length - 1; i >= 0; i--) {
      const { filter } = plan.filters[i]!;
      next = started(ctx.exec(filter.command, filter.args, { env: filter.env, label: filter.label, stdin: { fromProcess: true }, stdout: { pipeTo: next } }));
      filterProcs.unshift(next);
    }
    const teePlain = afterCompressor.length > 0 ? tee(afterCompressor, { pipeTo: next }) : undefined;
    if (teePlain) next = teePlain;
    const comp = compressor ? started(ctx.exec(compressor.command, compressor.args, { env: compressor.env, label: compressor.label, stdin: { fromProcess: true }, stdout: { pipeTo: next } })) : undefined;
    if (comp) next = comp;
    const teeProducer = tee(afterProducer, { pipeTo: next });
    const producer = started(request.start({ pipeTo: teeProducer }));

    // The file's size, for progress (its bytes never pass through here).
    let lastProgress = 0;
    progress = setInterval(() => {
      void stat(file.partial).then(
        ({ size }) => {
          if (size - lastProgress >= 1 << 20) {
            lastProgress = size;
            ctx.progress({ task, bytes: size });
          }
        },
        () => {},
      );
    }, 500);
    progress.unref?.();

    // Each member's own failure, named by the plugin that brought it.
    const upstreamFailures: unknown[] = [];
    const upstream = (p: Promise<unknown>) => p.catch((e: unknown) => (upstreamFailures.push(e), Promise.reject(e)));
    const named = (p: Promise<unknown>, fail?: (e: unknown) => Error, plugin?: string, hook?: string) =>
      p.catch((error: unknown) => {
        // A program that exited with its own non-zero code failed on its own, even when the chain
        // was being stopped by then (a sibling's broken pipe can be noticed first) — unless what it
        // said is that its reader went away (gpg after the file's tee hit a full disk).
        const details = isPipelineError(error) ? error.details : undefined;
        const ownExit = typeof details?.exitCode === 'number' && details.exitCode !== 0 && !details.signal;
        if ((isChainConsequence(error) && (!ownExit || saysReaderLeft(error))) || (isPipelineError(error) && ['ABORTED', 'EXEC_NOT_FOUND'].includes(error.code))) throw error;
        const mapped = toPipelineError(fail ? fail(error) : error);
        if (plugin) mapped.plugin ??= plugin;
        if (hook) mapped.hook ??= hook;
        throw mapped;
      });
    const consumerErrors = new Set<unknown>();
    const members: Array<Promise<unknown>> = [
      ...[producer, teeProducer, comp, teePlain].filter((p): p is ExecProcess => p !== undefined).map(upstream),
      ...plan.filters.map(({ filter, plugin }, i) => upstream(named(filterProcs[i]!, filter.fail, plugin, 'transformFilter'))),
      ...[teeFile, fileHash, plainHash, plainBytes, head].filter((p): p is ExecProcess => p !== undefined).map(upstream),
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
      throw consumerErrors.has(caught) ? (upstreamFailures.find((e) => !isChainConsequence(e)) ?? caught) : caught;
    }
    if (ctx.signal?.aborted) throw new PipelineError('ABORTED', `interrupted while writing ${path}`);
    const sha256 = digestOf(await fileHash, path);
    const bytes = await file.commit();
    ctx.progress({ task, bytes });
    const headBytes = Buffer.concat(headChunks).subarray(0, 16);
    const encryption = [...plan.filters].reverse().find((f) => f.filter.encryption)?.filter.encryption;
    const plain = plainHash && plainBytes ? { name: planned.name, bytes: Number(/^\s*(\d+)/.exec((await plainBytes).stdout)?.[1]), sha256: digestOf(await plainHash, planned.name) } : undefined;
    if (plain && !Number.isSafeInteger(plain.bytes)) throw new PipelineError('EXEC_FAILED', `the size of ${planned.name} could not be read from wc`);
    const artifact: Artifact = {
      name: finalName,
      path,
      kind: planned.kind,
      format: planned.format,
      compression: planned.compression,
      ...(encryption ? { encryption } : {}),
      bytes,
      sha256,
      ...(plain ? { plain } : {}),
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
    // Without a compressor the file before the filters is the producer's output.
    return { artifact, head: headBytes, plainBytes: compressor ? undefined : (plain?.bytes ?? bytes) };
  } catch (error) {
    stopAll();
    await file.discard();
    await rm(path, { force: true });
    throw error;
  } finally {
    if (progress) clearInterval(progress);
    await rm(fifoDir, { recursive: true, force: true });
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
