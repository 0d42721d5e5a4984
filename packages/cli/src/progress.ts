/**
 * Progress of long stages (dumps, uploads, restores), shown through the output layer.
 * - On a terminal: one status line — the running stage and its elapsed time, then each task with
 *   its bytes, rate and, when the total is known, percentage and ETA — redrawn at most 10 times a
 *   second. The output layer clears it before any log line and redraws it after.
 * - Without a terminal (or with CI=true, or `--log-format json`): a log record per task at most
 *   every few seconds, with the numbers as fields (`progress: {task, bytes, rate, etaMs…}`), so
 *   stderr stays JSON lines.
 * - With --quiet or --json: nothing.
 */
import type { Logger, ProgressEvent, StageEvent, TapOnlyHooks } from '@backup-pipeline/core';
import { formatBytes, formatDuration, output as defaultOutput, type Output } from './output.js';

export interface ProgressOptions {
  quiet?: boolean;
  /** Where records go without a status line. */
  log?: Pick<Logger, 'info'>;
  /** The output layer whose status line is used (default: the process's). */
  output?: Pick<Output, 'statusLine' | 'status' | 'clearStatus'>;
  /** Minimum time between two log records of one task without a status line. */
  intervalMs?: number;
  now?: () => number;
}

/** How far one task has got, with its rate over the last few seconds. */
export interface TaskProgress extends ProgressEvent {
  /** Bytes per second over the last few seconds (undefined until two samples are apart). */
  rate?: number;
  /** Time left at that rate, when the total is known. */
  etaMs?: number;
}

const RATE_WINDOW_MS = 5_000;

/** Keeps recent (time, bytes) samples per task and derives a rate and an ETA. */
export class RateMeter {
  readonly #samples = new Map<string, Array<[number, number]>>();

  measure(event: ProgressEvent, now: number): TaskProgress {
    if (event.bytes === undefined) return { ...event };
    const samples = this.#samples.get(event.task) ?? [];
    // A counter that went back (a retried upload) starts over.
    if (samples.length > 0 && event.bytes < samples.at(-1)![1]) samples.length = 0;
    samples.push([now, event.bytes]);
    while (samples.length > 2 && now - samples[1]![0] >= RATE_WINDOW_MS) samples.shift();
    this.#samples.set(event.task, samples);
    const [t0, b0] = samples[0]!;
    const elapsed = now - t0;
    if (elapsed <= 0) return { ...event };
    const rate = ((event.bytes - b0) * 1000) / elapsed;
    const out: TaskProgress = { ...event, rate };
    if (event.totalBytes && rate > 0 && event.bytes <= event.totalBytes) out.etaMs = Math.round(((event.totalBytes - event.bytes) * 1000) / rate);
    return out;
  }

  forget(task?: string): void {
    if (task === undefined) this.#samples.clear();
    else this.#samples.delete(task);
  }
}

export function describeProgress(event: TaskProgress): string {
  const parts = [event.task];
  if (event.bytes !== undefined) {
    if (event.totalBytes) {
      const pct = Math.min(100, Math.floor((event.bytes / event.totalBytes) * 100));
      parts.push(`${formatBytes(event.bytes)} of ${formatBytes(event.totalBytes)} (${pct}%)`);
    } else {
      parts.push(formatBytes(event.bytes));
    }
  }
  if (event.rate !== undefined) parts.push(`${formatBytes(Math.round(event.rate))}/s`);
  if (event.etaMs !== undefined) parts.push(`ETA ${formatDuration(event.etaMs)}`);
  if (event.done !== undefined) parts.push(event.total ? `${event.done}/${event.total}` : String(event.done));
  if (event.message) parts.push(event.message);
  return parts.join(' ');
}

/** The numbers of a progress record, for JSON readers. */
function fields(event: TaskProgress) {
  const { plugin, task, bytes, totalBytes, done, total, rate, etaMs } = event;
  return { plugin, task, bytes, totalBytes, done, total, rate: rate === undefined ? undefined : Math.round(rate), etaMs };
}

export function progressReporter(options: ProgressOptions = {}): ((hooks: TapOnlyHooks) => void) | undefined {
  if (options.quiet) return undefined;
  const out = options.output ?? defaultOutput;
  const now = options.now ?? Date.now;
  const interval = options.intervalMs ?? 5_000;
  const meter = new RateMeter();
  const lastRecord = new Map<string, number>();
  const tasks = new Map<string, string>();
  let stage: StageEvent | undefined;
  let drawn = -Infinity;

  const redraw = (force = false) => {
    if (!force && now() - drawn < 100) return;
    drawn = now();
    const head = stage ? `[${stage.plugin} → ${stage.hook} ${formatDuration(now() - stage.startedAt)}]` : '';
    out.status([head, ...tasks.values()].filter(Boolean).join('  '));
  };

  return (hooks) => {
    hooks.stageStart.tap('progress', (event) => {
      stage = event;
      if (out.statusLine) redraw(true);
    });
    hooks.stageFinish.tap('progress', () => {
      stage = undefined;
      tasks.clear();
      meter.forget();
      lastRecord.clear();
      out.clearStatus();
    });
    hooks.progress.tap('progress', (event) => {
      const measured = meter.measure(event, now());
      const text = describeProgress(measured);
      if (out.statusLine) {
        tasks.set(event.task, text);
        redraw();
        return;
      }
      if (!options.log) return;
      const last = lastRecord.get(event.task);
      if (last !== undefined && now() - last < interval) return;
      lastRecord.set(event.task, now());
      options.log.info({ progress: fields(measured) }, `${event.plugin}: ${text}`);
    });
  };
}
