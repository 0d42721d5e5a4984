/**
 * A member of a chain of processes dies (`kill -9` from outside, as the OOM killer would): the run
 * must end every other member and fail at once naming the one that died — zstd in
 * pg_dump → zstd → file (pg_dump held by a table lock, so it would otherwise wait for good), and
 * gpg in tar → gpg → file (spliced into the files stage's stream). Afterwards: no child left, no set added, the lock and scratch clean,
 * and the next run green.
 */
import { mkdir } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createGpgHome, type GpgHome } from '@backup-pipeline/testing';
import {
  assertCleanedUp,
  assertFailed,
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
  waitForTool,
  writeRandomFile,
  type MastodonHost,
  type Project,
  type Sandbox,
} from './support.js';

let host: MastodonHost;
let sb: Sandbox;
let gpg: GpgHome;
let dump: Project;
let media: Project;

beforeAll(async () => {
  [host, sb, gpg] = await Promise.all([mastodonHost(), sandbox('members'), createGpgHome()]);
  const mediaDir = join(sb.root, 'media');
  await mkdir(mediaDir);
  await writeRandomFile(join(mediaDir, 'big.bin'), 16 * 1024 * 1024);
  const folder = { folder: { use: 'local', path: './backups' } };
  dump = await project(sb, 'dump', {
    destinations: folder,
    pipelines: { nightly: { source: 'mastodon', stageTimeoutMinutes: 60, stages: [{ use: 'credentials', envFile: host.envFile }, { use: 'pg-dump' }], destinations: ['folder'] } },
  });
  media = await project(sb, 'media', {
    destinations: folder,
    pipelines: {
      nightly: {
        source: 'media',
        stageTimeoutMinutes: 60,
        // compressLevel 9 on incompressible data: gpg works long enough to be caught.
        stages: [{ use: 'files', mediaDir, compression: 'none' }, { use: 'gpg', recipients: [gpg.fingerprint], gnupgHome: gpg.home, compressLevel: 9 }],
        destinations: ['folder'],
      },
    },
  });
  for (const p of [dump, media]) {
    sb.setRoots.add(join(p.dir, 'backups'));
    const first = await p.run();
    expect(first.exitCode, first.stderr).toBe(0);
  }
}, 300_000);

afterAll(async () => {
  if (sb) await scanForSecrets(sb, [HOSTILE_PASSWORD]).catch((e: unknown) => console.error(e));
  await host?.pg.stop();
  await gpg?.cleanup();
  await sb?.cleanup();
});

/** Runs `p`, SIGKILLs the first live `tool` matching `match`, and checks the failure and its aftermath. */
async function killMember(p: Project, tool: string, match: (argv: string[]) => boolean, code: string, names: Array<string | RegExp>, during?: { release(): Promise<void> }) {
  const before = await listSets(sb, p);
  const seen = await recordedPids(sb);
  const child = p.run();
  const victim = await waitForTool(sb, tool, match, seen);
  process.kill(victim.pid, 'SIGKILL');
  const out = await child;
  await during?.release();
  expect(out.timedOut, 'the run hung after a member of its chain died').toBeFalsy();
  const line = assertFailed(out, code, names);
  for (const pid of await recordedPids(sb)) if (!seen.has(pid)) expect(await running(pid), `pid ${pid} of the failed run is still running`).toBe(false);
  expect(await listSets(sb, p)).toEqual(before);
  await assertCleanedUp(sb, p);
  const next = await p.run();
  expect(next.exitCode, next.stderr).toBe(0);
  return line;
}

describe('a member of a chain dies', () => {
  it('zstd killed while pg_dump waits for a table lock: the run fails naming zstd and SIGKILL, pg_dump is ended', async () => {
    const lock = await holdTableLock(host);
    try {
      const line = await killMember(dump, 'zstd', (argv) => !argv.includes('--version') && !argv.includes('-d'), 'EXEC_FAILED', ['[pg-dump → produce]', 'zstd', 'SIGKILL'], lock);
      expect(line).not.toMatch(/pg_dump was stopped/);
    } finally {
      await lock.release();
    }
  });

  it('gpg killed while it encrypts: the run fails naming gpg and SIGKILL', async () => {
    // files streams its tar through the core, so gpg is a filter spliced into that stream.
    await killMember(media, 'gpg', (argv) => argv.includes('--encrypt'), 'GPG_ENCRYPT_FAILED', ['[gpg → transformFilter]', 'gpg', 'SIGKILL']);
  });
});
