/**
 * `kill -9` of `pipeline run`, through the real CLI: once while pg_dump → zstd run (held by a table
 * lock), once while rsync → ssh upload (slowed by a bandwidth limit). SIGKILL runs no cleanup, so
 * right after it the dead run's password file, its lock and its children are all still there —
 * the test checks that, so it knows the fault landed (and once for `pipeline restore`, while it
 * downloads the media archive). The next run must then end the dead run's
 * children, remove its scratch folder with the password file, take over the stale lock saying
 * whose it was, and succeed; no set of the dead run may be listed complete, and the earlier good
 * set stays.
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startSshd, type SshServer } from '@backup-pipeline/testing';
import {
  assertCleanedUp,
  HOSTILE_PASSWORD,
  holdTableLock,
  join,
  listSets,
  mastodonHost,
  project,
  recordedPids,
  running,
  sandbox,
  scanForSecrets,
  waitFor,
  waitForTool,
  writeRandomFile,
  type MastodonHost,
  type Project,
  type Sandbox,
} from './support.js';

let host: MastodonHost;
let sb: Sandbox;
let sshd: SshServer;
let p: Project;
let remote: string;

beforeAll(async () => {
  [host, sb, sshd] = await Promise.all([mastodonHost(), sandbox('crash'), startSshd()]);
  const media = join(sb.root, 'media');
  await mkdir(media);
  await writeRandomFile(join(media, 'big.bin'), 4 * 1024 * 1024);
  remote = join(sshd.dir, 'remote-backups');
  p = await project(sb, 'crash', {
    destinations: {
      offsite: { use: 'rsync', target: `${sshd.user}@127.0.0.1:${remote}`, port: sshd.port, identityFile: sshd.identityFile, knownHostsFile: sshd.knownHostsFile, bwLimit: '512K' },
    },
    pipelines: {
      nightly: {
        source: 'mastodon',
        stages: [
          { use: 'credentials', envFile: host.envFile },
          { use: 'pg-dump' },
          { use: 'files', mediaDir: media, compression: 'none' },
          { use: 'retention', keepLast: 10, incompleteGraceHours: 0 },
        ],
        destinations: ['offsite'],
      },
    },
  });
  sb.setRoots.add(remote);
  const first = await p.run();
  expect(first.exitCode, first.stderr).toBe(0);
}, 300_000);

afterAll(async () => {
  if (sb) await scanForSecrets(sb, [HOSTILE_PASSWORD]).catch((e: unknown) => console.error(e));
  await Promise.all([host?.pg.stop(), sshd?.cleanup()]);
  await sb?.cleanup();
});

/** The dead run's scratch folder and the password file in it. */
async function scratchOf(pid: number): Promise<{ dir: string; pgpass: string[] }> {
  const runs = join(p.workDir, '.runs');
  const name = (await readdir(runs).catch(() => [] as string[])).find((n) => n.startsWith(`${pid}-`));
  if (!name) return { dir: '', pgpass: [] };
  const dir = join(runs, name);
  return { dir, pgpass: (await readdir(dir)).filter((f) => f.startsWith('pgpass-')) };
}

/** What a run logged (JSON lines on stderr), by message. */
function messages(stderr: string): string[] {
  return stderr
    .split('\n')
    .filter((l) => l.startsWith('{'))
    .map((l) => (JSON.parse(l) as { msg?: string }).msg ?? '');
}

/**
 * SIGKILLs the run once `reached` says so; returns its pid and the live child pids (recorded by
 * the shims) of the given tools at that moment.
 */
async function killNine(reached: (seen: Set<number>) => Promise<unknown>, tools: string[]): Promise<{ pid: number; children: number[] }> {
  const seen = await recordedPids(sb);
  const child = p.run();
  await reached(seen);
  const children: number[] = [];
  for (const pid of await recordedPids(sb)) {
    if (seen.has(pid) || !(await running(pid))) continue;
    const argv = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
    if (tools.some((t) => argv.split('\0')[0]!.endsWith(t))) children.push(pid);
  }
  child.kill('SIGKILL');
  const out = await child;
  expect(out.signal).toBe('SIGKILL');
  return { pid: child.pid!, children };
}

/** The aftermath every crash must have, checked after the next run; returns that run's log. */
async function recoveredBy(dead: { pid: number; children: number[] }, before: Awaited<ReturnType<typeof listSets>>, duringNext?: () => Promise<void>, known: { rsyncStaging?: boolean; completeInWork?: boolean } = {}) {
  // Right after SIGKILL nothing was cleaned: the fault landed where the test wanted it.
  const left = await scratchOf(dead.pid);
  expect(left.pgpass, 'the dead run had a password file in its scratch folder').toHaveLength(1);
  expect(await readdir(join(p.workDir, '.locks'))).toEqual(['nightly.lock']);
  expect(JSON.parse(await readFile(join(p.workDir, '.locks', 'nightly.lock'), 'utf8'))).toMatchObject({ pid: dead.pid, runDir: left.dir });
  expect(dead.children.length, 'the dead run had children still running').toBeGreaterThan(0);
  for (const pid of dead.children) expect(await running(pid), `child ${pid} outlived its run`).toBe(true);

  const next = p.run();
  await duringNext?.();
  const out = await next;
  expect(out.exitCode, out.stderr).toBe(0);
  for (const pid of dead.children) expect(await running(pid), `child ${pid} of the dead run is still running`).toBe(false);
  const logged = messages(out.stderr);
  expect(logged.find((m) => m.startsWith('took over the lock')), logged.join('\n')).toContain(`left by pid ${dead.pid}`);
  const recovered = logged.find((m) => m.startsWith('recovered after a crashed run'));
  expect(recovered).toContain(`pid ${dead.pid}`);
  expect(recovered).toContain('password file');
  expect(recovered).toMatch(/ended \d+ of its processes/);
  expect(await scratchOf(dead.pid)).toEqual({ dir: '', pgpass: [] });
  if (known.rsyncStaging) {
    // The rsync destination stages uploads in $TMPDIR (a folder of symlinks, no data, no secret),
    // outside the run's scratch folder: a SIGKILLed upload leaves that behind (a known gap).
    for (const name of await readdir(sb.tmp)) {
      expect(name).toMatch(/^rsync-stage-/);
      await rm(join(sb.tmp, name), { recursive: true, force: true });
    }
  }
  await assertCleanedUp(sb, p);
  expect(await readdir(join(p.workDir, '.runs')).catch(() => []), 'a run folder was left').toEqual([]);
  // Nothing of the dead run counts as a backup; the good sets are all still there.
  const after = await listSets(sb, p);
  for (const [dest, sets] of Object.entries(before)) {
    for (const id of sets.complete) expect(after[dest]!.complete, `good set ${id} on ${dest} was deleted`).toContain(id);
    // A run killed while shipping had completed its set in the work dir first (the manifest is
    // written there before any upload): complete there, and nowhere else.
    const extra = dest === 'work' && known.completeInWork ? 2 : 1;
    expect(after[dest]!.complete.length, `on ${dest}: only the next run's set was added`).toBe(sets.complete.length + extra);
  }
  return logged;
}

describe('kill -9 of pipeline run', () => {
  it('during the dump: the next run ends the orphaned pg_dump and zstd, removes the password file, takes over the lock', async () => {
    const before = await listSets(sb, p);
    const lock = await holdTableLock(host);
    try {
      const dead = await killNine((seen) => waitForTool(sb, 'pg_dump', (argv) => !argv.includes('--version'), seen), ['pg_dump', 'zstd']);
      // The orphans would wait for the table lock (and hold their snapshot) for good.
      expect(dead.children.length).toBe(2);
      await recoveredBy(dead, before, async () => {
        await waitFor('the dead run\'s pg_dump to be ended', async () => !(await Promise.all(dead.children.map(running))).some(Boolean));
        await lock.release();
      });
    } finally {
      await lock.release();
    }
  });

  it('during the upload: the next run ends the orphaned rsync and ssh still uploading', async () => {
    const before = await listSets(sb, p);
    // The upload of the 4 MiB media archive (at 512 KiB/s): rsync's staged folder holds media.tar.
    const uploadingMedia = (argv: string[]) => {
      const staged = argv[argv.indexOf('--') + 1];
      return argv.includes('--mkpath') && !argv.includes('--dry-run') && !!staged && existsSync(join(staged, 'media.tar'));
    };
    const dead = await killNine((seen) => waitForTool(sb, 'rsync', uploadingMedia, seen), ['rsync', 'ssh']);
    expect(dead.children.length).toBeGreaterThanOrEqual(2);
    await recoveredBy(dead, before, undefined, { rsyncStaging: true, completeInWork: true });
  });
});

describe('kill -9 of pipeline restore', () => {
  it('while reading the media archive (one pass: ssh cat from the rsync destination): the next run ends the orphaned ssh and removes the password file', async () => {
    const before = await listSets(sb, p);
    const filesTo = join(sb.root, 'restored-files');
    const seen = await recordedPids(sb);
    const child = p.cli(['restore', 'latest', '--from', 'offsite', '--to', 'crashed_restore', '--files-to', filesTo]);
    const download = await waitForTool(sb, 'ssh', (argv) => argv.some((a) => a.startsWith('cat -- ') && /\/media\.tar'?$/.test(a)), seen);
    const children = [download.pid];
    for (const pid of await recordedPids(sb)) {
      if (seen.has(pid) || pid === download.pid || !(await running(pid))) continue;
      if ((await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0')[0]!.endsWith('ssh')) children.push(pid);
    }
    child.kill('SIGKILL');
    expect((await child).signal).toBe('SIGKILL');
    const left = await scratchOf(child.pid!);
    expect(left.pgpass, 'the dead restore had a password file').toHaveLength(1);
    expect(children.length).toBeGreaterThanOrEqual(1);
    for (const pid of children) expect(await running(pid), `child ${pid} outlived the restore`).toBe(true);

    const next = await p.run();
    expect(next.exitCode, next.stderr).toBe(0);
    for (const pid of children) expect(await running(pid), `child ${pid} of the dead restore is still running`).toBe(false);
    const recovered = messages(next.stderr).find((m) => m.startsWith('recovered after a crashed run'));
    expect(recovered).toContain(`pid ${child.pid}`);
    expect(await scratchOf(child.pid!)).toEqual({ dir: '', pgpass: [] });
    expect(await readdir(join(p.workDir, '.runs')).catch(() => [])).toEqual([]);
    await assertCleanedUp(sb, p);
    const after = await listSets(sb, p);
    for (const id of before.offsite!.complete) expect(after.offsite!.complete).toContain(id);
  });
});

describe('after the crashes', () => {
  it('every set listed complete on the destination verifies by content', async () => {
    const sets = await listSets(sb, p);
    expect(sets.offsite!.complete.length).toBe(4);
    for (const id of sets.offsite!.complete) {
      const out = await p.cli(['verify', id, '--from', 'offsite']);
      expect(out.exitCode, `set ${id} is listed complete but does not verify: ${out.stderr}`).toBe(0);
    }
    expect(await readdir(join(p.workDir, '.runs')).catch(() => [])).toEqual([]);
  });
});
