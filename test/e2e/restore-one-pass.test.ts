/**
 * Restore in one pass, through the CLI against real services: from a local folder, rsync over a
 * real sshd and a real S3 server, the gpg-encrypted dump is fetched as a stream, hashed, decrypted
 * by gpg and hashed again on the way (the log says so: never a ciphertext file), decompressed into
 * the one file `pg_restore -j` needs — or with `--jobs 1` straight into pg_restore. A changed
 * ciphertext byte and a copy re-encrypted from other plaintext each fail with CHECKSUM_MISMATCH at
 * the end of the stream and leave no database that looks restored (a new target is dropped, a
 * `--clean` target untouched).
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createGpgHome, startS3Server, startSshd, tableChecksums, type GpgHome, type S3Server, type SshServer } from '@backup-pipeline/testing';
import { mastodonHost, pipeline, writeMastodonConfig, type MastodonHost } from './support.js';

let host: MastodonHost;
let gpg: GpgHome;
let sshd: SshServer;
let s3: S3Server;
const DUMP = 'mastodon_production.dump.zst.gpg';
const databases = async (like: string) => (await host.pg.psql(`SELECT datname FROM pg_database WHERE datname LIKE '${like}' ORDER BY 1`)).map((r) => r[0]);
const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

beforeAll(async () => {
  [host, gpg, sshd, s3] = await Promise.all([mastodonHost(), createGpgHome(), startSshd(), startS3Server()]);
  const remoteDir = join(host.dir, 'remote');
  await mkdir(remoteDir, { mode: 0o700 });
  await writeMastodonConfig(
    host.dir,
    {
      nightly: [
        { use: 'credentials', envFile: host.envFile },
        { use: 'pg-dump' },
        { use: 'verify', expectTables: ['accounts'] },
        { use: 'gpg', gnupgHome: gpg.home, recipients: [gpg.fingerprint] },
        { use: 'retention', keepLast: 3 },
      ],
    },
    {
      folder: { use: 'local', path: './folder' },
      offsite: { use: 'rsync', target: `${sshd.user}@${sshd.host}:${remoteDir}`, port: sshd.port, identityFile: sshd.identityFile, knownHostsFile: sshd.knownHostsFile },
      bucket: { use: 's3', bucket: s3.bucket, prefix: 'mastodon/', region: s3.region, endpoint: s3.endpoint, forcePathStyle: true, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey },
    },
  );
  const run = await pipeline(['run'], host.dir);
  expect(run.exitCode, run.stderr).toBe(0);
});

afterAll(async () => {
  await Promise.allSettled([host?.pg.stop(), gpg?.cleanup(), sshd?.stop(), s3?.stop()]);
});

const restore = (args: string[]) => pipeline(['restore', ...args, '--gnupg-home', gpg.home, '--log-level', 'info'], host.dir);

describe('restore in one pass', () => {
  it('streams from each destination kind through gpg into pg_restore -j, no ciphertext file, every table identical', async () => {
    const source = await tableChecksums(host.pg, host.database);
    for (const from of ['folder', 'offsite', 'bucket']) {
      const target = `onepass_${from}`;
      const done = await restore(['latest', '--from', from, '--to', target, '--jobs', '2']);
      expect(done.exitCode, done.stderr).toBe(0);
      const log = done.stdout + done.stderr;
      expect(log).toContain(`fetching ${DUMP} from ${from} (one stream, decrypted by gpg --decrypt, checked on the way)`);
      expect(log).not.toMatch(/through files|fetched into a file first/);
      expect(await tableChecksums(host.pg, target)).toEqual(source);
    }
  });

  it('--jobs 1 goes straight into pg_restore (no file at all)', async () => {
    const done = await restore(['latest', '--from', 'offsite', '--to', 'onepass_jobs1', '--jobs', '1']);
    expect(done.exitCode, done.stderr).toBe(0);
    expect(done.stdout + done.stderr).toContain('streamed straight into pg_restore (no file)');
    expect(await tableChecksums(host.pg, 'onepass_jobs1')).toEqual(await tableChecksums(host.pg, host.database));
  });

  it('a changed ciphertext byte: CHECKSUM_MISMATCH at the end of the stream, the new database dropped, a --clean target untouched', async () => {
    const set = (await readdir(join(host.dir, 'folder'))).filter((n) => !n.startsWith('.')).sort().at(-1)!;
    const file = join(host.dir, 'folder', set, DUMP);
    const original = await readFile(file);
    const bytes = Buffer.from(original);
    bytes[bytes.length - 100] ^= 0x01;
    await writeFile(file, bytes);
    try {
      for (const jobs of ['1', '2']) {
        const failed = await restore([set, '--from', 'folder', '--to', `onepass_bad_${jobs}`, '--jobs', jobs]);
        expect(failed.exitCode).toBe(1);
        expect(failed.stderr).toContain(`CHECKSUM_MISMATCH: folder/${set}/${DUMP} does not match its manifest`);
        expect(await databases(`onepass_bad_${jobs}`)).toEqual([]);
        // Recorded as today: this copy is damaged from now on (cleared here to try the next way).
        await rm(join(host.dir, 'folder', set, 'damaged.json'));
      }
      const live = await tableChecksums(host.pg, host.database);
      const clean = await restore([set, '--from', 'folder', '--to', host.database, '--clean', '--jobs', '1']);
      expect(clean.exitCode).toBe(1);
      expect(clean.stderr).toContain('CHECKSUM_MISMATCH');
      expect(await tableChecksums(host.pg, host.database)).toEqual(live);
      expect(await databases(`${host.database}_restoring_%`)).toEqual([]);
    } finally {
      await writeFile(file, original);
      await rm(join(host.dir, 'folder', set, 'damaged.json'), { force: true });
    }
  });

  it('a copy re-encrypted from other plaintext (manifest made to match the ciphertext): CHECKSUM_MISMATCH of the plaintext, no database left', async () => {
    const set = (await readdir(join(host.dir, 'folder'))).filter((n) => !n.startsWith('.')).sort().at(-1)!;
    const dir = join(host.dir, 'folder', set);
    const plain = execFileSync('gpg', ['--batch', '--no-tty', '--decrypt', join(dir, DUMP)], { env: { ...process.env, GNUPGHOME: gpg.home }, maxBuffer: 1 << 30, stdio: ['ignore', 'pipe', 'ignore'] });
    // Still a valid zstd stream and a valid archive up to the change; only its checksum tells.
    plain[plain.length - 10] ^= 0x01;
    const other = execFileSync('gpg', ['--batch', '--no-tty', '--trust-model', 'always', '-z', '0', '--encrypt', '--recipient', gpg.fingerprint, '--output', '-'], {
      env: { ...process.env, GNUPGHOME: gpg.home },
      input: plain,
      maxBuffer: 1 << 30,
    });
    await writeFile(join(dir, DUMP), other);
    const manifestPath = join(dir, 'manifest.json');
    const manifest = JSON.parse(await readFile(manifestPath, 'utf8'));
    const entry = manifest.artifacts.find((a: { name: string }) => a.name === DUMP);
    Object.assign(entry, { bytes: other.length, sha256: sha256(other) });
    await writeFile(manifestPath, JSON.stringify(manifest, null, 2));

    for (const jobs of ['1', '2']) {
      const failed = await restore([set, '--from', 'folder', '--to', `onepass_other_${jobs}`, '--jobs', jobs]);
      expect(failed.exitCode).toBe(1);
      expect(failed.stderr).toContain(`CHECKSUM_MISMATCH: ${DUMP} decrypts to content that does not match the manifest`);
      expect(await databases(`onepass_other_${jobs}`)).toEqual([]);
    }
  });
});
