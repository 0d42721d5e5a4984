/** What the CLI prints: errors (one line, then the hint), summaries, tables. */
import { EXIT, isPipelineError, toPipelineError, type PipelineError } from '@backup-pipeline/core';
import type { GlobalOptions } from './main.js';

export { formatBytes, formatDuration } from '@backup-pipeline/core';

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


export function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, i) => Math.max(...rows.map((r) => (r[i] ?? '').length)));
  return rows.map((r) => r.map((cell, i) => cell.padEnd(widths[i]!)).join('  ').trimEnd()).join('\n') + '\n';
}
