/**
 * A full disk at each stage of `run` and of `restore`, on small tmpfs file systems this test
 * mounts: the dump (pg_dump → zstd → file), the media archive (tar → zstd → file), encryption
 * (file → gpg → file) and the upload to a local destination; for `restore`, fetching, decrypting
 * (gpg → file) and decompressing for a parallel pg_restore (zstd -o) in the run's scratch folder
 * (under the work dir), and a full $TMPDIR (which a restore no longer needs). The free space is set per case with
 * a filler file, from the sizes of a good set taken first, so each fault lands in the stage it
 * names. Every case must end on its own (long before the CLI helper's timeout, with the stage
 * timeout far away) and leave: a non-zero exit and one error line naming NO_SPACE, the stage and
 * the path; no set listed that was not there before; the lock free; no password file or run
 * folder left; no child process still running; and the next run green, with the earlier good
 * sets still there.
 */
import { mkdir, readdir, readFile, rm, statfs } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { createGpgHome, type GpgHome } from '@backup-pipeline/testing';
import {
  assertCleanedUp,
  assertFailed,
  HOSTILE_PASSWORD,
  join,
  listSets,
  mastodonHost,
  project,
  recordedPids,
  running,
  sandbox,
  scanForSecrets,
  writeRandomFile,
  type DestinationSets,
  type MastodonHost,
  type Project,
  type Sandbox,
} from './support.js';

let host: MastodonHost;
let sb: Sandbox;
let gpg: GpgHome;
let p: Project;
const mounts: string[] = [];
let destDir: string;
/** Sizes of the good set's artifacts: the compressed dump and the media archive (plaintext). */
let dumpBytes = 0;
let mediaBytes = 0;
/** The encrypted dump, and the dump with its zstd undone. */
let dumpGpgBytes = 0;
let dumpPlainBytes = 0;

const MEDIA_BYTES = 3 * 1024 * 1024;
const SLACK = 96 * 1024;

async function mountTmpfs(dir: string, size: string): Promise<void> {
  await mkdir(dir, { recursive: true });
  const mounted = await execa('mount', ['-t', 'tmpfs', '-o', `size=${size},mode=0700`, 'tmpfs', dir], { reject: false });
  // Mounting needs root; CI runs as root. Without it this file cannot test anything: fail, never skip.
  expect(mounted.exitCode, `cannot mount a tmpfs on ${dir} (run as root): ${mounted.stderr}`).toBe(0);
  mounts.push(dir);
}

/** Leaves `free` bytes available on the file system of `dir`, with a filler file. */
async function leaveFree(dir: string, free: number): Promise<string> {
  const filler = join(dir, 'filler.bin');
  await rm(filler, { force: true });
  const fs = await statfs(dir);
  const available = fs.bavail * fs.bsize;
  expect(available, `${dir} has only ${available} bytes`).toBeGreaterThan(free);
  await writeRandomFile(filler, available - free);
  return filler;
}

async function childrenLeft(since: Set<number>): Promise<number[]> {
  const left: number[] = [];
  for (const pid of await recordedPids(sb)) if (!since.has(pid) && (await running(pid))) left.push(pid);
  return left;
}

/** No pgpass file and no run folder anywhere under the work dir or TMPDIR. */
async function assertNoScratch(q: Project): Promise<void> {
  await assertCleanedUp(sb, q);
  expect(await readdir(join(q.workDir, '.runs')).catch(() => []), 'a run folder was left in the work dir').toEqual([]);
  const found = await execa('find', [q.workDir, sb.tmp, '-name', 'pgpass-*'], { reject: false });
  expect(found.stdout.trim(), 'a password file was left').toBe('');
}

beforeAll(async () => {
  [host, sb, gpg] = await Promise.all([mastodonHost(), sandbox('diskfull'), createGpgHome()]);
  const media = join(sb.root, 'media');
  await mkdir(media);
  await writeRandomFile(join(media, 'avatar.bin'), MEDIA_BYTES);
  destDir = join(sb.root, 'dest');
  p = await project(sb, 'diskfull', {
    destinations: { folder: { use: 'local', path: destDir } },
    pipelines: {
      nightly: {
        source: 'mastodon',
        // Far away: a stage that hangs must show as a hang (the CLI helper's 90 s), not as a timeout error.
        stageTimeoutMinutes: 60,
        stages: [
          { use: 'credentials', envFile: host.envFile },
          { use: 'pg-dump' },
          { use: 'files', mediaDir: media, compression: 'zstd' },
          { use: 'gpg', recipients: [gpg.fingerprint], gnupgHome: gpg.home },
          { use: 'retention', keepLast: 30, incompleteGraceHours: 0 },
        ],
        destinations: ['folder'],
      },
    },
  });
  await mountTmpfs(p.workDir, '64m');
  await mountTmpfs(destDir, '24m');
  sb.setRoots.add(destDir);
  const first = await p.run();
  expect(first.exitCode, first.stderr).toBe(0);
  const sets = await listSets(sb, p);
  const id = sets.folder!.complete[0]!;
  const manifest = JSON.parse(await readFile(join(destDir, id, 'manifest.json'), 'utf8')) as { artifacts: Array<{ kind: string; bytes: number; plain?: { bytes: number } }> };
  dumpBytes = manifest.artifacts.find((a) => a.kind === 'database')!.plain!.bytes;
  dumpGpgBytes = manifest.artifacts.find((a) => a.kind === 'database')!.bytes;
  const plain = await execa('sh', ['-c', `gpg --batch --quiet --decrypt "$1" | zstd -q -d -c | wc -c`, 'sh', join(destDir, id, 'mastodon_production.dump.zst.gpg')], { env: { GNUPGHOME: gpg.home } });
  dumpPlainBytes = Number(plain.stdout.trim());
  mediaBytes = manifest.artifacts.find((a) => a.kind === 'files')!.plain!.bytes;
  expect(mediaBytes).toBeGreaterThan(MEDIA_BYTES);
  expect(mediaBytes / 2).toBeGreaterThan(dumpBytes + SLACK);
}, 300_000);

afterAll(async () => {
  if (sb) await scanForSecrets(sb, [HOSTILE_PASSWORD]).catch((e: unknown) => console.error(e));
  for (const m of mounts.reverse()) await execa('umount', ['--lazy', m], { reject: false });
  await host?.pg.stop();
  await gpg?.cleanup();
  await sb?.cleanup();
});

/** Runs with `dir` left with `free` bytes, and checks the failure and its aftermath. */
async function fullAt(dir: string, free: number, expect_: { stage: string; path: RegExp }): Promise<string> {
  const before = await listSets(sb, p);
  const filler = await leaveFree(dir, free);
  const seen = await recordedPids(sb);
  let line: string;
  try {
    const out = await p.run();
    expect(out.timedOut, 'the run hung on the full disk').toBeFalsy();
    line = assertFailed(out, 'NO_SPACE', [expect_.stage, expect_.path]);
    if (process.env.BP_SHOW) console.log(line);
    expect(await childrenLeft(seen), 'a child process of the failed run is still running').toEqual([]);
    expect(await listSets(sb, p), 'the failed run changed the sets').toEqual(before);
    await assertNoScratch(p);
  } finally {
    await rm(filler, { force: true });
  }
  // With room again, the next run succeeds and the earlier good sets are all still there.
  const next = await p.run();
  expect(next.exitCode, next.stderr).toBe(0);
  await assertNoScratch(p);
  const after = await listSets(sb, p);
  for (const [dest, sets] of Object.entries(before) as Array<[string, DestinationSets]>) {
    for (const id of sets.complete) expect(after[dest]!.complete, `good set ${id} on ${dest} was deleted`).toContain(id);
  }
  return line;
}

describe('disk full during run', () => {
  it('while pg_dump → zstd writes the dump: NO_SPACE naming the dump file and pg-dump', async () => {
    const line = await fullAt(p.workDir, Math.floor(dumpBytes / 2), { stage: '[pg-dump → produce]', path: /work\/\S+\/mastodon_production\.dump\.zst/ });
    expect(line).toMatch(/ENOSPC/);
  });

  it('while tar → zstd writes the media archive: NO_SPACE naming media.tar.zst and files', async () => {
    await fullAt(p.workDir, dumpBytes + SLACK + Math.floor(mediaBytes / 2), { stage: '[files → produce]', path: /work\/\S+\/media\.tar\.zst/ });
  });

  it('while gpg encrypts inside the tar stream (nobody reads gpg once the write failed): NO_SPACE naming the .gpg file, gpg stopped', async () => {
    // One pass: only the encrypted files are ever written (the dump's, then the media archive's).
    await fullAt(p.workDir, dumpGpgBytes + SLACK + Math.floor(mediaBytes / 2), { stage: '[files → produce]', path: /work\/\S+\/media\.tar\.zst\.gpg/ });
  });

  it('while pg_dump -Fd writes its folder in the run\'s scratch folder: NO_SPACE naming that folder, pg_dump stopped', async () => {
    const q = await project(sb, 'diskfull-dir', {
      destinations: { folder: { use: 'local', path: destDir } },
      pipelines: { dirs: { source: 'mastodon', stageTimeoutMinutes: 60, stages: [{ use: 'credentials', envFile: host.envFile }, { use: 'pg-dump', format: 'directory', jobs: 2 }], destinations: ['folder'] } },
    });
    await mountTmpfs(q.workDir, '16m');
    const good = await q.run();
    expect(good.exitCode, good.stderr).toBe(0);
    const before = await listSets(sb, q);
    const filler = await leaveFree(q.workDir, Math.floor(dumpPlainBytes / 2));
    const seen = await recordedPids(sb);
    try {
      const out = await q.run();
      expect(out.timedOut, 'the run hung on the full disk').toBeFalsy();
      const line = assertFailed(out, 'NO_SPACE', ['[pg-dump → produce]', 'pg_dump ran out of disk space writing', /\.runs\/\d+-\w+\/pg_dump-mastodon_production/]);
      if (process.env.BP_SHOW) console.log(line);
      expect(await childrenLeft(seen)).toEqual([]);
      expect(await listSets(sb, q)).toEqual(before);
      await assertNoScratch(q);
    } finally {
      await rm(filler, { force: true });
    }
    const next = await q.run();
    expect(next.exitCode, next.stderr).toBe(0);
    for (const id of before.folder!.complete) expect((await listSets(sb, q)).folder!.complete).toContain(id);
  });

  it('while shipping to a local destination: the run fails naming the destination, the path and ENOSPC', async () => {
    const before = await listSets(sb, p);
    const filler = await leaveFree(destDir, Math.floor(mediaBytes / 2));
    const seen = await recordedPids(sb);
    try {
      const out = await p.run();
      expect(out.timedOut, 'the run hung on the full destination').toBeFalsy();
      const line = assertFailed(out, 'DESTINATION_FAILED', ['"folder"', 'no space left', /dest\/\S+\/media\.tar\.zst\.gpg/]);
      expect(line).toMatch(/ENOSPC/);
      expect(await childrenLeft(seen)).toEqual([]);
      const now = await listSets(sb, p);
      // Nothing new on the full destination; the work dir keeps the new set (complete there).
      expect(now.folder).toEqual(before.folder);
      expect(now.work!.complete.length).toBe(before.work!.complete.length + 1);
      await assertNoScratch(p);
    } finally {
      await rm(filler, { force: true });
    }
    const next = await p.run();
    expect(next.exitCode, next.stderr).toBe(0);
    const after = await listSets(sb, p);
    for (const id of before.folder!.complete) expect(after.folder!.complete).toContain(id);
  });
});

const databaseExists = async (name: string) => (await host.pg.psql(`SELECT 1 FROM pg_database WHERE datname = '${name}'`)).length > 0;

/** `restore latest` from the local destination with the work dir (the restore's scratch) left with `free` bytes. */
async function restoreFullAt(free: number, database: string, args: string[], expect_: { path: RegExp; stage?: string }): Promise<void> {
  const before = await listSets(sb, p);
  const filler = await leaveFree(p.workDir, free);
  const seen = await recordedPids(sb);
  try {
    const out = await p.cli(['restore', 'latest', '--from', 'folder', '--to', database, '--gnupg-home', gpg.home, '--log-format', 'json', ...args]);
    expect(out.timedOut, 'the restore hung on the full disk').toBeFalsy();
    const line = assertFailed(out, 'NO_SPACE', [expect_.path, ...(expect_.stage ? [expect_.stage] : [])]);
    if (process.env.BP_SHOW) console.log(line);
    expect(line).toMatch(/ENOSPC/);
    expect(line, 'a full disk must never be called a damaged backup').not.toMatch(/corrupt|truncated|CHECKSUM|not a readable/i);
    expect(await childrenLeft(seen), 'a child process of the failed restore is still running').toEqual([]);
    expect(await databaseExists(database), 'the failed restore left the database it created').toBe(false);
    await assertNoScratch(p);
    expect(await listSets(sb, p), 'a restore changed the sets').toEqual(before);
  } finally {
    await rm(filler, { force: true });
  }
  const next = await p.cli(['restore', 'latest', '--from', 'folder', '--to', database, '--gnupg-home', gpg.home, ...args]);
  expect(next.exitCode, next.stderr).toBe(0);
  await assertNoScratch(p);
  expect(await databaseExists(database)).toBe(true);
}

describe('disk full during restore', () => {
  // One pass: the stored copy is read as a stream (no ciphertext file, no plaintext file); the only
  // file a restore writes is the seekable copy `pg_restore -j` needs, and with --jobs 1 not even that.
  it('--jobs 1 streams straight into pg_restore: a nearly full work dir does not stop it', async () => {
    const filler = await leaveFree(p.workDir, SLACK);
    try {
      const out = await p.cli(['restore', 'latest', '--from', 'folder', '--to', 'restored_stream', '--gnupg-home', gpg.home, '--jobs', '1']);
      expect(out.timedOut, 'the restore hung').toBeFalsy();
      expect(out.exitCode, out.stderr).toBe(0);
      expect(await databaseExists('restored_stream')).toBe(true);
      await assertNoScratch(p);
    } finally {
      await rm(filler, { force: true });
    }
  });

  it('while the decrypted stream is decompressed into the seekable copy with room for half of it: NO_SPACE naming it, never "corrupt"', async () => {
    await restoreFullAt(Math.floor(dumpPlainBytes / 2), 'restored_half', ['--jobs', '2'], { path: /\.runs\/\d+-\w+\/restore-\w+/, stage: '[pg-dump → restoreStream]' });
  });

  it('while zstd -d writes the seekable copy for a parallel pg_restore: NO_SPACE naming it, never "corrupt"', async () => {
    // Room for the ciphertext and the compressed dump, not for the uncompressed dump.
    expect(dumpPlainBytes).toBeGreaterThan(dumpGpgBytes + 2 * SLACK);
    await restoreFullAt(dumpGpgBytes + dumpBytes + SLACK, 'restored_decompress', ['--jobs', '2'], { path: /\.runs\/\d+-\w+\/restore-\w+/ });
  });

  it('with a full $TMPDIR: the restore does not need it (its scratch is in the work dir) and succeeds', async () => {
    const fullTmp = join(sb.root, 'full-tmp');
    await mountTmpfs(fullTmp, '1m');
    const filler = await leaveFree(fullTmp, 0);
    try {
      const out = await p.cli(['restore', 'latest', '--from', 'folder', '--to', 'restored_fulltmp', '--gnupg-home', gpg.home, '--jobs', '2'], { TMPDIR: fullTmp });
      expect(out.timedOut, 'the restore hung').toBeFalsy();
      expect(out.exitCode, out.stderr).toBe(0);
      expect(await databaseExists('restored_fulltmp')).toBe(true);
      expect((await readdir(fullTmp)).filter((f) => f !== 'filler.bin')).toEqual([]);
      await assertNoScratch(p);
    } finally {
      await rm(filler, { force: true });
    }
  });
});

describe('after every fault', () => {
  it('every set listed complete on the destination verifies by content (sha256 of each file, decryption)', async () => {
    const sets = await listSets(sb, p);
    expect(sets.folder!.complete.length).toBeGreaterThan(3);
    for (const id of sets.folder!.complete) {
      const out = await p.cli(['verify', id, '--from', 'folder', '--gnupg-home', gpg.home]);
      expect(out.exitCode, `set ${id} is listed complete but does not verify: ${out.stderr}`).toBe(0);
    }
    await assertNoScratch(p);
  });
});
