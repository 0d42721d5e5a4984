/**
 * Shared harness of the fault-injection suite. Every fault goes through the real CLI binary
 * against real services, and every test checks the same aftermath:
 *
 * - the child's private TMPDIR is empty afterwards (no `backup-pipeline-*` run folder, no pgpass);
 * - `<workDir>/.locks/` is empty (the lock was released);
 * - `pipeline list --json` shows no new set on any destination (no partial set, none complete that
 *   should not be) and every good set is still there.
 *
 * Children run with a PATH (and PG_BINDIR) of shims that record the argv and environment of every
 * pg_dump, pg_restore, psql, gpg, rsync, ssh, zstd and sha256sum, then `exec` the real binary. The
 * records serve the secret scan (`scanForSecrets`), and tell a test which phase a run is in (the
 * shim's pid is the real program's pid, since it execs).
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { chmod, lstat, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa, type ResultPromise } from 'execa';
import { expect } from 'vitest';
import { findServerBinDir } from '@backup-pipeline/testing';
import { BIN } from '../e2e/support.js';

export { HOSTILE_PASSWORD, mastodonHost, type MastodonHost } from '../e2e/support.js';

const PG_TOOLS = ['pg_dump', 'pg_dumpall', 'pg_restore', 'psql'];
const PATH_TOOLS = ['gpg', 'rsync', 'ssh', 'zstd', 'lz4', 'sha256sum', 'tar'];

export interface Sandbox {
  /** Root folder of this test file's projects (removed by `cleanup`). */
  root: string;
  /** The children's TMPDIR: must be empty after every run. */
  tmp: string;
  /** Folder of the recording shims (first in PATH, and PG_BINDIR). */
  shims: string;
  /** One file per shimmed invocation: `<tool>.<pid>` holding argv (NUL-separated), `.env` its environment. */
  shimLog: string;
  /** Every byte the CLI printed, for the secret scan. */
  transcript: string[];
  /** Folders holding backup sets (work dirs, destinations) to scan for secrets and file modes. */
  setRoots: Set<string>;
  cleanup(): Promise<void>;
}

export async function sandbox(name: string): Promise<Sandbox> {
  const root = await mkdtemp(join(tmpdir(), `bp-faults-${name}-`));
  await chmod(root, 0o755);
  const tmp = join(root, 'child-tmp');
  const shims = join(root, 'shims');
  const shimLog = join(root, 'shim-log');
  await mkdir(tmp, { mode: 0o700 });
  await mkdir(shims);
  await mkdir(shimLog);
  const pgBin = await findServerBinDir();
  const real = (tool: string) => {
    if (PG_TOOLS.includes(tool)) return join(pgBin, tool);
    const found = spawnSync('sh', ['-c', `command -v ${tool}`], { encoding: 'utf8' });
    return found.status === 0 ? found.stdout.trim() : undefined;
  };
  for (const tool of [...PG_TOOLS, ...PATH_TOOLS]) {
    const target = real(tool);
    if (!target) continue;
    // `$$` is kept by exec: the record's name carries the real program's pid.
    const script = [
      '#!/bin/sh',
      `f="$BP_SHIM_LOG/${tool}.$$"`,
      `printf '%s\\0' "$@" > "$f.tmp"`,
      `env > "$f.env"`,
      `mv "$f.tmp" "$f"`,
      `exec '${target}' "$@"`,
      '',
    ].join('\n');
    await writeFile(join(shims, tool), script, { mode: 0o755 });
  }
  return {
    root,
    tmp,
    shims,
    shimLog,
    transcript: [],
    setRoots: new Set(),
    cleanup: () => rm(root, { recursive: true, force: true }),
  };
}

/** Environment of a CLI child: private TMPDIR, recording shims first in PATH. */
export function childEnv(sb: Sandbox, extra: Record<string, string> = {}): Record<string, string> {
  return {
    NO_COLOR: '1',
    CI: 'true',
    TMPDIR: sb.tmp,
    PATH: `${sb.shims}:${process.env.PATH ?? '/usr/bin:/bin'}`,
    PG_BINDIR: sb.shims,
    BP_SHIM_LOG: sb.shimLog,
    ...extra,
  };
}

/** Starts the real CLI (not awaited, so a test can signal it). Output lands in the transcript. */
export function cli(sb: Sandbox, cwd: string, args: string[], extra: Record<string, string> = {}): ResultPromise<{ reject: false; timeout: number }> {
  const child = execa(process.execPath, [BIN, ...args], { cwd, reject: false, env: childEnv(sb, extra), extendEnv: true, timeout: 90_000 });
  child.stdout?.on('data', (d: Buffer) => sb.transcript.push(d.toString()));
  child.stderr?.on('data', (d: Buffer) => sb.transcript.push(d.toString()));
  return child as never;
}

export interface Project {
  dir: string;
  workDir: string;
  run(args?: string[], extra?: Record<string, string>): ReturnType<typeof cli>;
  cli(args: string[], extra?: Record<string, string>): ReturnType<typeof cli>;
}

/** A folder with `pipeline.config.json` (workDir `./work`); `config` gets `workDir` filled in. */
export async function project(sb: Sandbox, name: string, config: Record<string, unknown>): Promise<Project> {
  const dir = join(sb.root, name);
  await mkdir(dir, { recursive: true });
  const workDir = join(dir, 'work');
  await writeFile(join(dir, 'pipeline.config.json'), JSON.stringify({ workDir: './work', ...config }, null, 2));
  sb.setRoots.add(workDir);
  return {
    dir,
    workDir,
    run: (args = [], extra = {}) => cli(sb, dir, ['run', '--log-format', 'json', ...args], extra),
    cli: (args, extra = {}) => cli(sb, dir, args, extra),
  };
}

export interface DestinationSets {
  complete: string[];
  incomplete: string[];
  /** Incomplete sets by state (see docs/set-states.md). */
  damaged?: string[];
  partial?: string[];
}

/** `pipeline list --json`, as `{ destination: { complete: [ids], incomplete: [ids] } }`. */
export async function listSets(sb: Sandbox, p: Project): Promise<Record<string, DestinationSets>> {
  const out = await p.cli(['list', '--json']);
  expect(out.exitCode, `pipeline list failed: ${out.stderr}`).toBe(0);
  const parsed = JSON.parse(out.stdout) as Array<{ destination: string; sets: Array<{ id: string; complete: boolean; state: string }> }>;
  const result: Record<string, DestinationSets> = {};
  for (const d of parsed) {
    result[d.destination] = { complete: d.sets.filter((s) => s.complete).map((s) => s.id), incomplete: d.sets.filter((s) => !s.complete).map((s) => s.id) };
  }
  return result;
}

/** `pipeline list --json` by state: `{ destination: { complete, damaged, partial } }`. */
export async function setStates(p: Project): Promise<Record<string, { complete: string[]; damaged: string[]; partial: string[] }>> {
  const out = await p.cli(['list', '--json']);
  expect(out.exitCode, `pipeline list failed: ${out.stderr}`).toBe(0);
  const parsed = JSON.parse(out.stdout) as Array<{ destination: string; sets: Array<{ id: string; state: string }> }>;
  const by = (sets: Array<{ id: string; state: string }>, state: string) => sets.filter((s) => s.state === state).map((s) => s.id);
  return Object.fromEntries(parsed.map((d) => [d.destination, { complete: by(d.sets, 'complete'), damaged: by(d.sets, 'damaged'), partial: by(d.sets, 'partial') }]));
}

/** The lock folder is empty and the children's TMPDIR holds nothing (no run folder, no pgpass). */
export async function assertCleanedUp(sb: Sandbox, p: Project): Promise<void> {
  const locks = await readdir(join(p.workDir, '.locks')).catch(() => [] as string[]);
  expect(locks, 'the lock was not released').toEqual([]);
  const left = await readdir(sb.tmp);
  expect(left, 'temporary files were left in TMPDIR').toEqual([]);
}

/** A failed run: its exit code, and one `error` line naming `code` and every `names`. */
export function assertFailed(out: { exitCode?: number; stderr: string; stdout: string }, code: string, names: Array<string | RegExp> = [], exit = 1): string {
  expect(out.exitCode, out.stderr).toBe(exit);
  const lines = out.stderr.split('\n').filter((l) => l.startsWith('error '));
  expect(lines, `expected exactly one error line in:\n${out.stderr}`).toHaveLength(1);
  const line = lines[0]!;
  expect(line).toContain(`${code}:`);
  for (const n of names) {
    if (typeof n === 'string') expect(line).toContain(n);
    else expect(line).toMatch(n);
  }
  return line;
}

/** Polls `condition` every 20 ms until it returns a truthy value; fails after `timeoutMs`. */
export async function waitFor<T>(what: string, condition: () => Promise<T | undefined | false> | T | undefined | false, timeoutMs = 30_000): Promise<T> {
  const until = Date.now() + timeoutMs;
  for (;;) {
    const value = await condition();
    if (value) return value;
    if (Date.now() > until) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

export interface ShimRecord {
  tool: string;
  pid: number;
  argv: string[];
  env: string;
}

/** Every recorded invocation so far. */
export async function shimRecords(sb: Sandbox): Promise<ShimRecord[]> {
  const out: ShimRecord[] = [];
  for (const name of await readdir(sb.shimLog)) {
    const m = /^(.+)\.(\d+)$/.exec(name);
    if (!m) continue;
    const argv = (await readFile(join(sb.shimLog, name), 'utf8').catch(() => '')).split('\0').slice(0, -1);
    const env = await readFile(join(sb.shimLog, `${name}.env`), 'utf8').catch(() => '');
    out.push({ tool: m[1]!, pid: Number(m[2]), argv, env });
  }
  return out;
}

/** Whether a pid is alive (and not a zombie). */
export async function running(pid: number): Promise<boolean> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
  return status !== '' && !/^State:\s+Z/m.test(status);
}

/** Waits for a live process of `tool` started after `since` (shim records) whose argv matches. */
export async function waitForTool(sb: Sandbox, tool: string, match: (argv: string[]) => boolean, seen: Set<number>, timeoutMs = 60_000): Promise<ShimRecord> {
  return waitFor(`a running ${tool}`, async () => {
    for (const r of await shimRecords(sb)) {
      if (r.tool === tool && !seen.has(r.pid) && match(r.argv) && (await running(r.pid))) return r;
    }
    return undefined;
  }, timeoutMs);
}

export async function recordedPids(sb: Sandbox): Promise<Set<number>> {
  return new Set((await shimRecords(sb)).map((r) => r.pid));
}

async function walk(dir: string, out: string[] = []): Promise<string[]> {
  for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) await walk(path, out);
    else out.push(path);
  }
  return out;
}

export async function sha256(path: string): Promise<string> {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
}

/**
 * The secret scan: no secret in anything the CLI printed, in any child's argv or environment, in
 * any manifest or other text file of a set; and every file written into a set is 0600.
 */
export async function scanForSecrets(sb: Sandbox, secrets: string[]): Promise<{ files: number; invocations: number }> {
  const values = secrets.filter((s) => s.length > 0);
  const leak = (text: string) => values.find((s) => text.includes(s));
  const transcript = sb.transcript.join('');
  expect(leak(transcript), 'a secret was printed by the CLI').toBeUndefined();
  const records = await shimRecords(sb);
  for (const r of records) {
    expect(leak(r.argv.join(' ')), `a secret in the argv of ${r.tool}: ${r.argv.join(' ')}`).toBeUndefined();
    expect(leak(r.env), `a secret in the environment of ${r.tool}`).toBeUndefined();
  }
  let files = 0;
  for (const root of sb.setRoots) {
    for (const path of await walk(root)) {
      const rel = path.slice(root.length + 1);
      if (rel.startsWith('.locks/')) continue;
      files++;
      const info = await lstat(path);
      expect((info.mode & 0o777).toString(8), `${path} is not private`).toBe('600');
      if (path.endsWith('.json') || path.endsWith('.sql') || path.endsWith('.txt')) {
        expect(leak(await readFile(path, 'utf8')), `a secret in ${path}`).toBeUndefined();
      }
    }
  }
  return { files, invocations: records.length };
}

/** Whether `path` exists. */
export async function exists(path: string): Promise<boolean> {
  return (await stat(path).catch(() => undefined)) !== undefined;
}

export { join };

/**
 * Another session holds `LOCK TABLE table IN ACCESS EXCLUSIVE MODE` in an open transaction (as a
 * running migration would); resolves once the lock is granted. `release()` rolls back.
 */
export async function holdTableLock(host: import('../e2e/support.js').MastodonHost, table = 'accounts'): Promise<{ release(): Promise<void> }> {
  const { PassThrough } = await import('node:stream');
  const { exec } = await import('@backup-pipeline/core');
  const stdin = new PassThrough();
  const locker = exec(join(host.pg.bindir, 'psql'), ['-X', '-q', '-h', host.pg.socketDir, '-p', String(host.pg.port), '-U', host.pg.superuser, '-d', host.database], {
    stdin,
    env: { PGPASSFILE: '/nonexistent' },
  });
  const settled = locker.then(
    () => undefined,
    () => undefined,
  );
  stdin.write(`BEGIN; LOCK TABLE ${table} IN ACCESS EXCLUSIVE MODE; SELECT 1;\n`);
  await waitFor(`the lock on ${table}`, async () => {
    const rows = await host.pg.psql(`SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = '${table}' AND l.mode = 'AccessExclusiveLock' AND l.granted`, host.database);
    return rows.length > 0;
  }, 15_000);
  return {
    release: async () => {
      if (!stdin.writableEnded) stdin.end('ROLLBACK;\n');
      await settled;
    },
  };
}

/** Starts a run held inside pg_dump by a table lock, calls `during` once pg_dump runs, then lets it go on. */
export async function runHeldInDump(sb: Sandbox, host: import('../e2e/support.js').MastodonHost, p: Project, during: () => Promise<void>, args: string[] = []) {
  const lock = await holdTableLock(host);
  try {
    const seen = await recordedPids(sb);
    const child = p.run(args);
    await waitForTool(sb, 'pg_dump', (argv) => !argv.includes('--version'), seen);
    await during();
    await lock.release();
    return await child;
  } finally {
    await lock.release();
  }
}

/** Writes `bytes` of incompressible data to `path` (1 MiB at a time). */
export async function writeRandomFile(path: string, bytes: number): Promise<void> {
  const { randomBytes } = await import('node:crypto');
  const { open } = await import('node:fs/promises');
  const handle = await open(path, 'w', 0o600);
  try {
    for (let left = bytes; left > 0; left -= 1024 * 1024) await handle.write(randomBytes(Math.min(left, 1024 * 1024)));
  } finally {
    await handle.close();
  }
}

/**
 * "Complete" is judged by the product's own `list`: check it by content too. Every set listed
 * complete on any destination (and the work dir) passes `pipeline verify <id> --from <dest>`
 * (every sha256, a full read of every dump). Returns how many sets were verified.
 */
export async function verifyCompleteSets(p: Project, extra: Record<string, string> = {}): Promise<number> {
  const out = await p.cli(['list', '--json'], extra);
  expect(out.exitCode, `pipeline list failed: ${out.stderr}`).toBe(0);
  const parsed = JSON.parse(out.stdout) as Array<{ destination: string; sets: Array<{ id: string; complete: boolean; needs?: string[] }> }>;
  let verified = 0;
  for (const d of parsed) {
    // A set made by another project's pipeline (a shared bucket) may need plugins this one does not load.
    for (const set of d.sets.filter((s) => s.complete && !s.needs)) {
      const result = await p.cli(['verify', set.id, '--from', d.destination], extra);
      expect(result.exitCode, `verify ${set.id} --from ${d.destination} (listed complete) failed:\n${result.stderr}`).toBe(0);
      verified++;
    }
  }
  return verified;
}

/** Under CI=true a missing prerequisite fails the test; elsewhere the test is skipped with a warning. */
export function requireOrSkip(ctx: { skip(note?: string): void }, ok: boolean, what: string): void {
  if (ok) return;
  if (process.env.CI === 'true') throw new Error(`${what} (required under CI=true: the CI runs as root)`);
  console.warn(`skipped: ${what}`);
  ctx.skip();
}
