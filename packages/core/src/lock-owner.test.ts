/** The lock's pure parts: parsing an owner, a process's start time, whether an owner still runs. */
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { describe, expect, it } from 'vitest';
import { ownerAlive, parseLockOwner, processStartTime } from './lock.js';

const owner = { pid: 1234, host: 'db1', startedAt: '2026-12-01T00:00:00.000Z' };

describe('parseLockOwner', () => {
  it.each([
    ['not JSON', '{"pid": 1'],
    ['empty', ''],
    ['null', 'null'],
    ['a number', '42'],
    ['an array', '[1234]'],
    ['no pid', JSON.stringify({ ...owner, pid: undefined })],
    ['pid 0', JSON.stringify({ ...owner, pid: 0 })],
    ['a negative pid', JSON.stringify({ ...owner, pid: -5 })],
    ['a fractional pid', JSON.stringify({ ...owner, pid: 1.5 })],
    ['a pid as a string', JSON.stringify({ ...owner, pid: '1234' })],
    ['no host', JSON.stringify({ ...owner, host: undefined })],
    ['a host that is not a string', JSON.stringify({ ...owner, host: 7 })],
    ['no startedAt', JSON.stringify({ ...owner, startedAt: undefined })],
    ['a startedAt that is not a string', JSON.stringify({ ...owner, startedAt: 1 })],
    ['a procStart that is not a number', JSON.stringify({ ...owner, procStart: '99' })],
    ['a runDir that is not a string', JSON.stringify({ ...owner, runDir: 3 })],
  ])('refuses %s', (_label, text) => {
    expect(parseLockOwner(text)).toBeUndefined();
  });

  it('reads an owner with exactly its fields (extra ones dropped)', () => {
    expect(parseLockOwner(JSON.stringify(owner))).toEqual({ ...owner, procStart: undefined, runDir: undefined });
    expect(parseLockOwner(JSON.stringify({ ...owner, procStart: 99, runDir: '/w/.runs/1', extra: true }))).toStrictEqual({ ...owner, procStart: 99, runDir: '/w/.runs/1' });
    expect(parseLockOwner(JSON.stringify({ ...owner, pid: 1 }))?.pid).toBe(1);
  });
});

describe('processStartTime and ownerAlive', () => {
  it('knows this process, and a later child started no earlier; nothing for a pid that does not exist', async () => {
    const mine = processStartTime(process.pid);
    expect(mine).toBeGreaterThan(0);
    expect(Number.isInteger(mine)).toBe(true);
    const child = spawn('sleep', ['5']);
    try {
      await once(child, 'spawn');
      expect(processStartTime(child.pid!)).toBeGreaterThanOrEqual(mine!);
    } finally {
      child.kill();
    }
    expect(processStartTime(2 ** 30)).toBeUndefined();
  });

  it('an owner is alive while its pid runs with the recorded start time', async () => {
    const procStart = processStartTime(process.pid);
    expect(ownerAlive({ pid: process.pid, procStart })).toBe(true);
    expect(ownerAlive({ pid: process.pid, procStart: undefined })).toBe(true);
    // The same pid with another start time is a reused pid: not the owner.
    expect(ownerAlive({ pid: process.pid, procStart: procStart! + 1 })).toBe(false);
    expect(ownerAlive({ pid: 2 ** 30, procStart: undefined })).toBe(false);
    const child = spawn('true');
    await once(child, 'exit');
    await new Promise((r) => setImmediate(r));
    expect(ownerAlive({ pid: child.pid!, procStart: undefined })).toBe(false);
  });
});
