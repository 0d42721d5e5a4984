/**
 * One failure per stage, through the CLI: each exits 1 with the stage's own error code, tagged
 * with the plugin and hook that raised it, and leaves no set behind.
 */
import { chmod, mkdir, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createGpgHome, type GpgHome } from '@backup-pipeline/testing';
import { mastodonHost, pipeline, writeConfig, type MastodonHost } from './support.js';

let host: MastodonHost;
let gpg: GpgHome;

beforeAll(async () => {
  [host, gpg] = await Promise.all([mastodonHost(), createGpgHome()]);
  // A pg_dump that claims to be version 9.6, for the version check.
  await mkdir(join(host.dir, 'oldbin'));
  await writeFile(join(host.dir, 'oldbin', 'pg_dump'), '#!/bin/sh\necho "pg_dump (PostgreSQL) 9.6.24"\n');
  await chmod(join(host.dir, 'oldbin', 'pg_dump'), 0o755);
  await writeFile(join(host.dir, 'wrong.env'), `DB_HOST=${host.pg.host}\nDB_PORT=${host.pg.port}\nDB_NAME=${host.database}\nDB_USER=${host.user}\nDB_PASS=not-the-password\n`, { mode: 0o600 });
  await writeFile(join(host.dir, 'Rakefile'), 'task :backup do\n  abort "no backup task here"\nend\n');
  await writeFile(join(host.dir, 'file-not-dir'), 'x');
});
afterAll(async () => {
  await Promise.allSettled([host?.pg.stop(), gpg?.cleanup()]);
});

const credentials = () => ({ use: 'credentials', envFile: host.envFile });

const cases: Array<[string, () => Array<Record<string, unknown>>, string, (() => Record<string, unknown>)?]> = [
  ['credentials', () => [{ use: 'credentials', envFile: join(host.dir, 'wrong.env') }, { use: 'pg-dump' }], '[credentials → preflight] CREDENTIALS_REJECTED'],
  ['pg-dump', () => [credentials(), { use: 'pg-dump', binDir: join(host.dir, 'oldbin') }], '[pg-dump → preflight] PG_VERSION_MISMATCH'],
  ['verify', () => [credentials(), { use: 'pg-dump' }, { use: 'verify', expectTables: ['accounts', 'no_such_table'] }], '[verify → verifyStream] VERIFY_FAILED'], // checked on pg-dump's stream (one pass)
  ['gpg', () => [credentials(), { use: 'pg-dump' }, { use: 'gpg', gnupgHome: gpg.home, recipients: ['nobody@example.invalid'] }], '[gpg → preflight] GPG_RECIPIENT_UNKNOWN'],
  ['files', () => [{ use: 'files', envFile: host.envFile }], '[files → transform] FILES_UNENCRYPTED_SECRETS'],
  ['rake', () => [{ use: 'rake', command: ['rake'], task: 'backup', appDir: host.dir, outputs: ['*.dump'] }], '[rake → produce] EXEC_FAILED'],
  ['command', () => [{ use: 'command', command: ['true'], outputs: ['*.dump'] }], '[command → produce] COMMAND_NO_OUTPUT'],
  ['retention', () => [credentials(), { use: 'pg-dump' }, { use: 'retention', keepLast: 1, destinations: ['elsewhere'] }], '[retention → preflight] RETENTION_UNKNOWN_DESTINATION'],
  ['vacuum', () => [{ use: 'vacuum' }], '[vacuum → produce] VACUUM_NO_SOURCE'],
  ['local', () => [credentials(), { use: 'pg-dump' }], '[local → preflight] DESTINATION_FAILED', () => ({ broken: { use: 'local', path: join(host.dir, 'file-not-dir') } })],
  ['rsync', () => [credentials(), { use: 'pg-dump' }], '[rsync → preflight] DESTINATION_FAILED', () => ({ broken: { use: 'rsync', target: 'nobody@127.0.0.1:/tmp/x', port: 1, connectTimeoutSeconds: 2 } })],
];

describe('each stage fails with its own error through the CLI', () => {
  it.each(cases)('%s', async (name, stages, expected, makeDestinations) => {
    const destinations = makeDestinations?.();
    const dir = join(host.dir, `case-${name}`);
    await mkdir(dir, { recursive: true });
    await writeConfig(dir, {
      workDir: './work',
      destinations: destinations ?? {},
      pipelines: { nightly: { stages: stages(), destinations: Object.keys(destinations ?? {}) } },
    });
    // A private TMPDIR per case, so scratch left behind (a run folder, a password file) is seen.
    const tmp = join(dir, 'tmp');
    await mkdir(tmp, { mode: 0o700 });
    const result = await pipeline(['run'], dir, { TMPDIR: tmp });
    expect(result.exitCode, result.stderr).toBe(1);
    expect(result.stderr).toContain(expected);
    expect(result.stderr).toMatch(/\nhint {2}\S/);
    const sets = (await readdir(join(dir, 'work')).catch(() => [])).filter((n) => !n.startsWith('.'));
    expect(sets).toEqual([]);
    // Nothing left anywhere: not in TMPDIR, no lock, no other file in the project (destinations included).
    expect(await readdir(tmp), 'scratch left in TMPDIR').toEqual([]);
    expect(await readdir(join(dir, 'work', '.locks')).catch(() => []), 'the lock was not released').toEqual([]);
    const files = (await readdir(dir, { recursive: true, withFileTypes: true })).filter((e) => !e.isDirectory()).map((e) => join(e.parentPath, e.name).slice(dir.length + 1));
    expect(files, 'files left in the project').toEqual(['pipeline.config.json']);
  });
});
