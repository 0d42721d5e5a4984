/**
 * The whole chain through the CLI against real services: a Mastodon-shaped database with hostile
 * text, credentials from a generated .env.production whose password holds : \ ' " # and a space,
 * pg_dump, verify with a restore test, gpg, shipping concurrently to a local folder, rsync over a
 * real sshd and a real S3 server, retention; then, for each destination, `pipeline restore`
 * fetches the set, checks every sha256, decrypts, restores into a new database — and every table
 * must match the source. Then `pipeline list`, `verify` and `prune` on the same sets.
 */
import { mkdir, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createGpgHome, startS3Server, startSshd, tableChecksums, type GpgHome, type S3Server, type SshServer } from '@backup-pipeline/testing';
import { HOSTILE_PASSWORD, mastodonHost, pipeline, writeConfig, type MastodonHost } from './support.js';

let host: MastodonHost;
let gpg: GpgHome;
let sshd: SshServer;
let s3: S3Server;
let remoteDir: string;

beforeAll(async () => {
  [host, gpg, sshd, s3] = await Promise.all([mastodonHost(), createGpgHome(), startSshd(), startS3Server()]);
  remoteDir = join(host.dir, 'remote');
  await mkdir(remoteDir, { mode: 0o700 });
  await writeFile(join(host.dir, 's3-secret'), s3.secretAccessKey + '\n', { mode: 0o600 });
  await writeConfig(host.dir, {
    workDir: './work',
    destinations: {
      folder: { use: 'local', path: './folder' },
      offsite: { use: 'rsync', target: `${sshd.user}@${sshd.host}:${remoteDir}`, port: sshd.port, identityFile: sshd.identityFile, knownHostsFile: sshd.knownHostsFile },
      bucket: {
        use: 's3',
        bucket: s3.bucket,
        prefix: 'mastodon/',
        region: s3.region,
        endpoint: s3.endpoint,
        forcePathStyle: true,
        accessKeyId: s3.accessKeyId,
        secretAccessKey: '${file:s3-secret}',
      },
    },
    pipelines: {
      nightly: {
        source: 'mastodon',
        stages: [
          { use: 'credentials', envFile: host.envFile },
          { use: 'pg-dump', globals: false },
          { use: 'verify', restoreTest: true, jobs: 2 },
          { use: 'gpg', gnupgHome: gpg.home, recipients: [gpg.fingerprint] },
          { use: 'retention', keepLast: 2 },
        ],
        destinations: ['folder', 'offsite', 'bucket'],
      },
    },
  });
});

afterAll(async () => {
  await Promise.allSettled([host?.pg.stop(), gpg?.cleanup(), sshd?.stop(), s3?.stop()]);
});

describe('the whole chain, end to end', () => {
  it('backs up, ships to three destinations concurrently, and each restores to an identical database', async () => {
    const { dir, pg, database } = host;
    const run = await pipeline(['run', 'nightly', '--log-format', 'json', '--log-level', 'debug'], dir);
    expect(run.exitCode, run.stderr).toBe(0);
    for (const text of [run.stdout, run.stderr]) {
      expect(text).not.toContain(HOSTILE_PASSWORD);
      expect(text).not.toContain(s3.secretAccessKey);
    }
    expect(run.stdout).toMatch(/→ folder: complete/);
    expect(run.stdout).toMatch(/→ offsite: complete/);
    expect(run.stdout).toMatch(/→ bucket: complete/);

    const source = await tableChecksums(pg, database);
    for (const from of ['folder', 'offsite', 'bucket']) {
      const target = `restored_${from}`;
      const restore = await pipeline(['restore', 'latest', '--from', from, '--to', target, '--jobs', '2', '--gnupg-home', gpg.home], dir);
      expect(restore.exitCode, restore.stderr).toBe(0);
      expect(restore.stdout).toMatch(new RegExp(`restored \\S+ into ${target} .*\\(fetched from ${from}\\)`));
      expect(restore.stdout).not.toContain('MISMATCH');
      expect(await tableChecksums(pg, target)).toEqual(source);
    }
  });

  it('lists complete, encrypted, verified sets everywhere; re-verifies with a restore drill; prunes by policy', async () => {
    const { dir } = host;
    // A second and third run: retention keepLast 2 leaves two sets in every destination.
    for (let i = 0; i < 2; i++) {
      await new Promise((r) => setTimeout(r, 1100)); // set ids have one-second resolution
      const again = await pipeline(['run', 'nightly'], dir);
      expect(again.exitCode, again.stderr).toBe(0);
    }
    const list = await pipeline(['list', '--json'], dir);
    expect(list.exitCode, list.stderr).toBe(0);
    const listed = JSON.parse(list.stdout) as Array<{ destination: string; sets: Array<{ complete: boolean; encrypted: boolean; verified: boolean }> }>;
    expect(listed.map((d) => d.destination).sort()).toEqual(['bucket', 'folder', 'offsite', 'work']);
    for (const d of listed) {
      expect(d.sets, d.destination).toHaveLength(2);
      expect(d.sets.every((s) => s.complete && s.encrypted && s.verified), d.destination).toBe(true);
    }
    const human = await pipeline(['list', '-d', 'bucket'], dir);
    expect(human.stdout).toMatch(/complete/);

    const verify = await pipeline(['verify', 'latest', '--from', 'offsite', '--restore-test', '--gnupg-home', gpg.home], dir);
    expect(verify.exitCode, verify.stderr).toBe(0);
    expect(verify.stdout).toMatch(/every sha256 matches the manifest/);
    expect(verify.stdout).toMatch(/restore drill: \d+ tables/);

    const prune = await pipeline(['prune', '--dry-run'], dir);
    expect(prune.exitCode, prune.stderr).toBe(0);
    expect(prune.stdout).toMatch(/folder: keep 2, would delete 0/);

    // Every file in every set written locally is private.
    for (const root of ['work', 'folder']) {
      for (const set of (await readdir(join(dir, root))).filter((n) => !n.startsWith('.'))) {
        for (const file of await readdir(join(dir, root, set))) {
          expect((await stat(join(dir, root, set, file))).mode & 0o777, `${root}/${set}/${file}`).toBe(0o600);
        }
      }
    }
    const manifest = await readFile(join(dir, 'folder', (await readdir(join(dir, 'folder')))[0]!, 'manifest.json'), 'utf8');
    expect(manifest).not.toContain(HOSTILE_PASSWORD);
    expect(manifest).toContain(gpg.fingerprint);
  });

  it('refuses to restore over a non-empty database, and detects an altered artifact', async () => {
    const { dir } = host;
    const refused = await pipeline(['restore', 'latest', '--to', 'restored_folder', '--gnupg-home', gpg.home], dir);
    expect(refused.exitCode).toBe(1);
    expect(refused.stderr).toContain('RESTORE_TARGET_NOT_EMPTY');

    const set = (await readdir(join(dir, 'folder'))).sort().at(-1)!;
    const file = (await readdir(join(dir, 'folder', set))).find((f) => f.endsWith('.gpg'))!;
    const bytes = await readFile(join(dir, 'folder', set, file));
    bytes[bytes.length >> 1] ^= 0xff;
    await writeFile(join(dir, 'folder', set, file), bytes);
    const notRestored = await pipeline(['restore', set, '--from', 'folder', '--to', 'never_created', '--gnupg-home', gpg.home], dir);
    expect(notRestored.exitCode).toBe(1);
    expect(notRestored.stderr).toContain(`CHECKSUM_MISMATCH: folder/${set}/${file} does not match its manifest`);
    expect(await host.pg.psql(`SELECT count(*) FROM pg_database WHERE datname = 'never_created'`)).toEqual([['0']]);
    // The failure was recorded in the set: it is damaged from now on, and verify says so.
    const tampered = await pipeline(['verify', set, '--from', 'folder', '--gnupg-home', gpg.home], dir);
    expect(tampered.exitCode).toBe(1);
    expect(tampered.stderr).toMatch(/SET_INCOMPLETE: .*a restore or verify found an altered file/);
  });
});
