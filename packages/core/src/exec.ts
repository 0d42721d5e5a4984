/**
 * The one way backup-pipeline runs a program: an argv array (never a shell string), stdin ignored
 * unless given, registered secrets masked wherever the command line or its stderr is shown, the
 * last lines of stderr kept for the error, the run's AbortSignal wired to kill the child, and the
 * exit code always checked.
 */
import { PassThrough, type Readable, type Writable } from 'node:stream';
import { execa } from 'execa';
import { PipelineError } from './errors.js';
import type { SecretRegistry } from './secrets.js';

/** Variables that must never reach a child: passwords go through a private PGPASSFILE instead. */
const SCRUBBED_ENV = ['PGPASSWORD', 'PGPASSFILE_CONTENT'];

export interface ExecOptions {
  cwd?: string;
  /** Added to (and overriding) the inherited environment. An `undefined` value removes a variable. */
  env?: Record<string, string | undefined>;
  /**
   * Text, bytes, a readable stream or `{ file }` for stdin. Default: ignored. `{ fromProcess: true }`:
   * another process will write it (started with `stdout: { pipeTo: thisProcess }`).
   */
  stdin?: string | Uint8Array | Readable | { file: string } | { fromProcess: true };
  /**
   * `'pipe'` (default: buffered, returned as `stdout`), `'stream'` (read it from `.stdout` yourself), a file, or `'ignore'`.
   * `{ pipeTo: consumer }` connects stdout straight to the stdin of `consumer` (started with
   * `stdin: { fromProcess: true }`): an OS pipe, no byte passes through Node.js. The consumer sees
   * end-of-file when this process exits.
   */
  stdout?: 'pipe' | 'stream' | 'ignore' | { file: string; append?: boolean } | { pipeTo: ExecProcess };
  signal?: AbortSignal;
  secrets?: SecretRegistry;
  /** A short name for messages (default: the program's base name). */
  label?: string;
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
  kill(signal?: NodeJS.Signals): boolean;
};

const STDERR_TAIL_LINES = 12;

export function stderrTail(stderr: string, lines = STDERR_TAIL_LINES): string {
  return stderr.trimEnd().split('\n').slice(-lines).join('\n');
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

export function exec(file: string, args: readonly string[] = [], options: ExecOptions = {}): ExecProcess {
  const label = options.label ?? file.split('/').pop()!;
  const env: Record<string, string | undefined> = { ...process.env, ...options.env };
  for (const name of SCRUBBED_ENV) if (!options.env?.[name]) delete env[name];
  for (const [k, v] of Object.entries(env)) if (v === undefined) delete env[k];

  const fromProcess = typeof options.stdin === 'object' && options.stdin !== null && 'fromProcess' in options.stdin;
  const stdin = options.stdin === undefined ? 'ignore' : fromProcess ? 'pipe' : options.stdin;
  const pipeTo = typeof options.stdout === 'object' && 'pipeTo' in options.stdout ? options.stdout.pipeTo : undefined;
  // The consumer's end of its stdin pipe, handed to this child as its stdout (execa passes an fd number natively).
  const pipeFd = pipeTo ? (pipeTo.stdin as unknown as { _handle?: { fd?: number } } | null)?._handle?.fd : undefined;
  if (pipeTo && (typeof pipeFd !== 'number' || pipeFd < 0)) throw new Error(`${label}: stdout.pipeTo needs a process started with stdin: { fromProcess: true }`);
  const stdoutMode = pipeTo ? 'pipeTo' : (options.stdout ?? 'pipe');
  const started = Date.now();
  const subprocess = execa(file, [...args], {
    cwd: options.cwd,
    env: env as Record<string, string>,
    extendEnv: false,
    // The default 'ignore' is a stdio mode, not input text (it is a string too). Text, bytes and
    // Node streams (which need not have a file descriptor) are written through execa's `input`.
    stdin: !fromProcess && options.stdin !== undefined && (typeof stdin === 'string' || stdin instanceof Uint8Array || isNodeReadable(stdin)) ? 'pipe' : (stdin as never),
    input: !fromProcess && options.stdin !== undefined && (typeof stdin === 'string' || stdin instanceof Uint8Array || isNodeReadable(stdin)) ? stdin : undefined,
    stdout: stdoutMode === 'stream' ? 'pipe' : stdoutMode === 'pipeTo' ? pipeFd : (stdoutMode as never),
    stderr: 'pipe',
    buffer: { stdout: stdoutMode === 'pipe', stderr: true },
    maxBuffer: { stdout: 256 * 1024 * 1024, stderr: 8 * 1024 * 1024 },
    cancelSignal: options.signal,
    forceKillAfterDelay: 5_000,
    timeout: options.timeoutMs,
    reject: false,
    stripFinalNewline: false,
    cleanup: true,
  } as never);

  const ok = options.okExitCodes ?? [0];
  const promise = (subprocess as unknown as Promise<Record<string, unknown>>).then((r) => {
    const stderr = typeof r.stderr === 'string' ? r.stderr : '';
    const stdout = typeof r.stdout === 'string' ? r.stdout : '';
    const mask = (s: string) => (options.secrets ? options.secrets.mask(s) : s);
    const command = displayCommand(file, args, options.secrets);
    const exitCode = typeof r.exitCode === 'number' ? r.exitCode : -1;
    if (!r.failed || (typeof r.exitCode === 'number' && ok.includes(r.exitCode) && !r.isCanceled && !r.signal)) {
      return { exitCode, stdout, stderr, durationMs: Date.now() - started };
    }
    const details = { command, exitCode: r.exitCode, signal: r.signal, stderr: mask(stderrTail(stderr)) };
    if ((r.cause as NodeJS.ErrnoException | undefined)?.code === 'ENOENT' || r.code === 'ENOENT') {
      throw new PipelineError('EXEC_NOT_FOUND', `${label}: program not found (${file})`, { details });
    }
    if (r.isCanceled || options.signal?.aborted) {
      throw new PipelineError('ABORTED', `${label} was stopped because the run was interrupted`, { details });
    }
    if (r.timedOut) {
      throw new PipelineError('EXEC_FAILED', `${label} timed out after ${options.timeoutMs} ms`, { details });
    }
    const why = r.signal ? `was killed by ${String(r.signal)}` : `exited with code ${exitCode}`;
    const tail = mask(stderrTail(stderr, 3)).trim();
    throw new PipelineError('EXEC_FAILED', `${label} ${why}${tail ? `: ${tail}` : ''}`, { details });
  });

  if (pipeTo) {
    // The consumer's stdin is a socket pair: shutting our side down before this child exits would
    // end the consumer's input early, so do it when the child is gone (its data is in the pipe).
    const theirs = pipeTo.stdin!;
    theirs.on('error', () => {}); // never written to by us; a consumer that died first is reported by its own exit
    void promise.then(
      () => theirs.end(),
      () => theirs.end(),
    );
  }

  const sub = subprocess as unknown as { stdout: Readable | null; stdin: Writable | null; pid?: number; kill(s?: NodeJS.Signals): boolean };
  // execa drains an unbuffered stdout that nobody reads yet; hand callers a stream attached now,
  // whose backpressure pauses the child until they read.
  const stdout = stdoutMode === 'stream' && sub.stdout ? sub.stdout.pipe(new PassThrough({ highWaterMark: 1024 * 1024 })) : sub.stdout;
  return Object.assign(promise, {
    stdout,
    stdin: sub.stdin,
    pid: sub.pid,
    kill: (signal?: NodeJS.Signals) => sub.kill(signal),
  }) as ExecProcess;
}
