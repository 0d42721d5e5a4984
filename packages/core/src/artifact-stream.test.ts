/**
 * The one-pass stream itself, with real programs: what the file, its sha256 and the `plain` record
 * say is what was produced, and no byte of it passes through Node.js (this process's own read
 * and write counters, summed over its threads, stay far below the stream's size).
 */
import { createHash, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runArtifactStream, SPLICE_TEE, type StreamArtifactRequest, type StreamPlan } from './artifact-stream.js';
import { exec } from './exec.js';
import { hashFile } from './atomic-file.js';

const SIZE = 48 * 1024 * 1024;

/** A program's path on the test's PATH. */
async function which(tool: string): Promise<string> {
  for (const d of (process.env.PATH ?? '').split(':')) if (existsSync(join(d, tool))) return join(d, tool);
  throw new Error(`${tool} not found`);
}

/** This process's own reads and writes: every thread's counters (/proc/self/io would add its reaped children's). */
async function io(): Promise<{ rchar: number; wchar: number }> {
  const total = { rchar: 0, wchar: 0 };
  for (const task of await readdir('/proc/self/task')) {
    const text = await readFile(`/proc/self/task/${task}/io`, 'utf8').catch(() => '');
    for (const name of ['rchar', 'wchar'] as const) total[name] += Number(new RegExp(`^${name}: (\\d+)$`, 'm').exec(text)?.[1] ?? 0);
  }
  return total;
}

describe('the one-pass stream', () => {
  let dir: string;
  let source: string;
  let sourceSha: string;
  let ran: string[] = [];
  const recorded: typeof exec = (file, args = [], options) => (ran.push([file, ...args].join(' ')), exec(file, args, options));
  const ctx = () => ({ exec: recorded, signal: undefined, tmpDir: dir, progress: () => {}, log: { info() {}, warn() {}, debug() {}, error() {} } }) as never;
  const request = (name: string, compressor?: StreamArtifactRequest['compressor']): StreamArtifactRequest => ({
    artifact: { name, kind: 'database', format: 'test', compression: compressor ? 'gzip' : 'none', meta: {} },
    dir: join(dir, 'set'),
    start: (stdout) => exec('cat', ['--', source], { stdout, label: 'producer' }),
    compressor,
  });

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bp-artifact-stream-'));
    source = join(dir, 'source');
    const data = randomBytes(SIZE);
    await writeFile(source, data);
    sourceSha = createHash('sha256').update(data).digest('hex');
  });
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('compressor, verifier and filter: the file, its sha256 and `plain` are right, and no byte passed through Node.js', async () => {
    let seen = -1;
    const plan: StreamPlan = {
      consumers: [{ plugin: 'counter', consumer: { command: 'wc', args: ['-c'], label: 'wc', check: (r) => void (seen = Number(r.stdout.trim())) } }],
      filters: [{ plugin: 'rev', filter: { command: 'gzip', args: ['-1', '-c'], label: 'gzip', rename: (n) => `${n}.x` } }],
    };
    ran = [];
    const before = await io();
    const out = await runArtifactStream(request('db.dump.gz', { command: 'gzip', args: ['-1', '-c'] }), plan, ctx());
    const after = await io();
    expect(seen).toBe(SIZE); // the verifier read every byte the producer made
    expect(out.head).toEqual((await readFile(source)).subarray(0, 16));
    const { artifact } = out;
    expect(artifact.name).toBe('db.dump.gz.x');
    expect(await hashFile(artifact.path)).toEqual({ bytes: artifact.bytes, sha256: artifact.sha256 });
    // `plain` is the file before the filter: gunzip once gives the compressor's output.
    const plain = join(dir, 'plain');
    await exec('gzip', ['-d', '-c', artifact.path], { stdout: { file: plain } });
    expect(await hashFile(plain)).toEqual({ bytes: artifact.plain!.bytes, sha256: artifact.plain!.sha256 });
    expect(artifact.plain!.name).toBe('db.dump.gz');
    await exec('gzip', ['-d', '-c', plain], { stdout: { file: join(dir, 'back') } });
    expect((await hashFile(join(dir, 'back'))).sha256).toBe(sourceSha);
    expect((await stat(artifact.path)).mode & 0o777).toBe(0o600);
    expect(await readdir(join(dir, 'set'))).toEqual(['db.dump.gz.x']);
    // Three copies of 48 MiB would pass through a Node.js that hashes on the way (well over 100 MiB).
    expect(after.rchar - before.rchar).toBeLessThan(4 * 1024 * 1024);
    expect(after.wchar - before.wchar).toBeLessThan(4 * 1024 * 1024);
    // The three tees are the core's splicing one (this kernel and architecture can run it).
    expect(ran.filter((c) => c.startsWith(`perl ${SPLICE_TEE} -- `))).toHaveLength(3);
    expect(ran.filter((c) => c.startsWith('tee '))).toEqual([]);
    await rm(artifact.path);
  });

  it('without a compressor or filter: the producer\'s bytes are the file, and its size is reported', async () => {
    const out = await runArtifactStream(request('plain.sql'), { consumers: [], filters: [] }, ctx());
    expect(out.artifact.sha256).toBe(sourceSha);
    expect(out.artifact.bytes).toBe(SIZE);
    expect(out.plainBytes).toBe(SIZE);
    expect(out.artifact.plain).toBeUndefined();
    await rm(out.artifact.path);
  });

  it('without openssl or perl on PATH, sha256sum hashes and coreutils\' tee copies: the same digests', async () => {
    const bin = join(dir, 'bin-without-openssl');
    await mkdir(bin);
    for (const tool of ['cat', 'tee', 'head', 'wc', 'mkfifo', 'gzip', 'sha256sum', 'sh']) await symlink(await which(tool), join(bin, tool));
    const saved = process.env.PATH;
    process.env.PATH = bin;
    try {
      const plan: StreamPlan = { consumers: [], filters: [{ plugin: 'f', filter: { command: 'gzip', args: ['-1', '-c'], label: 'gzip', rename: (n) => `${n}.x` } }] };
      ran = [];
      const { artifact } = await runArtifactStream(request('db.dump.gz', { command: 'gzip', args: ['-1', '-c'] }), plan, ctx());
      expect(ran.filter((c) => c.startsWith('tee -p -- '))).toHaveLength(3);
      expect(await hashFile(artifact.path)).toEqual({ bytes: artifact.bytes, sha256: artifact.sha256 });
      expect(artifact.plain!.bytes).toBeGreaterThan(0);
      await rm(artifact.path);
    } finally {
      process.env.PATH = saved;
    }
  });

  it('a filter that fails: its own error, named for its plugin, and nothing left under the name or as .partial', async () => {
    const plan: StreamPlan = {
      consumers: [],
      filters: [{ plugin: 'broken', filter: { command: 'sh', args: ['-c', 'head -c 100000 >/dev/null; echo "key gone" >&2; exit 3'], label: 'broken', rename: (n) => `${n}.x` } }],
    };
    const error = await runArtifactStream(request('db.dump.gz', { command: 'gzip', args: ['-1', '-c'] }), plan, ctx()).catch((e: unknown) => e);
    expect(error).toMatchObject({ plugin: 'broken', hook: 'transformFilter', message: expect.stringMatching(/broken exited with code 3: key gone/) });
    expect(await readdir(join(dir, 'set'))).toEqual([]);
    expect(existsSync(join(dir, 'set', 'db.dump.gz.x.partial'))).toBe(false);
  });
});
