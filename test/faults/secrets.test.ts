/**
 * The secret scan over a run that handles every kind of secret — the database password (hostile
 * characters), a gpg passphrase, the S3 secret key — through every tool: pg_dump, psql,
 * pg_restore (restore drill), gpg, rsync/ssh, then `verify --restore-test`, `restore` and `list`.
 * No secret may appear in any output line, error, manifest, child argv or child environment
 * (recorded by the PATH shims, and by polling /proc/<pid>/cmdline while the commands run), and
 * every file written into a set is 0600. (Every other file of this suite runs the same scan over
 * its own faults in afterAll.)
 */
import { readdir, readFile, writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createGpgHome, startS3Server, startSshd, type GpgHome, type S3Server, type SshServer } from '@backup-pipeline/testing';
import { assertCleanedUp, HOSTILE_PASSWORD, join, listSets, mastodonHost, project, sandbox, scanForSecrets, shimRecords, type MastodonHost, type Project, type Sandbox } from './support.js';

let host: MastodonHost;
let sb: Sandbox;
let gpg: GpgHome;
let sshd: SshServer;
let s3: S3Server;
let passphrase: { path: string; passphrase: string };
let p: Project;
let secrets: string[];

beforeAll(async () => {
  [host, sb, gpg, sshd, s3] = await Promise.all([mastodonHost(), sandbox('secrets'), createGpgHome(), startSshd(), startS3Server()]);
  passphrase = await gpg.createSymmetricPassphraseFile();
  await writeFile(join(sb.root, 's3-secret'), s3.secretAccessKey + '\n', { mode: 0o600 });
  secrets = [HOSTILE_PASSWORD, passphrase.passphrase, s3.secretAccessKey];
  const remote = join(sshd.dir, 'remote');
  p = await project(sb, 'all', {
    destinations: {
      folder: { use: 'local', path: './backups' },
      nas: { use: 'rsync', target: `${sshd.user}@127.0.0.1:${remote}`, port: sshd.port, identityFile: sshd.identityFile, knownHostsFile: sshd.knownHostsFile },
      bucket: { use: 's3', bucket: s3.bucket, prefix: 'secrets/', endpoint: s3.endpoint, forcePathStyle: true, accessKeyId: s3.accessKeyId, secretAccessKey: `\${file:${join(sb.root, 's3-secret')}}` },
    },
    pipelines: {
      nightly: {
        source: 'mastodon',
        stages: [
          { use: 'credentials', envFile: host.envFile },
          { use: 'pg-dump', globals: true },
          { use: 'verify', restoreTest: true },
          { use: 'files', envFile: host.envFile },
          { use: 'gpg', recipients: [gpg.fingerprint], gnupgHome: gpg.home, passphraseFile: passphrase.path },
          { use: 'retention', keepLast: 2 },
        ],
        destinations: ['folder', 'nas', 'bucket'],
      },
    },
  });
  sb.setRoots.add(join(p.dir, 'backups'));
  sb.setRoots.add(remote);
});

afterAll(async () => {
  await Promise.all([host?.pg.stop(), gpg?.cleanup(), sshd?.cleanup(), s3?.stop()]);
  await sb?.cleanup();
});

/** Polls every process's argv while `body` runs; returns the argv lines that held a secret. */
async function watchArgv<T>(body: () => Promise<T>): Promise<{ result: T; leaks: string[]; seen: number }> {
  const leaks: string[] = [];
  let seen = 0;
  let done = false;
  const poll = (async () => {
    while (!done) {
      for (const pid of await readdir('/proc').catch(() => [] as string[])) {
        if (!/^\d+$/.test(pid)) continue;
        const argv = (await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '')).split('\0').join(' ');
        if (!argv) continue;
        seen++;
        if (secrets.some((s) => argv.includes(s))) leaks.push(argv);
      }
      await new Promise((r) => setTimeout(r, 15));
    }
  })();
  try {
    return { result: await body(), leaks, seen };
  } finally {
    done = true;
    await poll;
  }
}

describe('secret scan', () => {
  it('no secret in output, argv, environment, manifests or set files; set files are 0600', async () => {
    const { result, leaks, seen } = await watchArgv(async () => {
      const outs = [];
      for (let i = 0; i < 2; i++) outs.push(await p.run(['--log-level', 'trace']));
      const id = (await listSets(sb, p)).bucket!.complete.at(-1)!;
      outs.push(await p.cli(['verify', id, '--from', 'bucket', '--restore-test', '--log-level', 'debug', '--json']));
      outs.push(await p.cli(['restore', 'latest', '--from', 'nas', '--to', 'scan_restored', '--log-format', 'json', '--log-level', 'debug']));
      outs.push(await p.cli(['run', '--dry-run', '--json']));
      outs.push(await p.cli(['list', '--json']));
      outs.push(await p.cli(['plugins']));
      return outs;
    });
    for (const out of result) expect(out.exitCode, out.stderr).toBe(0);
    expect(seen).toBeGreaterThan(0);
    expect(leaks, 'a secret in a process argv').toEqual([]);
    await assertCleanedUp(sb, p);
    const tools = new Set((await shimRecords(sb)).map((r) => r.tool));
    for (const tool of ['pg_dump', 'pg_dumpall', 'psql', 'pg_restore', 'gpg', 'rsync', 'ssh', 'zstd']) expect(tools, `${tool} never ran, so it was not scanned`).toContain(tool);
    const scanned = await scanForSecrets(sb, secrets);
    expect(scanned.files).toBeGreaterThan(10);
  });
});
