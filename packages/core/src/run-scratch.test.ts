/**
 * Recovery of a dead run's scratch folder: its marked processes are ended and the folder (with
 * the password file) removed; folders of live runs, of other hosts, and anything not named like a
 * run folder are left alone.
 */
import { spawn } from 'node:child_process';
import { mkdir, readdir, stat, writeFile } from 'node:fs/promises';
import { hostname } from 'node:os';
import { basename, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { createRunScratch, markedProcesses, recoverDeadRuns, RUN_MARKER } from './run-scratch.js';
import { processStartTime } from './lock.js';
import { tempDir } from './test-fixtures.js';

async function deadPid(): Promise<number> {
  const child = spawn('true');
  await new Promise((r) => child.on('exit', r));
  return child.pid!;
}

const alive = async (pid: number) => ((await import('node:fs/promises')).readFile(`/proc/${pid}/status`, 'utf8').then((s) => !/^State:\s+Z/m.test(s), () => false));

describe('run scratch folders', () => {
  it('recovers a dead run: ends its marked processes, removes its folder and password file, logs the dead pid', async () => {
    const work = await tempDir();
    const runs = join(work, '.runs');
    const pid = await deadPid();
    const name = `${pid}-AbC123`;
    const dead = join(runs, name);
    await mkdir(dead, { recursive: true, mode: 0o700 });
    await writeFile(join(dead, 'owner.json'), JSON.stringify({ pid, host: hostname(), startedAt: '2026-12-01T03:00:00.000Z' }));
    await writeFile(join(dead, 'pgpass-mastodon'), '*:*:*:mastodon:secret\n', { mode: 0o600 });
    // An orphan of the dead run (as rsync or pg_dump would be), and an unrelated process.
    const orphan = spawn('sleep', ['300'], { env: { ...process.env, [RUN_MARKER]: name }, stdio: 'ignore' });
    const bystander = spawn('sleep', ['300'], { env: { ...process.env, [RUN_MARKER]: `${name}x` }, stdio: 'ignore' });
    // A live run (this process) and a run of another host sharing the work dir.
    const live = join(runs, `${process.pid}-LiVe01`);
    await mkdir(live);
    await writeFile(join(live, 'owner.json'), JSON.stringify({ pid: process.pid, host: hostname(), startedAt: 'now', procStart: processStartTime(process.pid) }));
    const remote = join(runs, `${pid}-OtHer1`);
    await mkdir(remote);
    await writeFile(join(remote, 'owner.json'), JSON.stringify({ pid, host: 'another-host', startedAt: 'then' }));
    await mkdir(join(runs, 'not-a-run'));
    try {
      await new Promise((r) => setTimeout(r, 100));
      expect(await markedProcesses(name)).toEqual([orphan.pid]);
      const warnings: string[] = [];
      const log = { warn: (_o: unknown, msg: string) => warnings.push(msg) } as never;
      const recovered = await recoverDeadRuns(runs, log);
      expect(recovered.map((r) => basename(r.dir))).toEqual([name]);
      expect(recovered[0]!.ended).toEqual([orphan.pid]);
      expect(await alive(orphan.pid!)).toBe(false);
      expect(await alive(bystander.pid!)).toBe(true);
      expect((await readdir(runs)).sort()).toEqual([basename(live), basename(remote), 'not-a-run'].sort());
      expect(warnings).toHaveLength(1);
      expect(warnings[0]).toContain(`pid ${pid}, started 2026-12-01T03:00:00.000Z`);
      expect(warnings[0]).toContain('ended 1 of its processes');
    } finally {
      orphan.kill('SIGKILL');
      bystander.kill('SIGKILL');
    }
  });

  it("creates this run's folder 0700 with its owner and marks children; removes it and an empty .runs at the end", async () => {
    const work = await tempDir();
    const scratch = await createRunScratch(work, { pipeline: 'nightly' });
    expect(scratch.dir.startsWith(join(work, '.runs', `${process.pid}-`))).toBe(true);
    expect((await stat(scratch.dir)).mode & 0o777).toBe(0o700);
    expect(process.env[RUN_MARKER]).toBe(basename(scratch.dir));
    await scratch.remove();
    expect(process.env[RUN_MARKER]).toBeUndefined();
    expect(await readdir(work)).toEqual([]);
  });

  it('a dry run touches nothing in the work dir', async () => {
    const work = await tempDir();
    const scratch = await createRunScratch(join(work, 'work'), { dryRun: true });
    expect(scratch.dir.startsWith(join(work, 'work'))).toBe(false);
    await scratch.remove();
    expect(await readdir(work)).toEqual([]);
  });
});
