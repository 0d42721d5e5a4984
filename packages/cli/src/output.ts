/** What the CLI prints: errors (one line, then the hint), summaries, tables. */
import { EXIT, isPipelineError, toPipelineError, type PipelineError } from '@backup-pipeline/core';
import type { GlobalOptions } from './main.js';

export { EXIT_CODES_HELP } from './help-text.js';

const color = (code: number) => (text: string) => (process.stderr.isTTY && !process.env.NO_COLOR ? `\u001b[${code}m${text}\u001b[0m` : text);
export const red = color(31);
export const dim = color(2);
export const green = color(32);

export function printError(error: PipelineError): void {
  process.stderr.write(`${red('error')} ${error.describe()}\n`);
  if (error.hint) process.stderr.write(`${dim('hint')}  ${error.hint}\n`);
}

/** Prints an error the way every command does, and returns its exit code. */
export function reportError(caught: unknown, options: Partial<GlobalOptions> = {}): number {
  const error = isPipelineError(caught) ? caught : toPipelineError(caught, 'INTERNAL');
  if (!isPipelineError(caught)) error.hint = 'This is a bug in backup-pipeline or a plugin; please report it with the log.';
  printError(error);
  if (options.json) {
    process.stdout.write(
      JSON.stringify({ ok: false, error: { code: error.code, message: error.message, hint: error.hint, plugin: error.plugin, hook: error.hook, details: error.details } }, null, 2) + '\n',
    );
  }
  return error.exitCode ?? EXIT.failed;
}

export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let value = bytes;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit++;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

export function formatDuration(ms: number): string {
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60_000)} min ${Math.round((ms % 60_000) / 1000)} s`;
}

export function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n') + '\n';
}
