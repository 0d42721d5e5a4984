/**
 * Faults before any data moves: credentials, the env file, the config, the lock, gpg preflight.
 * Each fault runs through the real CLI against a real cluster; after each, nothing partial is
 * left, the lock is released, no temporary credentials remain, good sets survive, and the next
 * normal run succeeds.
 */
import { mkdir, readdir, rm, writeFile } from 'node:fs/promises';
import { PassThrough } from 'node:stream';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { exec } from '@backup-pipeline/core';
import { createGpgHome, mastodonEnvText, type GpgHome } from '@backup-pipeline/testing';
import {
  assertCleanedUp,
  verifyCompleteSets,
  assertFailed,
  exists,
  HOSTILE_PASSWORD,
  join,
  listSets,
  mastodonHost,
  project,
  recordedPids,
  sandbox,
  scanForSecrets,
  shimRecords,
  waitFor,
  type MastodonHost,
  type Project,
  type Sandbox,
} from './support.js';

let host: MastodonHost;
let sb: Sandbox;
let gpg: GpgHome;
let passphrase: { path: string; passphrase: string };
let p: Project;
let envFile: string;
let goodEnv: string;

const envText = (pass: string, extra: string[] = []) =>
  mastodonEnvText({ host: host.pg.host, port: host.pg.port, database: host.database, user: host.user, password: pass, extra });

beforeAll(async () => {
  [host, sb, gpg] = await Promise.all([mastodonHost(), sandbox('config'), createGpgHome()]);
  passphrase = await gpg.createSymmetricPassphraseFile();
  envFile = join(sb.root, 'env', '.env.production');
  await mkdir(join(sb.root, 'env'), { mode: 0o700 });
  goodEnv = envText(HOSTILE_PASSWORD);
  await writeFile(envFile, goodEnv, { mode: 0o600 });
  p = await project(sb, 'creds', {
    destinations: { folder: { use: 'local', path: './backups' } },
    pipelines: {
      nightly: {
        source: 'mastodon',
        stages: [{ use: 'credentials', envFile }, { use: 'pg-dump' }, { use: 'retention', keepLast: 2 }],
        destinations: ['folder'],
      },
    },
  });
  sb.setRoots.add(join(p.dir, 'backups'));
  const first = await p.run();
  expect(first.exitCode, first.stderr).toBe(0);
});

afterEach(async () => {
  await rm(envFile, { recursive: true, force: true });
  await writeFile(envFile, goodEnv, { mode: 0o600 });
});

afterAll(async () => {
  if (sb) {
    const scanned = await scanForSecrets(sb, [HOSTILE_PASSWORD, passphrase?.passphrase ?? '']);
    expect(scanned.files).toBeGreaterThan(0);
    expect(scanned.invocations).toBeGreaterThan(0);
  }
  await Promise.all([host?.pg.stop(), gpg?.cleanup()]);
  await sb?.cleanup();
});

/** Runs the fault, checks the common aftermath, then that the next normal run succeeds. */
async function fault(setup: () => Promise<void>, check: (out: Awaited<ReturnType<Project['run']>>) => void, target: Project = p): Promise<void> {
  const before = await listSets(sb, target);
  await setup();
  const out = await target.run();
  check(out);
  expect(await listSets(sb, target), 'the sets changed after a failed run').toEqual(before);
  await assertCleanedUp(sb, target);
  await rm(envFile, { recursive: true, force: true });
  await writeFile(envFile, goodEnv, { mode: 0o600 });
  // What is listed complete after the fault is whole (by content, not by the listing).
  await verifyCompleteSets(target);
  const next = await target.run();
  expect(next.exitCode, next.stderr).toBe(0);
  await assertCleanedUp(sb, target);
}

describe('credential faults', () => {
  it('a wrong password fails with CREDENTIALS_REJECTED naming the user and database', async () => {
    await fault(
      () => writeFile(envFile, envText('not-the-password'), { mode: 0o600 }),
      (out) => assertFailed(out, 'CREDENTIALS_REJECTED', ['credentials', host.user, host.database]),
    );
  });

  it('.env.production replaced by a directory fails with CREDENTIALS_FILE_UNREADABLE naming the file', async () => {
    await fault(
      async () => {
        await rm(envFile);
        await mkdir(envFile);
      },
      (out) => assertFailed(out, 'CREDENTIALS_FILE_UNREADABLE', [envFile]),
    );
  });

  it('a missing .env.production fails with CREDENTIALS_FILE_UNREADABLE naming the file', async () => {
    await fault(
      () => rm(envFile),
      (out) => assertFailed(out, 'CREDENTIALS_FILE_UNREADABLE', [envFile, 'does not exist']),
    );
  });

  it('a malformed .env.production fails with ENV_FILE_INVALID naming the line, never the value', async () => {
    const secret = 'unterminated-s3cret-value';
    await fault(
      () => writeFile(envFile, [`LOCAL_DOMAIN=example.test`, `DB_HOST=${host.pg.host}`, `DB_PASS="${secret}`, `DB_USER=${host.user}`, ''].join('\n'), { mode: 0o600 }),
      (out) => {
        assertFailed(out, 'ENV_FILE_INVALID', [envFile, 'line 3', 'DB_PASS'], 2);
        expect(out.stderr + out.stdout).not.toContain(secret);
      },
    );
  });

  it('an env file without the database keys fails with CREDENTIALS_MISSING naming them', async () => {
    await fault(
      () => writeFile(envFile, 'LOCAL_DOMAIN=example.test\nSECRET_KEY_BASE=abc\n', { mode: 0o600 }),
      (out) => assertFailed(out, 'CREDENTIALS_MISSING', [envFile, 'DB_HOST', 'DB_NAME', 'DB_USER', 'DB_PASS']),
    );
  });
});

describe('config faults', () => {
  it('a config with every kind of invalid value exits 2, lists every problem with its path, and touches nothing', async () => {
    const bad = await project(sb, 'bad-config', {
      concurrency: 'lots',
      surprise: true,
      destinations: {
        folder: { use: 'local' },
        bucket: { use: 's3', bucket: 'b', partSizeMB: 1, storageClass: 'CHEAP' },
        nowhere: { use: 'no-such-plugin-anywhere' },
      },
      pipelines: {
        nightly: {
          source: 'bad source!',
          stages: [
            { use: 'credentials', from: 'telepathy', envFile },
            { use: 'pg-dump', jobs: 4, compression: { method: 'rar' }, lockWaitTimeout: 12 },
            { use: 'gpg' },
            { use: 'retention', keepLast: -1, typo: 1 },
          ],
          destinations: ['folder', 'missing-destination'],
        },
      },
    });
    const out = await bad.cli(['run', 'nightly']);
    expect(out.exitCode, out.stderr).toBe(2);
    const text = out.stderr;
    expect(text).toContain('CONFIG_INVALID');
    for (const path of [
      'concurrency',
      'surprise',
      'destinations.folder.path',
      'destinations.bucket.partSizeMB',
      'destinations.bucket.storageClass',
      'destinations.nowhere',
      'pipelines.nightly.source',
      'pipelines.nightly.stages[0].from',
      'pipelines.nightly.stages[1].compression.method',
      'pipelines.nightly.stages[1].lockWaitTimeout',
      'pipelines.nightly.stages[2]',
      'pipelines.nightly.stages[3].keepLast',
      'pipelines.nightly.stages[3]',
      'pipelines.nightly.destinations',
    ]) {
      expect(text, `the problem at ${path} is not listed`).toContain(path);
    }
    expect(await exists(bad.workDir), 'the work dir was created').toBe(false);
    expect(await readdir(sb.tmp)).toEqual([]);
    const validate = await bad.cli(['validate']);
    expect(validate.exitCode).toBe(2);
  });
});

describe('two runs at once', () => {
  it('the second run exits 75 naming the holder; the first completes', async () => {
    // Hold the first run inside pg_dump: another session keeps a lock it waits for.
    const stdin = new PassThrough();
    const locker = exec(join(host.pg.bindir, 'psql'), ['-X', '-q', '-h', host.pg.socketDir, '-p', String(host.pg.port), '-U', host.pg.superuser, '-d', host.database], { stdin, env: { PGPASSFILE: join(sb.root, 'none') } });
    stdin.write('BEGIN; LOCK TABLE accounts IN ACCESS EXCLUSIVE MODE; SELECT 1;\n');
    try {
      await waitFor('the table lock', async () => (await host.pg.psql(`SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'accounts' AND l.mode = 'AccessExclusiveLock' AND l.granted`, host.database)).length > 0);
      const before = await listSets(sb, p);
      const seen = await recordedPids(sb);
      const first = p.run();
      // The first run is inside pg_dump, so it holds the pipeline's lock.
      await waitFor('the first run to start pg_dump', async () => (await shimRecords(sb)).some((r) => r.tool === 'pg_dump' && !seen.has(r.pid) && !r.argv.includes('--version')));
      const second = await p.run();
      assertFailed(second, 'LOCKED', [String(first.pid), join(p.workDir, '.locks')], 75);
      expect(second.stderr).toMatch(/pid \d+ on \S+/);
      stdin.end('ROLLBACK;\n');
      const done = await first;
      expect(done.exitCode, done.stderr).toBe(0);
      const after = await listSets(sb, p);
      expect(after.folder!.complete.length).toBe(Math.min(2, before.folder!.complete.length + 1));
      expect(after.folder!.incomplete).toEqual([]);
      await assertCleanedUp(sb, p);
    } finally {
      stdin.end();
      await locker.catch(() => undefined);
    }
  });
});

describe('gpg preflight faults', () => {
  async function gpgProject(name: string, gpgOptions: Record<string, unknown>): Promise<Project> {
    const q = await project(sb, name, {
      destinations: { folder: { use: 'local', path: './backups' } },
      pipelines: {
        nightly: {
          source: 'mastodon',
          stages: [{ use: 'credentials', envFile }, { use: 'pg-dump' }, { use: 'gpg', gnupgHome: gpg.home, ...gpgOptions }],
          destinations: ['folder'],
        },
      },
    });
    sb.setRoots.add(join(q.dir, 'backups'));
    return q;
  }

  /** Fails in preflight: no pg_dump started, no set folder anywhere, lock released. */
  async function preflightFault(q: Project, code: string, names: string[]): Promise<void> {
    const seen = await recordedPids(sb);
    const out = await q.run();
    assertFailed(out, code, ['gpg', 'preflight', ...names]);
    const dumps = (await shimRecords(sb)).filter((r) => !seen.has(r.pid) && r.tool === 'pg_dump' && !r.argv.includes('--version'));
    expect(dumps, 'pg_dump ran before gpg preflight failed').toEqual([]);
    expect((await readdir(q.workDir)).filter((e) => e !== '.locks'), 'a set folder was created').toEqual([]);
    expect(await exists(join(q.dir, 'backups'))).toBe(false);
    await assertCleanedUp(sb, q);
  }

  it('an unknown recipient fails with GPG_RECIPIENT_UNKNOWN before any dump', async () => {
    const unknown = 'F'.repeat(40);
    const q = await gpgProject('gpg-unknown', { recipients: [unknown] });
    await preflightFault(q, 'GPG_RECIPIENT_UNKNOWN', [unknown]);
  });

  it('an expired recipient fails with GPG_RECIPIENT_EXPIRED before any dump', async () => {
    const expired = await gpg.createExpiredKey();
    const q = await gpgProject('gpg-expired', { recipients: [expired.fingerprint] });
    await preflightFault(q, 'GPG_RECIPIENT_EXPIRED', [expired.fingerprint]);
  });

  it('a missing passphrase file fails with GPG_PASSPHRASE_FILE_MISSING before any dump; with it, the run succeeds', async () => {
    const file = join(sb.root, 'passphrase.txt');
    const q = await gpgProject('gpg-passphrase', { recipients: [gpg.fingerprint], passphraseFile: file });
    await preflightFault(q, 'GPG_PASSPHRASE_FILE_MISSING', [file]);
    await writeFile(file, passphrase.passphrase + '\n', { mode: 0o600 });
    const next = await q.run();
    expect(next.exitCode, next.stderr).toBe(0);
    const sets = await listSets(sb, q);
    expect(sets.folder!.complete).toHaveLength(1);
    await assertCleanedUp(sb, q);
  });
});
