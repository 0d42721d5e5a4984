/**
 * Progress of long stages. On a terminal: one status line, redrawn at most 10 times a second
 * (dump bytes and tables, uploads per destination, restores). Without a terminal or with CI=true:
 * a log line per task at most every few seconds. With --quiet: nothing.
 */
import type { ProgressEvent, StageEvent, TapOnlyHooks } from '@backup-pipeline/core';
import { formatBytes, formatDuration } from './output.js';

export interface ProgressOptions {
  quiet?: boolean;
  /** Where lines go (default stderr). */
  write?: (text: string) => void;
  tty?: boolean;
  /** Minimum time between two log lines of one task without a terminal. */
  intervalMs?: number;
  now?: () => number;
}

export function describeProgress(event: ProgressEvent): string {
  const parts = [event.task];
  if (event.bytes !== undefined) parts.push(event.totalBytes ? `${formatBytes(event.bytes)} of ${formatBytes(event.totalBytes)}` : formatBytes(event.bytes));
  if (event.done !== undefined) parts.push(event.total ? `${event.done}/${event.total}` : String(event.done));
  if (event.message) parts.push(event.message);
  return parts.join(' ');
}

export function progressReporter(options: ProgressOptions = {}): ((hooks: TapOnlyHooks) => void) | undefined {
  if (options.quiet) return undefined;
  const write = options.write ?? ((text: string) => void process.stderr.write(text));
  const tty = options.tty ?? (process.stderr.isTTY === true && !process.env.CI);
  const now = options.now ?? Date.now;
  const interval = options.intervalMs ?? 5_000;
  const lastLine = new Map<string, number>();
  const tasks = new Map<string, string>();
  let stage: StageEvent | undefined;
  let drawn = 0;
  let visible = false;

  const redraw = (force = false) => {
    if (!force && now() - drawn < 100) return;
    drawn = now();
    const head = stage ? `[${stage.plugin} → ${stage.hook} ${formatDuration(now() - stage.startedAt)}]` : '';
    const line = [head, ...tasks.values()].filter(Boolean).join('  ');
    write(`\r\u001b[K${line.slice(0, (process.stderr.columns ?? 120) - 1)}`);
    visible = line.length > 0;
  };
  const clear = () => {
    if (tty && visible) write('\r\u001b[K');
    visible = false;
  };

  return (hooks) => {
    hooks.stageStart.tap('progress', (event) => {
      stage = event;
      if (tty) redraw(true);
    });
    hooks.stageFinish.tap('progress', () => {
      stage = undefined;
      tasks.clear();
      clear();
    });
    hooks.progress.tap('progress', (event) => {
      const text = describeProgress(event);
      if (tty) {
        tasks.set(event.task, text);
        redraw();
        return;
      }
      const last = lastLine.get(event.task);
      if (last !== undefined && now() - last < interval) return;
      lastLine.set(event.task, now());
      write(`progress: [${event.plugin}] ${text}\n`);
    });
  };
}
