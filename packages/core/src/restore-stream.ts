/**
 * One pass for restore: a stored artifact read as one stream — fetched (`Destination.read`),
 * hashed, decrypted by the program a `decryptFilter` tap names, hashed again — whose end is held
 * back until both sha256 (the stored copy's and the plaintext's) match the manifest. No ciphertext
 * file is written, and whoever reads the stream sees its end only once the bytes are proven.
 *
 * When the reader goes away early (pg_restore failed on garbage), or the decrypting program fails,
 * the rest is still read to the end and hashed (the output thrown away): only then is it known
 * whether the copy was damaged (CHECKSUM_MISMATCH, the real cause) or the failure was the
 * program's own. The cost is reading the rest of one artifact, on failure only.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough, Writable, type Readable } from 'node:stream';
import { DigestStream, type FileDigest } from './atomic-file.js';
import type { Artifact, RunContext } from './context.js';
import { isPipelineError, PipelineError } from './errors.js';
import { isChainConsequence, type ExecProcess, type ExecResult } from './exec.js';
import { digestOf, sha256Program, teeProgram } from './stream-programs.js';

/**
 * A program the core splices into a restore stream: reads its input on stdin, writes its output
 * on stdout. Run through the core's `exec` (argv array, registered secrets masked): keys and
 * passphrases go in files or `env`, never in `args`.
 */
export interface StreamFilter {
  command: string;
  args: string[];
  /** Added to (and overriding) the inherited environment; `undefined` removes a variable. */
  env?: Record<string, string | undefined>;
  /** A short name for messages (default: the command's base name). */
  label?: string;
  /** The error to report when the program fails (a plugin's own code and hint); default: exec's error. */
  failure?: (error: unknown) => unknown;
}

/** The content of one artifact as the `restoreStream` hook receives it. */
export interface RestoreInput {
  /** The decrypted content (its own compression still on), start to end, read once. Its end is held back until `checked` passed; it errors instead when a check fails. */
  stream: Readable;
  /**
   * Resolves once every byte was read and both sha256 matched the manifest; rejects with
   * CHECKSUM_MISMATCH (a damaged copy, or content that is not what was backed up) or the failure
   * of the fetch or the decrypting program. Destroying `stream` early does not stop the checks: the
   * rest is read and hashed, so this still says whether the input was damaged.
   */
  checked: Promise<void>;
  /**
   * The target may be written before `checked` settles: the core created it for this restore and
   * drops it when anything fails. When false, write the stream to one file and restore from it
   * only once `checked` resolved.
   */
  targetDisposable: boolean;
}

/** A hash stage that says when it has seen all of its input, and what it saw. */
class HashStage extends DigestStream {
  readonly ended: Promise<FileDigest>;
  #resolve!: (d: FileDigest) => void;
  #reject!: (e: unknown) => void;
  constructor() {
    super();
    this.ended = new Promise<FileDigest>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    this.ended.catch(() => {});
  }
  override _flush(done: (e?: Error | null) => void): void {
    this.#resolve(this.digest());
    done();
  }
  fail(error: unknown): void {
    this.#reject(error);
  }
}

/**
 * Writes into `target` with its backpressure until `target` goes away (closed or failed by its
 * reader); from then on what it gets is thrown away, so the stages before it run to their end.
 * `beforeEnd` runs before `target` is ended: a rejection destroys `target` with that error.
 */
function forwarder(target: PassThrough | Writable, beforeEnd?: () => Promise<void>): Writable {
  let gone = false;
  let pending: (() => void) | undefined;
  const release = () => {
    const p = pending;
    pending = undefined;
    p?.();
  };
  target.on('error', () => {});
  target.on('close', () => {
    gone = true;
    release();
  });
  return new Writable({
    highWaterMark: 1024 * 1024,
    write(chunk: Buffer, _enc, done) {
      if (gone) return done();
      if (target.write(chunk)) return done();
      pending = () => done();
      target.once('drain', release);
    },
    final(done) {
      const end = beforeEnd ?? (() => Promise.resolve());
      end().then(
        () => {
          if (!gone) target.end();
          done();
        },
        (error: unknown) => {
          if (!gone) target.destroy(error as Error);
          done();
        },
      );
    },
  });
}

export interface CheckedChainOptions {
  /** The stored bytes. */
  source: Readable;
  /** What the stored copy must be (the manifest's size and sha256 of the file). */
  stored: { bytes: number; sha256: string };
  /** With a decrypting program: what its output must be (the manifest's `plain`). */
  plain?: { bytes: number; sha256: string };
  filter?: StreamFilter;
  /** Names for messages: the copy (`offsite/SET/name`) and the artifact. */
  copy: string;
  name: string;
  exec: RunContext['exec'];
}

export interface CheckedChain {
  stream: Readable;
  checked: Promise<void>;
  /** Stops everything at once (an interruption); `checked` then rejects. */
  stop(): void;
}

/** Whether a CHECKSUM_MISMATCH is about the stored copy (damage to record; another copy may be good). */
export function isDamagedCopy(error: unknown): boolean {
  return error instanceof PipelineError && error.code === 'CHECKSUM_MISMATCH' && error.details?.storedCopy === true;
}

/** Whether a failure is of reading the stored copy (a transfer failed): another copy may be good. */
export function isFetchFailure(error: unknown): boolean {
  return error instanceof PipelineError && error.details?.fetching === true;
}

const short = (d: FileDigest) => `sha256 ${d.sha256.slice(0, 16)}…, ${d.bytes} bytes`;

/** The stored copy's digest against the manifest: a mismatch is damage to that copy. */
function checkStored(got: FileDigest, o: Pick<CheckedChainOptions, 'stored' | 'copy' | 'name'>): void {
  if (got.sha256 !== o.stored.sha256 || got.bytes !== o.stored.bytes) {
    throw new PipelineError('CHECKSUM_MISMATCH', `${o.copy} does not match its manifest (${short(got)}; expected ${short(o.stored)})`, { details: { storedCopy: true, artifact: o.name } });
  }
}

/** The decrypting program's own failure, in its plugin's words when it has them. */
async function checkProgram(proc: ExecProcess, filter: StreamFilter | undefined): Promise<void> {
  const ran = await proc.then(
    () => undefined,
    (error: unknown) => error,
  );
  if (ran !== undefined) throw filter?.failure ? filter.failure(ran) : ran;
}

/** The plaintext's digest against the manifest: a mismatch is content that was never backed up (every copy is the same). */
function checkPlain(got: FileDigest, expected: { bytes: number; sha256: string }, name: string): void {
  if (got.sha256 !== expected.sha256 || got.bytes !== expected.bytes) {
    throw new PipelineError('CHECKSUM_MISMATCH', `${name} decrypts to content that does not match the manifest (${short(got)}; expected ${short(expected)})`, {
      hint: 'The stored copy is the one the manifest names, but its content is not what was backed up: every copy of this set is the same; restore another set.',
      details: { artifact: name },
    });
  }
}

/** source → sha256 → [filter program] → sha256 → stream, the end held until both match. */
export function checkedChain(o: CheckedChainOptions): CheckedChain {
  const out = new PassThrough({ highWaterMark: 1024 * 1024 });
  const storedHash = new HashStage();
  let proc: ExecProcess | undefined;
  let feed: PassThrough | undefined;
  let plainHash: HashStage | undefined;
  let stopped = false;

  o.source.on('error', (error) => {
    const aborted = error.name === 'AbortError' || (error instanceof PipelineError && error.code === 'ABORTED');
    const e = error instanceof PipelineError ? error : aborted ? new PipelineError('ABORTED', `reading ${o.copy} was stopped because the run was interrupted`, { cause: error }) : new PipelineError('DESTINATION_FAILED', `reading ${o.copy} failed: ${error.message}`, { cause: error });
    // A transfer that failed: another copy may do better (an interruption is not the copy's fault).
    if (!aborted) e.details = { ...e.details, fetching: true };
    storedHash.fail(e);
    storedHash.destroy();
    // With a program, its end (stdin closed) ends the output, held back by the checks; without, no stage is left to end it.
    if (feed) feed.destroy();
    else out.destroy(e);
  });
  o.source.pipe(storedHash);

  let checked: Promise<void>;
  const check = async (): Promise<void> => {
    const stored = await storedHash.ended;
    checkStored(stored, o);
    if (proc) await checkProgram(proc, o.filter);
    if (plainHash && o.plain) {
      const plain = await plainHash.ended;
      checkPlain(plain, o.plain, o.name);
    }
    if (stopped) throw new PipelineError('ABORTED', `reading ${o.copy} was stopped`, { details: { stopped: true } });
  };

  if (o.filter) {
    const filter = o.filter;
    feed = new PassThrough({ highWaterMark: 1024 * 1024 });
    proc = o.exec(filter.command, filter.args, { stdin: feed, stdout: 'stream', env: filter.env, label: filter.label });
    proc.catch(() => {});
    // A program that died stops reading: the rest of the source is still hashed (and thrown away).
    void proc.then(
      () => undefined,
      () => feed!.destroy(),
    );
    storedHash.pipe(forwarder(feed));
    plainHash = new HashStage();
    proc.stdout!.on('error', (error) => plainHash!.fail(error));
    proc.stdout!.pipe(plainHash);
    checked = check();
    plainHash.pipe(forwarder(out, () => checked));
  } else {
    checked = check();
    storedHash.pipe(forwarder(out, () => checked));
  }
  checked.catch(() => {});

  return {
    stream: out,
    checked,
    stop: () => {
      if (stopped) return;
      stopped = true;
      const e = new PipelineError('ABORTED', `reading ${o.copy} was stopped`, { details: { stopped: true } });
      storedHash.fail(e);
      plainHash?.fail(e);
      o.source.destroy();
      feed?.destroy();
      proc?.kill();
      out.destroy();
    },
  };
}

export interface CheckedFileChainOptions extends Omit<CheckedChainOptions, 'source'> {
  /** The stored copy, a file on this machine (`Destination.localFile`). */
  file: string;
  /** A private folder for the chain's named pipes. */
  tmpDir: string;
}

/** The stored copy could not be read: another copy may do better (an interruption is not the copy's fault). */
function readFailure(error: unknown, copy: string): PipelineError {
  if (isPipelineError(error) && error.code === 'ABORTED') return error;
  const e = new PipelineError('DESTINATION_FAILED', `reading ${copy} failed: ${(error as Error).message}`, { cause: error });
  e.details = { ...e.details, fetching: true };
  return e;
}

/**
 * `checkedChain` for a stored copy that is a local file, in OS processes: no byte of the stored
 * copy passes through Node.js, and neither sha256 is computed here. Only the plaintext, the last
 * program's output, is read by this process, to hold its end back until the checks passed.
 *
 *   file ─▶ tee ─▶ [filter program] ─▶ tee ─▶ stream (its end held until both match)
 *           ├──▶ FIFO ─▶ sha256            ├──▶ FIFO ─▶ sha256 (plain)
 *           └──▶ FIFO ─▶ wc -c             └──▶ FIFO ─▶ wc -c (plain)
 *
 * The promises are `checkedChain`'s: a filter program that fails, or a reader that goes away,
 * does not stop the first tee (an output whose reader left is dropped, the others go on), so the
 * whole stored copy is still hashed and the check says whether it was damaged.
 */
export async function checkedFileChain(o: CheckedFileChainOptions): Promise<CheckedChain> {
  const [hash, tee] = await Promise.all([sha256Program(), teeProgram()]);
  const fifoDir = await mkdtemp(join(o.tmpDir, 'restore-stream-'));
  const procs: ExecProcess[] = [];
  const started = (p: ExecProcess) => {
    procs.push(p);
    p.catch(() => {});
    return p;
  };
  const stopAll = () => {
    for (const p of procs) p.kill();
  };
  const fifos = (what: string) => [join(fifoDir, `${what}-sha256`), join(fifoDir, `${what}-bytes`)] as const;
  const storedFifos = fifos('stored');
  const plainFifos = o.filter ? fifos('plain') : undefined;
  let stopped = false;
  const out = new PassThrough({ highWaterMark: 1024 * 1024 });
  try {
    await o.exec('mkfifo', ['-m', '600', '--', ...storedFifos, ...(plainFifos ?? [])], { label: 'mkfifo' });
  } catch (error) {
    await rm(fifoDir, { recursive: true, force: true });
    throw error;
  }
  // Readers first (each opens its FIFO, which a tee opens for writing), then the chain from its end.
  const digest = (paths: readonly [string, string], what: string) => ({
    sha256: started(o.exec(hash.command, [...hash.args, paths[0]], { label: `${hash.label} (${what})` })),
    bytes: started(o.exec('wc', ['-c', '--', paths[1]], { label: `wc -c (${what})` })),
  });
  const storedDigest = digest(storedFifos, o.copy);
  const plainDigest = plainFifos ? digest(plainFifos, o.name) : undefined;
  let last: ExecProcess;
  let proc: ExecProcess | undefined;
  let first: ExecProcess;
  if (o.filter) {
    last = started(o.exec(tee.command, [...tee.args, ...plainFifos!], { stdin: { fromProcess: true }, stdout: 'stream', label: `${tee.label} (plain)` }));
    proc = started(o.exec(o.filter.command, o.filter.args, { env: o.filter.env, label: o.filter.label, stdin: { fromProcess: true }, stdout: { pipeTo: last } }));
    first = started(o.exec(tee.command, [...tee.args, ...storedFifos], { stdin: { file: o.file }, stdout: { pipeTo: proc }, label: tee.label }));
  } else {
    first = last = started(o.exec(tee.command, [...tee.args, ...storedFifos], { stdin: { file: o.file }, stdout: 'stream', label: tee.label }));
  }
  // The stored copy not read to its end (it could not be opened, a read failed): nothing else can finish.
  void first.then(undefined, stopAll);

  const read = (d: { sha256: ExecProcess; bytes: ExecProcess }, what: string): Promise<FileDigest> =>
    Promise.all([d.sha256, d.bytes]).then(([sha, bytes]: ExecResult[]) => {
      const n = Number(/^\s*(\d+)/.exec(bytes!.stdout)?.[1]);
      if (!Number.isSafeInteger(n)) throw new PipelineError('EXEC_FAILED', `the size of ${what} could not be read from wc`);
      return { sha256: digestOf(sha!, what), bytes: n };
    });
  const check = async (): Promise<void> => {
    const source = await first.then(
      () => undefined,
      (error: unknown) => error,
    );
    if (stopped) throw new PipelineError('ABORTED', `reading ${o.copy} was stopped`, { details: { stopped: true } });
    if (source !== undefined) throw readFailure(source, o.copy);
    const stored = await read(storedDigest, o.copy);
    checkStored(stored, o);
    if (proc) await checkProgram(proc, o.filter);
    const tail = await last.then(
      () => undefined,
      (error: unknown) => error,
    );
    // The plaintext's tee fails only when its own outputs do (Node.js reads its stdout to the end).
    if (tail !== undefined && !isChainConsequence(tail)) throw tail;
    if (plainDigest && o.plain) {
      const plain = await read(plainDigest, o.name);
      checkPlain(plain, o.plain, o.name);
    }
    if (stopped) throw new PipelineError('ABORTED', `reading ${o.copy} was stopped`, { details: { stopped: true } });
  };
  const checked = check();
  checked.catch(() => {});
  // The fifos go once every member is gone, whatever happened.
  void Promise.allSettled(procs).then(() => rm(fifoDir, { recursive: true, force: true }));
  if (last.stdout) {
    last.stdout.on('error', () => {});
    last.stdout.pipe(forwarder(out, () => checked));
  } else {
    // The chain never started (the file could not be opened): the checks say why.
    void checked.then(
      () => out.destroy(new PipelineError('EXEC_FAILED', `${o.copy}: the restore chain did not start`)),
      (error: unknown) => out.destroy(error as Error),
    );
  }
  return {
    stream: out,
    checked,
    stop: () => {
      if (stopped) return;
      stopped = true;
      stopAll();
      out.destroy();
    },
  };
}

/** An artifact's content opened for restore: its description (plaintext, `path` empty unless a file holds it), the checked stream, and its checks. */
export interface OpenedArtifact extends Omit<RestoreInput, 'targetDisposable'> {
  artifact: Artifact;
  /** The plaintext already in a file (the destination could not stream, or the plugin decrypts only into files). */
  file?: string;
  stop(): void;
}
