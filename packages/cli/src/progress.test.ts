import { spawn } from 'node:child_process';
import { resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createHooks, SecretRegistry, tapOnlyHooks } from '@backup-pipeline/core';
import { describe, expect, it } from 'vitest';
import { Output } from './output.js';
import { describeProgress, progressReporter, RateMeter } from './progress.js';

const CLEAR = '\r\u001b[K';

function harness(statusLine: boolean) {
  const hooks = createHooks();
  const stderr: string[] = [];
  const stdout: string[] = [];
  const records: Array<{ fields: unknown; msg: string }> = [];
  let clock = 0;
  const output = new Output({ statusLine, stdoutIsTerminal: true, stderr: (t) => void stderr.push(t), stdout: (t) => void stdout.push(t), columns: () => 200 });
  const log = { info: (fields: unknown, msg: string) => void records.push({ fields, msg }) };
  const observe = progressReporter({ output, log: log as never, now: () => clock, intervalMs: 5_000 })!;
  observe(tapOnlyHooks(hooks, 'observer'));
  return { hooks, output, stderr, stdout, records, tick: (ms: number) => (clock += ms) };
}

describe('progress', () => {
  it.each([
    [{ plugin: 'pg-dump', task: 'dump', bytes: 1536 }, 'dump 1.5 KiB'],
    [{ plugin: 's3', task: 'upload:bucket', bytes: 1024, totalBytes: 4096 }, 'upload:bucket 1.0 KiB of 4.0 KiB (25%)'],
    [{ plugin: 's3', task: 'upload:bucket', bytes: 1024, totalBytes: 4096, rate: 512, etaMs: 6_000 }, 'upload:bucket 1.0 KiB of 4.0 KiB (25%) 512 B/s ETA 6.0 s'],
    [{ plugin: 'pg-dump', task: 'dump', bytes: 3 << 20, rate: 1 << 20 }, 'dump 3.0 MiB 1.0 MiB/s'],
    [{ plugin: 'pg-dump', task: 'dump', done: 3, total: 40, message: 'public.statuses' }, 'dump 3/40 public.statuses'],
  ])('describes %o', (event, text) => expect(describeProgress(event)).toBe(text));

  it('measures a rate over the last seconds and an ETA from the total', () => {
    const meter = new RateMeter();
    expect(meter.measure({ plugin: 's3', task: 'up', bytes: 0, totalBytes: 10_000 }, 0)).not.toHaveProperty('rate');
    expect(meter.measure({ plugin: 's3', task: 'up', bytes: 2_000, totalBytes: 10_000 }, 1_000)).toMatchObject({ rate: 2_000, etaMs: 4_000 });
    // A counter that goes back (a retried upload) starts over instead of a negative rate.
    expect(meter.measure({ plugin: 's3', task: 'up', bytes: 100, totalBytes: 10_000 }, 2_000)).not.toHaveProperty('rate');
    // Without a total: a rate, no ETA.
    meter.measure({ plugin: 'pg-dump', task: 'dump', bytes: 0 }, 0);
    const dump = meter.measure({ plugin: 'pg-dump', task: 'dump', bytes: 5_000 }, 500);
    expect(dump).toMatchObject({ rate: 10_000 });
    expect(dump).not.toHaveProperty('etaMs');
  });

  it('without a terminal, writes a log record per task at most every interval, never text on stderr', () => {
    const { hooks, stderr, records, tick } = harness(false);
    hooks.stageStart.call({ plugin: 'pg-dump', hook: 'produce', startedAt: 0 });
    hooks.progress.call({ plugin: 'pg-dump', task: 'dump', bytes: 10 });
    tick(1_000);
    hooks.progress.call({ plugin: 'pg-dump', task: 'dump', bytes: 20 });
    hooks.progress.call({ plugin: 's3', task: 'upload:bucket', bytes: 5, totalBytes: 10 });
    tick(5_000);
    hooks.progress.call({ plugin: 'pg-dump', task: 'dump', bytes: 30 });
    expect(stderr).toEqual([]);
    expect(records.map((r) => r.msg)).toEqual(['pg-dump: dump 10 B', 's3: upload:bucket 5 B of 10 B (50%)', 'pg-dump: dump 30 B 2 B/s']);
    expect(records[2]!.fields).toEqual({ progress: { plugin: 'pg-dump', task: 'dump', bytes: 30, rate: 2 } });
  });

  it('on a terminal, redraws one status line with the stage and its tasks, and clears it when the stage ends', () => {
    const { hooks, stderr, records, tick } = harness(true);
    hooks.stageStart.call({ plugin: 'pg-dump', hook: 'produce', startedAt: 0 });
    tick(2_000);
    hooks.progress.call({ plugin: 'pg-dump', task: 'dump', bytes: 2048 });
    tick(50);
    hooks.progress.call({ plugin: 'pg-dump', task: 'dump', bytes: 4096 }); // throttled
    hooks.stageFinish.call({ plugin: 'pg-dump', hook: 'produce', startedAt: 0, durationMs: 2050 });
    expect(stderr).toEqual([`${CLEAR}[pg-dump → produce 0 ms]`, `${CLEAR}[pg-dump → produce 2.0 s]  dump 2.0 KiB`, CLEAR]);
    expect(records).toEqual([]);
  });

  it('prints nothing with --quiet', () => {
    expect(progressReporter({ quiet: true })).toBeUndefined();
  });
});

describe('output layer', () => {
  it('clears the status line before a log line or stdout text and redraws it after', () => {
    const { output, stderr, stdout } = harness(true);
    output.status('[pg-dump → produce 1.0 s]  dump 1.0 MiB');
    output.stderr('{"level":30,"msg":"hello"}\n');
    output.stdout('a table\n');
    output.clearStatus();
    output.stderr('after\n');
    expect(stderr).toEqual([
      `${CLEAR}[pg-dump → produce 1.0 s]  dump 1.0 MiB`,
      CLEAR,
      '{"level":30,"msg":"hello"}\n',
      `${CLEAR}[pg-dump → produce 1.0 s]  dump 1.0 MiB`,
      CLEAR,
      `${CLEAR}[pg-dump → produce 1.0 s]  dump 1.0 MiB`,
      CLEAR,
      'after\n',
    ]);
    expect(stdout).toEqual(['a table\n']);
  });

  it('keeps the status line shorter than the terminal, on one line', () => {
    const lines: string[] = [];
    const output = new Output({ statusLine: true, stderr: (t) => void lines.push(t), stdout: () => {}, columns: () => 20 });
    output.status('0123456789\n0123456789abcdef');
    expect(lines).toEqual([`${CLEAR}0123456789 0123456…`]);
  });

  it('draws no status line without a terminal', () => {
    const { output, stderr } = harness(false);
    output.status('dump 1 MiB');
    output.stderr('line\n');
    expect(stderr).toEqual(['line\n']);
  });

  it('masks registered secrets on every channel: stdout, --json, stderr, the status line, notices', () => {
    const { output, stderr, stdout } = harness(true);
    const secrets = new SecretRegistry();
    secrets.add('s3cr"et');
    output.useSecrets(secrets);
    output.stdout('plan: rsync to user:s3cr"et@host\n');
    output.json({ where: 'user:s3cr"et@host' });
    output.status('upload s3cr"et');
    output.stderr('error s3cr"et\n');
    output.clearStatus();
    output.notice('notice s3cr"et');
    const all = [...stdout, ...stderr].join('');
    expect(all).not.toContain('s3cr');
    expect(stdout).toEqual(['plan: rsync to user:***@host\n', '{\n  "where": "user:***@host"\n}\n']);
    expect(stderr).toContain('error ***\n');
    expect(stderr).toContain('notice ***\n');
  });

  it('writes all of a large text to stderr, and a reader that went away (EPIPE) does not fail the process', async () => {
    const dist = resolve(fileURLToPath(import.meta.url), '../../dist/output.js');
    const script = `const { writeAllSync } = await import(${JSON.stringify(dist)}); for (let i = 0; i < 4; i++) writeAllSync(2, 'x'.repeat(1 << 20)); process.stdout.write('done');`;
    const run = (onStderr: (child: ReturnType<typeof spawn>) => void) =>
      new Promise<{ code: number | null; stdout: string; stderrBytes: number }>((done) => {
        const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'pipe'] });
        let stdout = '';
        let stderrBytes = 0;
        child.stdout!.on('data', (d: Buffer) => (stdout += d.toString()));
        child.stderr!.on('data', (d: Buffer) => (stderrBytes += d.length));
        onStderr(child);
        child.on('close', (code) => done({ code, stdout, stderrBytes }));
      });
    expect(await run(() => {})).toEqual({ code: 0, stdout: 'done', stderrBytes: 4 << 20 });
    const closed = await run((child) => child.stderr!.destroy());
    expect(closed).toMatchObject({ code: 0, stdout: 'done' });
  });
});
