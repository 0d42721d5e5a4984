/**
 * The lock under contention: separate processes take it at the same moment, many times over,
 * with and without a stale lock (a dead owner) in place. At no moment may two of them hold it.
 */
import { execFile, spawn } from 'node:child_process';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { acquireLock, processStartTime } from './lock.js';

const LOCK_MODULE = fileURLToPath(new URL('../dist/lock.js', import.meta.url));

// Each racer: for every round, wait for the round's go file, take the lock (or report LOCKED),
// and while holding it create `inside` exclusively: a second holder at the same time fails there.
const RACER = `
import { existsSync } from 'node:fs';
import { open, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
const { acquireLock } = await import(process.env.LOCK_MODULE);
const [dir, rounds] = [process.argv[2], Number(process.argv[3])];
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
for (let round = 0; round < rounds; round++) {
  while (!existsSync(join(dir, 'go-' + round))) await sleep(2);
  let result;
  try {
    const lock = await acquireLock(join(dir, 'locks', 'nightly.lock'));
    try {
      const inside = await open(join(dir, 'inside'), 'wx');
      await inside.close();
      await sleep(15);
      await rm(join(dir, 'inside'));
      result = lock.takenOver ? 'took-over:' + lock.takenOver.pid : 'got';
    } catch (error) {
      result = 'VIOLATION:' + error.code;
    }
    await lock.release();
  } catch (error) {
    result = error.code === 'LOCKED' ? 'locked by ' + (error.details?.owner?.pid ?? 'nobody') : 'ERROR:' + error.message;
  }
  // Written aside, then renamed: the test never reads a half-written answer.
  await writeFile(join(dir, 'answer-' + process.pid), process.pid + ':' + result);
  await rename(join(dir, 'answer-' + process.pid), join(dir, 'done-' + round + '-' + process.pid));
}
`;

let dir: string;
const RACERS = 4;
const ROUNDS = 40;

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bp-lock-race-'));
  await writeFile(join(dir, 'racer.mjs'), RACER);
  await mkdir(join(dir, 'locks'), { mode: 0o700 });
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** The pid of a process that has exited. */
async function deadPid(): Promise<number> {
  const child = spawn('true');
  await new Promise((r) => child.on('exit', r));
  return child.pid!;
}

describe('lock under contention', () => {
  it(`${RACERS} processes taking it together ${ROUNDS} times never hold it at once; a stale lock goes to one of them`, async () => {
    const racers = Array.from({ length: RACERS }, () =>
      promisify(execFile)(process.execPath, [join(dir, 'racer.mjs'), dir, String(ROUNDS)], { env: { ...process.env, LOCK_MODULE } }),
    );
    const results: string[][] = [];
    for (let round = 0; round < ROUNDS; round++) {
      // Every other round starts with a lock left by a dead process on this host.
      const stale = round % 2 === 1 ? await deadPid() : undefined;
      if (stale) await writeFile(join(dir, 'locks', 'nightly.lock'), JSON.stringify({ pid: stale, host: hostname(), startedAt: '2026-01-01T00:00:00.000Z' }) + '\n');
      await writeFile(join(dir, `go-${round}`), '');
      let done: string[] = [];
      for (let i = 0; i < 3000 && done.length < RACERS; i++) {
        done = (await readdir(dir)).filter((f) => f.startsWith(`done-${round}-`));
        if (done.length < RACERS) await new Promise((r) => setTimeout(r, 5));
      }
      expect(done, `round ${round}: every racer answered`).toHaveLength(RACERS);
      const outcome = await Promise.all(done.map((f) => readFile(join(dir, f), 'utf8')));
      results.push(outcome);
      expect(outcome.filter((o) => o.includes(':VIOLATION') || o.includes(':ERROR')), `round ${round}: ${outcome.join(', ')}`).toEqual([]);
      const holders = outcome.filter((o) => / (got|took-over)/.test(' ' + o.split(':').slice(1).join(':')));
      expect(holders.length, `round ${round}: someone took the lock (${outcome.join(", ")})`).toBeGreaterThanOrEqual(1);
      if (stale) {
        // The stale lock was replaced exactly once, naming its dead owner.
        expect(outcome.filter((o) => o.includes(':took-over')).map((o) => o.split(':').slice(1).join(':')), `round ${round}: ${outcome.join(', ')}`).toEqual([`took-over:${stale}`]);
      }
      expect(await readdir(join(dir, 'locks')), `round ${round}: nothing left in the lock folder`).toEqual([]);
    }
    await Promise.all(racers);
    // Contention really happened: most rounds had racers turned away.
    expect(results.filter((o) => o.some((r) => r.includes(':locked'))).length).toBeGreaterThan(ROUNDS / 2);
  }, 180_000);
});

describe('lock files that cannot be read back', () => {
  it('keeps a lock file that names no owner and reports it instead of deleting it', async () => {
    const d = await mkdtemp(join(dir, 'noowner-'));
    const path = join(d, 'nightly.lock');
    await writeFile(path, '');
    await expect(acquireLock(path)).rejects.toMatchObject({ code: 'LOCKED', message: expect.stringContaining('names no owner') });
    expect(await readFile(path, 'utf8')).toBe('');
    expect(await readdir(d)).toEqual(['nightly.lock']);
  });

  it('removes the owner file a run killed while taking the lock left beside it', async () => {
    const d = await mkdtemp(join(dir, 'leftover-'));
    const path = join(d, 'nightly.lock');
    const pid = await deadPid();
    await writeFile(join(d, `.nightly.lock.${pid}.0123456789ab.tmp`), JSON.stringify({ pid, host: hostname(), startedAt: 'then' }));
    const lock = await acquireLock(path);
    expect(await readdir(d)).toEqual(['nightly.lock']);
    await lock.release();
    expect(await readdir(d)).toEqual([]);
  });

  it('takes over a lock whose pid is alive but belongs to a process that started later (a reused pid)', async () => {
    const d = await mkdtemp(join(dir, 'reused-'));
    const path = join(d, 'nightly.lock');
    const start = processStartTime(process.pid);
    expect(start).toBeTypeOf('number');
    await writeFile(path, JSON.stringify({ pid: process.pid, host: hostname(), startedAt: 'then', procStart: start! - 1 }));
    const lock = await acquireLock(path);
    expect(lock.takenOver).toMatchObject({ pid: process.pid, procStart: start! - 1 });
    // The live owner (this process, same start time) is not stale.
    await expect(acquireLock(path)).rejects.toMatchObject({ code: 'LOCKED' });
    await lock.release();
    expect(await readdir(d)).toEqual([]);
  });
});
