/** acquireLock in one process: holding, releasing, stale and foreign locks, the takeover file. */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { acquireLock, parseLockOwner, processStartTime } from './lock.js';
import { tempDir } from './test-fixtures.js';

async function deadPid(): Promise<number> {
  const child = spawn('true');
  await once(child, 'exit');
  await new Promise((r) => setImmediate(r));
  return child.pid!;
}

async function lockDir() {
  const dir = join(await tempDir('bp-lock-'), 'locks');
  await mkdir(dir, { mode: 0o700 });
  return { dir, path: join(dir, 'nightly.lock') };
}

const ownerText = (o: Record<string, unknown>) => JSON.stringify({ startedAt: '2026-01-01T00:00:00.000Z', ...o }) + '\n';

describe('acquireLock', () => {
  it('holds the lock with its owner written, refuses a second taker naming it, and releases it', async () => {
    const { dir, path } = await lockDir();
    const lock = await acquireLock(path, { runDir: '/work/.runs/x' });
    expect(lock.takenOver).toBeUndefined();
    const owner = parseLockOwner(await readFile(path, 'utf8'))!;
    expect(owner).toMatchObject({ pid: process.pid, host: hostname(), procStart: processStartTime(process.pid), runDir: '/work/.runs/x' });
    const error = await acquireLock(path).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'LOCKED', details: { lock: path, owner } });
    expect((error as Error).message).toBe(`another run holds the lock ${path}: pid ${process.pid} on ${hostname()}, started ${owner.startedAt}`);
    expect(await readdir(dir)).toEqual(['nightly.lock']);
    await lock.release();
    expect(await readdir(dir)).toEqual([]);
  });

  it('release leaves a lock that another owner holds now', async () => {
    const { path } = await lockDir();
    const lock = await acquireLock(path);
    const other = ownerText({ pid: 1, host: 'elsewhere' });
    await writeFile(path, other);
    await lock.release();
    expect(await readFile(path, 'utf8')).toBe(other);
  });

  it('takes over a lock left by a dead process on this host, and says whose', async () => {
    const { dir, path } = await lockDir();
    const dead = await deadPid();
    await writeFile(path, ownerText({ pid: dead, host: hostname() }));
    const lock = await acquireLock(path);
    expect(lock.takenOver).toMatchObject({ pid: dead, host: hostname() });
    expect(parseLockOwner(await readFile(path, 'utf8'))?.pid).toBe(process.pid);
    expect(await readdir(dir), 'no takeover or owner file left').toEqual(['nightly.lock']);
    await lock.release();
    expect(await readdir(dir)).toEqual([]);
  });

  it('never takes over a lock of another host, even with a pid that does not run here', async () => {
    const { path } = await lockDir();
    const dead = await deadPid();
    await writeFile(path, ownerText({ pid: dead, host: 'another-host' }));
    await expect(acquireLock(path)).rejects.toMatchObject({ code: 'LOCKED', message: expect.stringContaining(`pid ${dead} on another-host`) });
    expect(parseLockOwner(await readFile(path, 'utf8'))?.host).toBe('another-host');
  });

  it('clears a takeover file a dead run left, then takes over the stale lock', async () => {
    const { dir, path } = await lockDir();
    const [dead1, dead2] = [await deadPid(), await deadPid()];
    await writeFile(path, ownerText({ pid: dead1, host: hostname() }));
    await writeFile(`${path}.takeover`, ownerText({ pid: dead2, host: hostname() }));
    const lock = await acquireLock(path);
    expect(lock.takenOver?.pid).toBe(dead1);
    expect(await readdir(dir)).toEqual(['nightly.lock']);
    await lock.release();
  });

  it('refuses while a live run holds the takeover file, naming it', async () => {
    const { path } = await lockDir();
    const dead = await deadPid();
    await writeFile(path, ownerText({ pid: dead, host: hostname() }));
    const live = { pid: process.pid, host: hostname(), startedAt: '2026-01-02T00:00:00.000Z', procStart: processStartTime(process.pid) };
    await writeFile(`${path}.takeover`, JSON.stringify(live) + '\n');
    await expect(acquireLock(path)).rejects.toMatchObject({ code: 'LOCKED', details: { owner: live } });
    // Nothing was replaced.
    expect(parseLockOwner(await readFile(path, 'utf8'))?.pid).toBe(dead);
  });

  it('keeps and reports a lock file that names no owner (JSON without a pid)', async () => {
    const { path } = await lockDir();
    await writeFile(path, '{"host":"x"}\n');
    await expect(acquireLock(path)).rejects.toMatchObject({ code: 'LOCKED', details: { lock: path }, hint: expect.stringContaining(`remove ${path}`) });
    expect(await readFile(path, 'utf8')).toBe('{"host":"x"}\n');
  });
  it.each([
    ['another pid', { pid: 1 }],
    ['another host', { host: 'elsewhere' }],
    ['another start', { startedAt: '2026-01-01T00:00:00.000Z' }],
    ['another process start time', { procStart: 1 }],
  ])('release leaves a lock whose owner differs only by %s', async (_label, change) => {
    const { path } = await lockDir();
    const lock = await acquireLock(path);
    const mine = parseLockOwner(await readFile(path, 'utf8'))!;
    const text = JSON.stringify({ ...mine, ...change }) + '\n';
    await writeFile(path, text);
    await lock.release();
    expect(await readFile(path, 'utf8')).toBe(text);
  });

  it('leaves an owner file of a live process beside the lock, and its own never', async () => {
    const { dir, path } = await lockDir();
    const live = `.nightly.lock.1.${'a'.repeat(12)}.tmp`;
    const other = `.nightly.lock.${process.pid}.${'b'.repeat(12)}.tmp`;
    const unrelated = 'notes.txt';
    for (const n of [live, other, unrelated]) await writeFile(join(dir, n), 'x');
    const lock = await acquireLock(path);
    expect((await readdir(dir)).sort()).toEqual([live, other, 'nightly.lock', unrelated].sort());
    await lock.release();
  });
});
