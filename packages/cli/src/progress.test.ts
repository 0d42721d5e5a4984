import { createHooks, tapOnlyHooks } from '@backup-pipeline/core';
import { describe, expect, it } from 'vitest';
import { describeProgress, progressReporter } from './progress.js';

function harness(tty: boolean) {
  const hooks = createHooks();
  const lines: string[] = [];
  let clock = 0;
  const observe = progressReporter({ tty, write: (t) => void lines.push(t), now: () => clock, intervalMs: 5_000 })!;
  observe(tapOnlyHooks(hooks, 'observer'));
  return { hooks, lines, tick: (ms: number) => (clock += ms) };
}

describe('progress', () => {
  it.each([
    [{ plugin: 'pg-dump', task: 'dump', bytes: 1536 }, 'dump 1.5 KiB'],
    [{ plugin: 's3', task: 'upload:bucket', bytes: 1024, totalBytes: 4096 }, 'upload:bucket 1.0 KiB of 4.0 KiB'],
    [{ plugin: 'pg-dump', task: 'dump', done: 3, total: 40, message: 'public.statuses' }, 'dump 3/40 public.statuses'],
  ])('describes %o', (event, text) => expect(describeProgress(event)).toBe(text));

  it('without a terminal, logs each task at most every interval', () => {
    const { hooks, lines, tick } = harness(false);
    hooks.progress.call({ plugin: 'pg-dump', task: 'dump', bytes: 10 });
    tick(1_000);
    hooks.progress.call({ plugin: 'pg-dump', task: 'dump', bytes: 20 });
    hooks.progress.call({ plugin: 's3', task: 'upload:bucket', bytes: 5 });
    tick(5_000);
    hooks.progress.call({ plugin: 'pg-dump', task: 'dump', bytes: 30 });
    expect(lines).toEqual(['progress: [pg-dump] dump 10 B\n', 'progress: [s3] upload:bucket 5 B\n', 'progress: [pg-dump] dump 30 B\n']);
  });

  it('on a terminal, redraws one status line with the stage and its tasks, and clears it when the stage ends', () => {
    const { hooks, lines, tick } = harness(true);
    hooks.stageStart.call({ plugin: 'pg-dump', hook: 'produce', startedAt: 0 });
    tick(2_000);
    hooks.progress.call({ plugin: 'pg-dump', task: 'dump', bytes: 2048 });
    tick(50);
    hooks.progress.call({ plugin: 'pg-dump', task: 'dump', bytes: 4096 }); // throttled
    hooks.stageFinish.call({ plugin: 'pg-dump', hook: 'produce', startedAt: 0, durationMs: 2050 });
    expect(lines).toEqual(['\r\u001b[K[pg-dump → produce 0 ms]', '\r\u001b[K[pg-dump → produce 2.0 s]  dump 2.0 KiB', '\r\u001b[K']);
  });

  it('prints nothing with --quiet', () => {
    expect(progressReporter({ quiet: true })).toBeUndefined();
  });
});
