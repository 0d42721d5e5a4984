/**
 * The one way backup-pipeline runs a program: an argv array (never a shell string), stdin ignored
 * unless given, registered secrets masked wherever the command line or its stderr is shown, the
 * last lines of stderr kept for the error (and, from PostgreSQL's tools, every `ERROR:`/`FATAL:`
 * line, which is where the cause is), the run's AbortSignal wired to kill the child, and the exit
 * code always checked. A child whose reader went away (a full disk failed the file write) is
 * stopped at once rather than left blocked on a full pipe.
 */
import { closeSync, constants, fstatSync, ftruncateSync, openSync } from 'node:fs';
import { PassThrough, type Readable, type Writable } from 'node:stream';
import { execa } from 'execa';
import { fileSystemError } from './atomic-file.js';
import { isPipelineError, PipelineError, toPipelineError } from './errors.js';
import type { SecretRegistry } from './secrets.js';

/** Variables that must never reach a child: passwords go through a private PGPASSFILE instead. */
const SCRUBBED_ENV = ['PGPASSWORD', 'PGPASSFILE_CONTENT'];

export interface ExecOptions {
  cwd?: string;
  /** Added to (and overriding) the inherited environment. An `undefined` value removes a variable. */
  env?: Record<string, string | undefined>;
  /**
   * Text, bytes, a readable stream or `{ file }` for stdin. Default: ignored. A file is opened here
   * and its descriptor given to the child: it reads the file itself, no byte passes through
   * Node.js. `{ fromProcess: true }`: another process will write it (started with
   * `stdout: { pipeTo: thisProcess }`).
   */
  stdin?: string | Uint8Array | Readable | { file: string } | { fromProcess: true };
  /**
   * `'pipe'` (default: buffered, returned as `stdout`), `'stream'` (read it from `.stdout` yourself), a file, or `'ignore'`.
   * A file (created 0600 if missing) is opened here and its descriptor given to the child: it
   * writes the file itself, no byte passes through Node.js. It is truncated only when it has
   * content (an empty or new file is never truncated: ext4 writes a truncated file back on close).
   * `{ pipeTo: consumer }` connects stdout straight to the stdin of `consumer` (started with
   * `stdin: { fromProcess: true }`): an OS pipe, no byte passes through Node.js. The consumer sees
   * end-of-file when this process exits.
   */
  stdout?: 'pipe' | 'stream' | 'ignore' | { file: string; append?: boolean } | { pipeTo: ExecProcess };
  signal?: AbortSignal;
  secrets?: SecretRegistry;
  /** A short name for messages (default: the program's base name). */
  label?: string;
  /** The file or folder the program writes, named when it fails for lack of space or permission. */
  writes?: string;
  /** Exit codes that count as success (default [0]). */
  okExitCodes?: number[];
  timeoutMs?: number;
}

export interface ExecResult {
  exitCode: number;
  stdout: string;
  stderr: string;
  durationMs: number;
}

export type ExecProcess = Promise<ExecResult> & {
  readonly stdout: Readable | null;
  readonly stdin: Writable | null;
  readonly pid: number | undefined;
  /** Stops the child; its failure is then marked `details.stopped` (a consequence, not a cause). */
  kill(signal?: NodeJS.Signals): boolean;
};

const STDERR_TAIL_LINES = 12;
/** stderr kept whole up to this size (for callers that read `result.stderr`); beyond it only the tail and the error lines. */
const STDERR_KEEP_BYTES = 4 * 1024 * 1024;
const ERROR_LINES_KEPT = 20;

export function stderrTail(stderr: string, lines = STDERR_TAIL_LINES): string {
  return stderr.trimEnd().split('\n').slice(-lines).join('\n');
}

/**
 * The lines of a PostgreSQL client's stderr that carry the cause: `ERROR:`, `FATAL:`, `PANIC:`
 * (with or without a `psql:file:line:` or `pg_restore: error:` prefix), in order, without repeats.
 */
export function pgErrorLines(stderr: string, max = ERROR_LINES_KEPT): string[] {
  const out: string[] = [];
  for (const line of stderr.split('\n')) {
    // The server writes its severity followed by two spaces; a function body quoted in the output does not.
    if (!/(^|: )(ERROR|FATAL|PANIC): {2}\S/.test(line) && !/^(pg_dump|pg_restore|pg_dumpall|psql): error: /.test(line)) continue;
    const trimmed = line.trim();
    if (!out.includes(trimmed)) out.push(trimmed);
    if (out.length >= max) break;
  }
  return out;
}

/** File-system failures a program reports on stderr, by errno name. */
const FS_FAILURES: Array<[RegExp, 'ENOSPC' | 'EDQUOT' | 'EROFS' | 'EACCES']> = [
  [/No space left on device|ENOSPC/i, 'ENOSPC'],
  [/Disk quota exceeded|EDQUOT/i, 'EDQUOT'],
  [/Read-only file system|EROFS/i, 'EROFS'],
  [/Permission denied|EACCES/, 'EACCES'],
];

/**
 * Whether a chain member's failure is only a consequence of another's: exec stopped it
 * (`details.stopped`), or its reader went away (SIGPIPE, EPIPE, a prematurely closed stream).
 */
export function isChainConsequence(error: unknown): boolean {
  const e = error as { details?: { stopped?: unknown; signal?: unknown } } | undefined;
  return e?.details?.stopped === true || e?.details?.signal === 'SIGPIPE' || saysReaderLeft(error);
}

/** The failure says the member's reader went away (EPIPE; ECONNRESET from a socket pair; a prematurely closed stream). */
export function saysReaderLeft(error: unknown): boolean {
  const e = error as { message?: string; code?: string } | undefined;
  return /SIGPIPE|EPIPE|Broken pipe|ECONNRESET|Connection reset by peer|ERR_STREAM_PREMATURE_CLOSE/.test(`${e?.message ?? ''} ${e?.code ?? ''}`);
}

/**
 * Settles every member of a chain of processes and streams; when one fails, `stopAll` is called
 * at once (so nothing stays blocked on a full pipe), and the earliest failure that is not a
 * consequence of another is thrown — the real cause (a full disk's NO_SPACE, not the compressor
 * stopped because of it; a killed zstd, not pg_dump's broken pipe after it).
 */
export async function settleChain<T extends readonly unknown[]>(members: { [K in keyof T]: Promise<T[K]> }, stopAll: () => void): Promise<T> {
  const failures: unknown[] = []; // in the order they happened
  const results = await Promise.allSettled(
    members.map((m) =>
      Promise.resolve(m).catch((error: unknown) => {
        failures.push(error);
        if (failures.length === 1) stopAll();
        throw error;
      }),
    ),
  );
  if (failures.length === 0) return results.map((r) => (r as PromiseFulfilledResult<unknown>).value) as unknown as T;
  // An interrupted run stops every member at once, and which one notices first is chance: the
  // line names them all, in the chain's order.
  const stopped = results.flatMap((r) => (r.status === 'rejected' && isPipelineError(r.reason) && r.reason.code === 'ABORTED' ? [r.reason] : []));
  const labels = [...new Set(stopped.map((e) => e.details?.label).filter((l): l is string => typeof l === 'string'))];
  if (labels.length > 1) throw new PipelineError('ABORTED', `${labels.join(' | ')} were stopped because the run was interrupted`, { details: { label: labels.join(' | ') }, cause: stopped[0] });
  throw failures.find((e) => !isChainConsequence(e)) ?? failures[0];
}

/** The command line as it may be shown: quoted where needed, secrets masked. */
export function displayCommand(file: string, args: readonly string[], secrets?: SecretRegistry): string {
  const quoted = [file, ...args].map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replace(/'/g, `'\\''`)}'`));
  const line = quoted.join(' ');
  return secrets ? secrets.mask(line) : line;
}

function isNodeReadable(value: unknown): value is Readable {
  return typeof value === 'object' && value !== null && typeof (value as Readable).pipe === 'function' && typeof (value as Readable).read === 'function';
}

/** Keeps stderr without ever killing a talkative child: the text up to a cap, then the last lines and the error lines. */
class StderrCollector {
  text = '';
  truncated = false;
  #tail: string[] = [];
  #partial = '';
  #errors: string[] = [];
  add(chunk: string): void {
    if (!this.truncated && this.text.length + chunk.length <= STDERR_KEEP_BYTES) this.text += chunk;
    else this.truncated = true;
    const lines = (this.#partial + chunk).split('\n');
    this.#partial = lines.pop()!;
    for (const line of lines) this.#line(line);
  }
  #line(line: string): void {
    this.#tail.push(line);
    if (this.#tail.length > STDERR_TAIL_LINES) this.#tail.shift();
    if (this.#errors.length < ERROR_LINES_KEPT) this.#errors.push(...pgErrorLines(line).filter((l) => !this.#errors.includes(l)));
  }
  /** The whole text, or (when it was too long) a marker, the error lines and the tail. */
  finish(): string {
    if (this.#partial) this.#line(this.#partial);
    this.#partial = '';
    if (!this.truncated) return this.text;
    return ['[stderr too long; showing its error lines and its end]', ...this.#errors, '…', ...this.#tail].join('\n') + '\n';
  }
}

/**
 * Opens a child's stdin or stdout file (created 0600); a failure is the exec's error, naming the path.
 * 'w' truncates only a file that has content: on ext4, truncating a file (even an empty one) makes
 * its last close start writing it all back (auto_da_alloc), blocking this process meanwhile; a
 * restore's scratch copy, deleted minutes later, would go to disk in full for nothing.
 */
function openFile(path: string, flags: 'r' | 'a' | 'w', doing: 'reading' | 'creating'): number {
  let fd: number | undefined;
  try {
    if (flags !== 'w') return openSync(path, flags, 0o600);
    fd = openSync(path, constants.O_WRONLY | constants.O_CREAT, 0o600);
    if (fstatSync(fd).size > 0) ftruncateSync(fd, 0);
    return fd;
  } catch (error) {
    if (fd !== undefined) closeSync(fd);
    throw toPipelineError(fileSystemError(error, path, doing), 'EXEC_FAILED');
  }
}

export function exec(file: string, args: readonly string[] = [], options: ExecOptions = {}): ExecProcess {
  const label = options.label ?? file.split('/').pop()!;
  const env: Record<string, string | undefined> = { ...process.env, ...options.env };
  for (const name of SCRUBBED_ENV) if (!options.env?.[name]) delete env[name];
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete env[k];

  const fromProcess = typeof options.stdin === 'object' && options.stdin !== null && 'fromProcess' in options.stdin;
  const stdin = options.stdin === undefined ? 'ignore' : fromProcess ? 'pipe' : options.stdin;
  const pipeTo = typeof options.stdout === 'object' && 'pipeTo' in options.stdout ? options.stdout.pipeTo : undefined;
  // The consumer's end of its stdin pipe is handed to this child as its stdout: Node.js duplicates
  // a stream's descriptor into the child (the documented `stdio: Stream` of child_process.spawn,
  // which execa passes through as it is). Its bytes never pass through this process, which never
  // reads or writes that stream.
  const theirs = pipeTo?.stdin ?? undefined;
  if (pipeTo && !theirs) throw new Error(`${label}: stdout.pipeTo needs a process started with stdin: { fromProcess: true }`);
  const stdoutMode = pipeTo ? 'pipeTo' : (options.stdout ?? 'pipe');
  const toFile = typeof options.stdout === 'object' && 'file' in options.stdout ? options.stdout : undefined;
  const fromFile = typeof options.stdin === 'object' && options.stdin !== null && 'file' in options.stdin ? options.stdin.file : undefined;
  // Files are opened here and their descriptors given to the child: no byte passes through Node.js.
  let inFd: number | undefined;
  let fd: number | undefined;
  try {
    if (fromFile !== undefined) inFd = openFile(fromFile, 'r', 'reading');
    if (toFile) fd = openFile(toFile.file, toFile.append ? 'a' : 'w', 'creating');
  } catch (error) {
    if (inFd !== undefined) closeSync(inFd);
    const rejected = Promise.reject(error);
    rejected.catch(() => {}); // the caller's await reports it, whenever it comes
    return Object.assign(rejected, { stdout: null, stdin: null, pid: undefined, kill: () => false }) as ExecProcess;
  }
  const started = Date.now();
  const subprocess = execa(file, [...args], {
    cwd: options.cwd,
    env: env as Record<string, string>,
    extendEnv: false,
    // The default 'ignore' is a stdio mode, not input text (it is a string too). Text, bytes and
    // Node streams (which need not have a file descriptor) are written through execa's `input`.
    stdin: inFd !== undefined ? inFd : !fromProcess && options.stdin !== undefined && (typeof stdin === 'string' || stdin instanceof Uint8Array || isNodeReadable(stdin)) ? 'pipe' : (stdin as never),
    input: !fromProcess && options.stdin !== undefined && (typeof stdin === 'string' || stdin instanceof Uint8Array || isNodeReadable(stdin)) ? stdin : undefined,
    stdout: stdoutMode === 'stream' ? 'pipe' : stdoutMode === 'pipeTo' ? theirs : fd !== undefined ? fd : (stdoutMode as never),
    stderr: 'pipe',
    buffer: { stdout: stdoutMode === 'pipe', stderr: false },
    maxBuffer: { stdout: 256 * 1024 * 1024 },
    cancelSignal: options.signal,
    forceKillAfterDelay: 5_000,
    timeout: options.timeoutMs,
    reject: false,
    stripFinalNewline: false,
    cleanup: true,
  } as never);

  const sub = subprocess as unknown as { stdout: Readable | null; stdin: Writable | null; stderr: Readable | null; pid?: number; kill(s?: NodeJS.Signals): boolean };
  const collected = new StderrCollector();
  sub.stderr?.setEncoding('utf8');
  sub.stderr?.on('data', (chunk: string) => collected.add(chunk));
  let stopped = false;
  const stop = (signal?: NodeJS.Signals) => {
    stopped = true;
    return sub.kill(signal);
  };

  const ok = options.okExitCodes ?? [0];
  const promise = (subprocess as unknown as Promise<Record<string, unknown>>).then((r) => {
    const stderr = collected.finish();
    const stdout = typeof r.stdout === 'string' ? r.stdout : '';
    const mask = (s: string) => (options.secrets ? options.secrets.mask(s) : s);
    const command = displayCommand(file, args, options.secrets);
    const exitCode = typeof r.exitCode === 'number' ? r.exitCode : -1;
    if (!r.failed || (typeof r.exitCode === 'number' && ok.includes(r.exitCode) && !r.isCanceled && !r.signal)) {
      return { exitCode, stdout, stderr, durationMs: Date.now() - started };
    }
    const tail = stderrTail(stderr);
    const errorLines = pgErrorLines(stderr);
    // The error lines stay with the tail even when they scrolled out of it.
    const kept = [...errorLines.filter((l) => !tail.includes(l)), tail].filter(Boolean).join('\n');
    const details: Record<string, unknown> = { command, exitCode: r.exitCode, signal: r.signal, stderr: mask(kept) };
    if (errorLines.length > 0) details.errors = errorLines.map(mask);
    if ((r.cause as NodeJS.ErrnoException | undefined)?.code === 'ENOENT' || r.code === 'ENOENT') {
      throw new PipelineError('EXEC_NOT_FOUND', `${label}: program not found (${file})`, { details });
    }
    if (r.isCanceled || options.signal?.aborted) {
      throw new PipelineError('ABORTED', `${label} was stopped because the run was interrupted`, { details: { ...details, label } });
    }
    if (r.timedOut) {
      throw new PipelineError('EXEC_FAILED', `${label} timed out after ${options.timeoutMs} ms`, { details });
    }
    // The program's own words (a full disk under its stdout file is its own write error).
    const ownWords = FS_FAILURES.find(([pattern]) => pattern.test(stderrTail(stderr, 6)))?.[1];
    // Stopped, unless it had already exited on its own with such words (a sibling's broken pipe
    // can be noticed first, and stopping everything then finds it gone).
    if (stopped && !(ownWords && !r.signal)) {
      // Only here: an interrupted run's children are ABORTED, whoever stopped them.
      details.stopped = true;
      throw new PipelineError('EXEC_FAILED', `${label} was stopped (${r.signal ? String(r.signal) : `exit code ${exitCode}`}) because another part of its chain failed`, { details });
    }
    const why = r.signal ? `was killed by ${String(r.signal)}` : `exited with code ${exitCode}`;
    // The cause of a PostgreSQL client's failure is in its ERROR/FATAL lines, often far from the
    // end (the end can be the middle of a function body); other programs end with it.
    const shown = mask(errorLines.length > 0 ? errorLines.slice(0, 3).join(' | ') : stderrTail(stderr, 3)).trim();
    const causeCode = (r.cause as NodeJS.ErrnoException | undefined)?.code;
    const errno = ownWords ?? FS_FAILURES.map(([, code]) => code).find((code) => code === causeCode);
    const said = shown || (r.cause as Error | undefined)?.message || why;
    if (errno === 'ENOSPC' || errno === 'EDQUOT') {
      throw new PipelineError('NO_SPACE', `${label} ran out of disk space${options.writes ? ` writing ${options.writes}` : ''} (${errno}): ${said}`, { details: { ...details, path: options.writes, errno } });
    }
    if (errno && options.writes) {
      throw new PipelineError('ACCESS_DENIED', `${label} cannot write ${options.writes} (${errno}): ${said}`, { details: { ...details, path: options.writes, errno } });
    }
    throw new PipelineError('EXEC_FAILED', `${label} ${why}${shown ? `: ${shown}` : ''}`, { details });
  });

  for (const opened of [fd, inFd]) {
    if (opened === undefined) continue;
    const close = () => closeSync(opened);
    void promise.then(close, close);
  }

  if (pipeTo && theirs) {
    // The consumer's stdin is a socket pair: shutting our side down before this child exits would
    // end the consumer's input early, so do it when the child is gone (its data is in the pipe).
    theirs.on('error', () => {}); // never written to by us; a consumer that died first is reported by its own exit
    void promise.then(
      () => theirs.end(),
      () => theirs.end(),
    );
  }

  // execa drains an unbuffered stdout that nobody reads yet; hand callers a stream attached now,
  // whose backpressure pauses the child until they read. A reader that goes away before the end
  // (a file write that failed) stops the child: nothing would ever read the rest of its output.
  let stdout = sub.stdout;
  if (stdoutMode === 'stream' && sub.stdout) {
    const raw = sub.stdout;
    const out = raw.pipe(new PassThrough({ highWaterMark: 1024 * 1024 }));
    out.on('close', () => {
      if (!out.readableEnded) {
        raw.unpipe(out);
        raw.resume();
        stop();
      }
    });
    stdout = out;
  }
  return Object.assign(promise, {
    stdout,
    stdin: sub.stdin,
    pid: sub.pid,
    kill: (signal?: NodeJS.Signals) => stop(signal),
  }) as ExecProcess;
}
