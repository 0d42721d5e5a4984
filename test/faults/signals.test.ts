/**
 * SIGTERM and SIGINT to `pipeline run` during the dump, during encryption and during the upload:
 * exit 143/130, no partial set anywhere, nothing left in TMPDIR, the lock released, and the next
 * run succeeds. Each phase is reached by watching the run (the recording shims show which program
 * runs; the JSON log shows when the set is complete and shipping starts), and made to last: the
 * dump waits behind a table lock, gpg encrypts a 48 MiB media archive, and S3 answers slowly
 * through the fault proxy.
 */
import { mkdir } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createGpgHome, startFaultProxy, startS3Server, type FaultProxy, type GpgHome, type S3Server } from '@backup-pipeline/testing';
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
  verifyCompleteSets,
  waitFor,
  waitForTool,
  writeRandomFile,
  type DestinationSets,
  type MastodonHost,
  type Project,
  type Sandbox,
} from './support.js';

let host: MastodonHost;
let sb: Sandbox;
let gpg: GpgHome;
let s3: S3Server;
let proxy: FaultProxy;
let p: Project;

beforeAll(async () => {
  [host, sb, gpg, s3] = await Promise.all([mastodonHost(), sandbox('signals'), createGpgHome(), startS3Server()]);
  proxy = await startFaultProxy(s3.endpoint);
  const media = join(sb.root, 'media');
  await mkdir(media);
  await writeRandomFile(join(media, 'big.bin'), 48 * 1024 * 1024);
  p = await project(sb, 'signals', {
    destinations: {
      folder: { use: 'local', path: './backups' },
      bucket: { use: 's3', bucket: s3.bucket, prefix: 'signals/', endpoint: proxy.endpoint, forcePathStyle: true, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey, maxAttempts: 2 },
    },
    pipelines: {
      nightly: {
        source: 'mastodon',
        stages: [
          { use: 'credentials', envFile: host.envFile },
          { use: 'pg-dump' },
          { use: 'files', mediaDir: media, compression: 'none' },
          { use: 'gpg', recipients: [gpg.fingerprint], gnupgHome: gpg.home, compressLevel: 9 },
        ],
        destinations: ['bucket'],
      },
    },
  });
  sb.setRoots.add(join(p.dir, 'backups'));
});

afterAll(async () => {
  if (sb) await scanForSecrets(sb, [HOSTILE_PASSWORD]);
  await proxy?.stop();
  await Promise.all([host?.pg.stop(), gpg?.cleanup(), s3?.stop()]);
  await sb?.cleanup();
});

const SIGNALS = [
  ['SIGTERM', 143],
  ['SIGINT', 130],
] as const;

/** Runs, reaches the phase with `reach`, sends `signal`, and checks the aftermath. */
async function interrupt(
  signal: 'SIGTERM' | 'SIGINT',
  exit: number,
  stopped: RegExp,
  reach: (child: ReturnType<Project['run']>, lines: string[]) => Promise<void>,
  afterExit: () => Promise<void> = async () => {},
): Promise<void> {
  const before = await listSets(sb, p);
  const lines: string[] = [];
  const child = p.run(['--log-level', 'debug']);
  child.stderr?.on('data', (d: Buffer) => lines.push(...d.toString().split('\n')));
  await reach(child, lines);
  // process.kill, not child.kill: execa follows its own kill with SIGKILL after 5 s, which an
  // operator's SIGTERM does not (the cleanup through the slow proxy may take longer).
  process.kill(child.pid!, signal);
  const out = await child;
  proxy.setMode({ kind: 'pass' });
  await afterExit();
  expect(out.exitCode, out.stderr).toBe(exit);
  expect(out.stderr).toContain(`${signal} received`);
  const errors = out.stderr.split('\n').filter((l) => l.startsWith('error '));
  expect(errors, out.stderr).toHaveLength(1);
  // One code for an interrupted run, whatever phase it was in, and the line says what was stopped.
  expect(errors[0]).toMatch(/^error (\[[^\]]+\] )?ABORTED: /);
  expect(errors[0]).toMatch(stopped);
  const after = await listSets(sb, p);
  for (const [name, d] of Object.entries(after)) {
    expect(d.incomplete, `a partial set was left in ${name}`).toEqual([]);
    const b: DestinationSets = before[name] ?? { complete: [], incomplete: [] };
    expect(d.complete, `a good set disappeared from ${name}`).toEqual(expect.arrayContaining(b.complete));
    if (name !== 'work') expect(d.complete.filter((id) => !b.complete.includes(id)), `${name} gained a set from an interrupted run`).toEqual([]);
  }
  expect(await verifyCompleteSets(p), 'the good sets verify by content').toBeGreaterThanOrEqual(0);
  await assertCleanedUp(sb, p);
  const next = await p.run();
  expect(next.exitCode, next.stderr).toBe(0);
  await assertCleanedUp(sb, p);
  expect(await verifyCompleteSets(p), 'the next run made a set that verifies').toBeGreaterThan(0);
}

describe.each(SIGNALS)('%s', (signal, exit) => {
  it(`during the dump exits ${exit}, kills pg_dump, leaves nothing partial`, async () => {
    const lock = await holdTableLock(host);
    try {
      const seen = await recordedPids(sb);
      let dumpPid = 0;
      await interrupt(
        signal,
        exit,
        /pg_dump|zstd|dump/,
        async () => {
          dumpPid = (await waitForTool(sb, 'pg_dump', (argv) => !argv.includes('--version'), seen)).pid;
        },
        async () => {
          // pg_dump was killed, not left waiting for the lock.
          expect(await running(dumpPid)).toBe(false);
          await lock.release();
        },
      );
    } finally {
      await lock.release();
    }
  });

  it(`during encryption exits ${exit} and leaves no partial set`, async () => {
    const seen = await recordedPids(sb);
    let gpgPid = 0;
    await interrupt(
      signal,
      exit,
      /gpg|encrypt/,
      async () => {
        gpgPid = (await waitForTool(sb, 'gpg', (argv) => argv.includes('--encrypt') && argv.join(' ').includes('-z 9'), seen)).pid;
      },
      async () => {
        // gpg itself was stopped, not left encrypting for a dead parent.
        expect(gpgPid).toBeGreaterThan(0);
        expect(await running(gpgPid), `gpg (pid ${gpgPid}) still runs after the CLI exited`).toBe(false);
      },
    );
  });

  it(`during the upload exits ${exit} and leaves no partial set in the bucket`, async () => {
    // Every destination ships at once: the first to stop may be the bucket's upload or rsync's upload or its check.
    await interrupt(signal, exit, /(upload of|uploading|checking) \S+ was stopped/, async (_child, lines) => {
      await waitFor('the set to be complete in the work dir', () => lines.some((l) => l.includes('is complete in the work dir')), 60_000);
      proxy.setMode({ kind: 'delay', ms: 1500 });
      await waitFor('an upload request', () => proxy.stats.requests > 0 && lines.some((l) => l.includes('upload:bucket') || l.includes('"msg":"shipping')) || proxy.stats.faults > 0, 30_000);
    });
  });
});
