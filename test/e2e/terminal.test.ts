/**
 * The CLI as a person at a terminal sees it: every command runs under a real pseudo-terminal
 * (util-linux `script`), and what it printed is replayed through a small terminal model (\r, erase
 * to end of line, newlines) to check that no status line survives on screen or has a log line
 * glued onto it. Without a terminal: stderr of a run is JSON lines only, progress included, and
 * `--log-format pretty` works too.
 */
import { mkdtemp } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { BIN, HOSTILE_PASSWORD, mastodonHost, pipeline, writeMastodonConfig, type MastodonHost } from './support.js';

const quote = (word: string) => `'${word.replace(/'/g, `'\\''`)}'`;

/** The environment of a person's shell: no CI marker (which turns the status line off), colours on. */
function terminalEnv(): Record<string, string> {
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) if (value !== undefined && key !== 'CI' && key !== 'NO_COLOR') env[key] = value;
  return { ...env, TERM: 'xterm-256color' };
}

/** Runs `pipeline ARGS` under a pseudo-terminal: stdin, stdout and stderr are all the terminal. */
async function inTerminal(args: string[], cwd: string): Promise<{ exitCode: number; raw: string; screen: string[] }> {
  const command = [process.execPath, BIN, ...args].map(quote).join(' ');
  const result = await execa('script', ['-qec', command, '/dev/null'], { cwd, reject: false, extendEnv: false, env: terminalEnv(), timeout: 300_000, stdin: 'ignore' });
  return { exitCode: result.exitCode ?? -1, raw: result.stdout, screen: render(result.stdout) };
}

/** What a terminal shows for this output: \r returns to column 0, ESC[K erases to the end of the line. */
function render(raw: string): string[] {
  const lines: string[] = [];
  let line: string[] = [];
  let col = 0;
  const tokens = raw.replace(/\r\n/g, '\n').match(/\u001b\[[0-9;?]*[A-Za-z]|\r|\n|[^\u001b\r\n]/gu) ?? [];
  for (const token of tokens) {
    if (token === '\n') {
      lines.push(line.join(''));
      line = [];
      col = 0;
    } else if (token === '\r') {
      col = 0;
    } else if (token === '\u001b[K') {
      line = line.slice(0, col);
    } else if (token.startsWith('\u001b')) {
      // colours and other attributes: not text
    } else {
      line[col++] = token;
    }
  }
  if (line.length > 0) lines.push(line.join(''));
  return lines;
}

/** A status line's head: `[pg-dump → produce 2.0 s]` (plan lines have no time in the brackets). */
const STATUS_HEAD = /\[[\w.-]+ → \w+ [^\]]*\d (ms|s)\]/;

function expectReadable(out: { exitCode: number; raw: string; screen: string[] }) {
  const text = out.screen.join('\n');
  expect(out.exitCode, out.raw).toBe(0);
  expect(text).not.toContain('INTERNAL');
  expect(text).not.toContain('is not a function');
  expect(text).not.toContain(HOSTILE_PASSWORD);
  // Every status line was cleared before other text and at the end: none is left on screen.
  expect(out.screen.filter((l) => STATUS_HEAD.test(l)), out.raw).toEqual([]);
  // No JSON log record on a terminal: log lines are readable.
  expect(out.screen.filter((l) => l.startsWith('{"level"'))).toEqual([]);
}

let host: MastodonHost;
beforeAll(async () => {
  host = await mastodonHost({ scale: 'small' });
  await writeMastodonConfig(host.dir, {
    nightly: [
      { use: 'credentials', envFile: host.envFile },
      { use: 'pg-dump' },
      { use: 'verify', restoreTest: true },
      { use: 'retention', keepLast: 5 },
    ],
  });
});
afterAll(async () => {
  await host?.pg.stop();
});

describe('on a terminal (a real pseudo-terminal)', () => {
  it('validate, run --dry-run, run, list, verify, restore and schedule exit 0 with readable output and a status line that never sticks', async () => {
    const validate = await inTerminal(['validate'], host.dir);
    expectReadable(validate);
    expect(validate.screen.join('\n')).toContain('pipeline nightly: credentials → pg-dump → verify → retention ⇒ folder');

    const plan = await inTerminal(['run', '--dry-run'], host.dir);
    expectReadable(plan);
    expect(plan.screen.join('\n')).toMatch(/dry run of nightly: nothing was touched/);

    const run = await inTerminal(['run'], host.dir);
    expectReadable(run);
    const screen = run.screen.join('\n');
    expect(screen).toMatch(/^ok nightly: set \d{8}T\d{6}Z-mastodon in/m);
    expect(screen, run.raw).toMatch(/^\[\d\d:\d\d:\d\d\] INFO: \[[\w-]+\] /m);
    // The status line was drawn (and then cleared): the stage with its elapsed time.
    expect(run.raw).toMatch(/\r\u001b\[K\[pg-dump → produce \d/);

    const list = await inTerminal(['list'], host.dir);
    expectReadable(list);
    expect(list.screen.join('\n')).toMatch(/^ {2}\d{8}T\d{6}Z-mastodon .* complete$/m);

    const verify = await inTerminal(['verify', 'latest', '--from', 'folder'], host.dir);
    expectReadable(verify);
    expect(verify.screen.join('\n')).toMatch(/^ok \S+ in folder: every sha256 matches the manifest$/m);

    const restore = await inTerminal(['restore', 'latest', '--to', 'restored_on_a_tty'], host.dir);
    expectReadable(restore);
    expect(restore.screen.join('\n'), restore.raw).toMatch(/^restored \S+ .*into restored_on_a_tty in /m);

    const schedule = await inTerminal(['schedule', 'cron', 'nightly', '--user', 'mastodon'], host.dir);
    expectReadable(schedule);
    expect(schedule.screen.join('\n')).toContain(' run nightly --config ');
  });

  it('`pipeline demo`, the README\'s first command, runs end to end', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'bp-demo-tty-'));
    const demo = await inTerminal(['demo', '--scale', 'tiny', '--dir', join(dir, 'demo')], dir);
    expectReadable(demo);
    expect(demo.screen.join('\n')).toContain('the restored database is identical to the source, table by table.');
    // The backup showed its progress on the status line, and cleared it.
    expect(demo.raw).toMatch(/\r\u001b\[K\[pg-dump → produce \d/);
  });

  it('bare `pipeline` prints the help and exits 1', async () => {
    const bare = await inTerminal([], host.dir);
    expect(bare.exitCode).toBe(1);
    expect(bare.screen.join('\n')).toContain('Usage: pipeline [options] [command]');
  });
});

describe('without a terminal', () => {
  it('every stderr line of a run is a JSON record, progress included', async () => {
    const run = await pipeline(['run'], host.dir);
    expect(run.exitCode, run.stderr).toBe(0);
    const lines = run.stderr.split('\n').filter(Boolean);
    const records = lines.map((line) => {
      try {
        return JSON.parse(line) as { level: number; msg: string; progress?: { task: string; bytes?: number } };
      } catch {
        throw new Error(`not a JSON line on stderr: ${line}`);
      }
    });
    expect(records.filter((r) => r.level > 30)).toEqual([]);
    expect(records.find((r) => r.progress?.task === 'dump')).toBeDefined();
    expect(records[0]).toMatchObject({ msg: `config ${join(host.dir, 'pipeline.config.json')} (found: cwd)` });
    expect(run.stderr).not.toContain('progress:');
  });

  it('--log-format pretty writes readable lines (it crashed with "stream.on is not a function")', async () => {
    const run = await pipeline(['run', '--log-format', 'pretty'], host.dir);
    expect(run.exitCode, run.stderr).toBe(0);
    const lines = run.stderr.split('\n').filter(Boolean);
    expect(lines.length).toBeGreaterThan(2);
    expect(lines.filter((l) => l.startsWith('{'))).toEqual([]);
    expect(run.stderr).toMatch(/^\[\d\d:\d\d:\d\d\] INFO: \[[\w-]+\] /m);
    // No terminal, so no status line and no colour codes.
    expect(run.stderr).not.toContain('\u001b[');
  });
});
