/**
 * The CLI's one output layer. Everything the `pipeline` command shows goes through `output`: log
 * lines, the status line, tables, plans, summaries, `--json` results and errors. So:
 * - every byte is masked by the config's secrets registry (the core's `SecretRegistry.mask`) before
 *   it reaches stdout or stderr;
 * - on a terminal, the status line (progress) is owned here: it is cleared before any other text is
 *   written and redrawn after it, so a log line is never glued onto it;
 * - without a terminal (or with `--log-format json`) there is no status line at all: progress
 *   goes out as log records, so stderr stays JSON lines — up to a failure, which still ends with
 *   its two-line report (`error CODE: …`, `hint …`) that people and scripts read.
 */
import { writeSync } from 'node:fs';
import { EXIT, isPipelineError, toPipelineError, type PipelineError, type SecretRegistry } from '@backup-pipeline/core';
import type { GlobalOptions } from './main.js';

export { formatBytes, formatDuration } from '@backup-pipeline/core';

export { EXIT_CODES_HELP } from './help-text.js';

const CLEAR_LINE = '\r\u001b[K';

/**
 * Writes all of `text` to stderr synchronously (so log lines and the status line keep their order,
 * and nothing is lost at exit): a partial write is continued, a full non-blocking pipe (EAGAIN) is
 * waited for, and a reader that went away (EPIPE) is not a reason to fail a backup.
 */
export function writeAllSync(fd: number, text: string): void {
  let buffer = Buffer.from(text);
  while (buffer.length > 0) {
    try {
      buffer = buffer.subarray(writeSync(fd, buffer));
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'EPIPE') return;
      if (code !== 'EAGAIN') throw error;
      Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, 5);
    }
  }
}

export interface OutputStreams {
  /** Writes to stdout / stderr (default: the process's, stderr synchronously). */
  stdout?: (text: string) => void;
  stderr?: (text: string) => void;
  /** Whether stderr is a terminal a status line may be drawn on (default: a TTY and not CI). */
  statusLine?: boolean;
  /** Whether stdout shows on the same terminal (so the status line is cleared before stdout text too). */
  stdoutIsTerminal?: boolean;
  /** Width of the terminal (default: stderr's columns, else 80). */
  columns?: () => number;
}

export class Output {
  readonly #registries = new Set<SecretRegistry>();
  #stdout: (text: string) => void;
  #stderr: (text: string) => void;
  #statusAllowed: boolean;
  #stdoutIsTerminal: boolean;
  #columns: () => number;
  /** The status line's text; drawn when not empty. */
  #status = '';
  #drawn = false;
  #notice?: (text: string) => void;

  constructor(streams: OutputStreams = {}) {
    this.#stdout = streams.stdout ?? ((text) => void process.stdout.write(text));
    this.#stderr = streams.stderr ?? ((text) => writeAllSync(2, text));
    this.#statusAllowed = streams.statusLine ?? (process.stderr.isTTY === true && !process.env.CI);
    this.#stdoutIsTerminal = streams.stdoutIsTerminal ?? process.stdout.isTTY === true;
    this.#columns = streams.columns ?? (() => process.stderr.columns || 80);
  }

  /** Masks with this registry too (the config's: `${file:…}` values, passwords read by stages). */
  useSecrets(registry: SecretRegistry): void {
    this.#registries.add(registry);
  }

  /** The one masking function of every channel. */
  mask(text: string): string {
    let out = text;
    for (const registry of this.#registries) out = registry.mask(out);
    return out;
  }

  /** Whether a status line is drawn; the command may switch it off (`--quiet`, `--log-format json`). */
  get statusLine(): boolean {
    return this.#statusAllowed;
  }

  disableStatusLine(): void {
    this.clearStatus();
    this.#statusAllowed = false;
  }

  /** Text for stdout (results, tables, plans), masked. */
  stdout(text: string): void {
    this.#around(this.#stdoutIsTerminal, () => this.#stdout(this.mask(text)));
  }

  /** A `--json` result on stdout, masked. */
  json(value: unknown): void {
    this.stdout(JSON.stringify(value, null, 2) + '\n');
  }

  /** Text for stderr (log lines, errors), masked; the status line is cleared first and redrawn after. */
  stderr(text: string): void {
    this.#around(true, () => this.#stderr(this.mask(text)));
  }

  /** Where notices go once a logger is open (a log record, so JSON lines stay JSON lines). */
  useNotices(sink: (text: string) => void): void {
    this.#notice = sink;
  }

  /** A one-line notice for the person or the log (e.g. "SIGTERM received"): a log record once a logger is open. */
  notice(text: string): void {
    if (this.#notice) this.#notice(text);
    else this.stderr(`${text}\n`);
  }

  /** Sets the status line (ignored without a terminal). Empty text removes it. */
  status(text: string): void {
    if (!this.#statusAllowed) return;
    this.#status = text;
    this.#draw();
  }

  clearStatus(): void {
    this.#status = '';
    this.#erase();
  }

  #around(affectsTerminal: boolean, write: () => void): void {
    if (affectsTerminal) this.#erase();
    write();
    if (affectsTerminal && this.#status) this.#draw();
  }

  #erase(): void {
    if (!this.#drawn) return;
    this.#stderr(CLEAR_LINE);
    this.#drawn = false;
  }

  #draw(): void {
    if (!this.#status) return this.#erase();
    // One line shorter than the terminal: a line that wraps cannot be cleared with \r.
    const width = Math.max(10, this.#columns() - 1);
    const line = this.mask(this.#status).replace(/[\r\n\t]/g, ' ');
    this.#stderr(CLEAR_LINE + (line.length > width ? line.slice(0, width - 1) + '…' : line));
    this.#drawn = true;
  }
}

/** The process's output layer. */
export const output = new Output();

const color = (code: number) => (text: string) => (process.stderr.isTTY && !process.env.NO_COLOR ? `\u001b[${code}m${text}\u001b[0m` : text);
export const red = color(31);
export const dim = color(2);
export const green = color(32);

export function printError(error: PipelineError): void {
  output.clearStatus();
  output.stderr(`${red('error')} ${error.describe()}\n`);
  if (error.hint) output.stderr(`${dim('hint')}  ${error.hint}\n`);
}

/** Prints an error the way every command does, and returns its exit code. */
export function reportError(caught: unknown, options: Partial<GlobalOptions> = {}): number {
  const error = isPipelineError(caught) ? caught : toPipelineError(caught, 'INTERNAL');
  if (!isPipelineError(caught)) error.hint = 'This is a bug in backup-pipeline or a plugin; please report it with the log.';
  printError(error);
  if (options.json) {
    output.json({ ok: false, error: { code: error.code, message: error.message, hint: error.hint, plugin: error.plugin, hook: error.hook, details: error.details } });
  }
  return error.exitCode ?? EXIT.failed;
}

export function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n') + '\n';
}
