import { chmod, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exec, type Artifact, type ProgressEvent } from '@backup-pipeline/core';
import { generateMastodonData, loadMastodonSchema, mastodonEnvText, runStages, startPostgres, tableChecksums, tableRowCounts, type PostgresServer } from '@backup-pipeline/testing';
import { decompressToFile } from './compression.js';

const PASSWORD = `p:a\\ss 'w"o#rd x`;

describe('pg-dump against a real server', () => {
  let pg: PostgresServer;
  let dir: string;
  let envFile: string;
  let sourceSums: Record<string, string>;
  let sourceCounts: Record<string, number>;
  let restored = 0;

  beforeAll(async () => {
    pg = await startPostgres();
    await pg.createRole('mastodon', PASSWORD);
    await pg.createDatabase('mastodon_test', { owner: 'mastodon' });
    await loadMastodonSchema(pg, 'mastodon_test', { owner: 'mastodon' });
    await generateMastodonData(pg, 'mastodon_test', { scale: 'tiny', owner: 'mastodon' });
    sourceSums = await tableChecksums(pg, 'mastodon_test');
    sourceCounts = await tableRowCounts(pg, 'mastodon_test');
    dir = await mkdtemp(join(tmpdir(), 'bp-dump-'));
    envFile = join(dir, '.env.production');
    await writeFile(envFile, mastodonEnvText({ host: '127.0.0.1', port: pg.port, database: 'mastodon_test', user: 'mastodon', password: PASSWORD }), { mode: 0o600 });
  });
  afterAll(async () => {
    await pg?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const credentials = () => ({ use: 'credentials', envFile });
  const artifactOf = (out: Awaited<ReturnType<typeof runStages>>, kind = 'database') => {
    const a = out.result!.manifest!.artifacts.find((x) => x.kind === kind)! as unknown as Artifact;
    return { ...a, path: join(out.workDir, out.result!.summary.setId, a.name) };
  };
  /** Restores with pg_restore / psql as the superuser over the private socket. */
  const restore = async (artifact: Artifact, jobs = 1): Promise<string> => {
    const db = `restored_${++restored}`;
    await pg.createDatabase(db);
    const conn = ['-h', pg.socketDir, '-p', String(pg.port), '-U', pg.superuser, '-d', db];
    const env = { PGPASSFILE: join(dir, 'none') };
    const plain = join(dir, `plain-${restored}`);
    await decompressToFile(artifact, plain, { exec: (f, a, o) => exec(f, a, o), signal: new AbortController().signal });
    if (artifact.format === 'pg-plain') {
      await exec(join(pg.bindir, 'psql'), ['-X', '-q', '-v', 'ON_ERROR_STOP=1', ...conn, '-f', plain], { env });
    } else if (artifact.format === 'pg-directory-tar') {
      const d = join(dir, `dir-${restored}`);
      await mkdir(d);
      await exec('tar', ['-C', d, '-xf', plain]);
      await exec(join(pg.bindir, 'pg_restore'), ['--no-owner', '--exit-on-error', `--jobs=${jobs}`, ...conn, d], { env });
    } else {
      await exec(join(pg.bindir, 'pg_restore'), ['--no-owner', '--exit-on-error', `--jobs=${jobs}`, ...conn, plain], { env });
    }
    return db;
  };

  it('dumps with the hostile password from .env.production (custom + zstd) and restores byte for byte', async () => {
    const progress: ProgressEvent[] = [];
    const out = await runStages({ stages: [credentials(), { use: 'pg-dump' }], observe: (hooks) => hooks.progress.tap('test', (e) => void progress.push(e)) });
    expect(out.error).toBeUndefined();
    const a = artifactOf(out);
    expect(a).toMatchObject({ name: 'mastodon_test.dump.zst', kind: 'database', format: 'pg-custom', compression: 'zstd' });
    // Progress: bytes written, then every table done of the total.
    expect(progress.some((e) => e.task === 'dump' && (e.bytes ?? 0) > 0)).toBe(true);
    const tables = Object.keys(sourceCounts).length;
    expect(progress.filter((e) => e.done !== undefined).at(-1)).toMatchObject({ plugin: 'pg-dump', task: 'dump', done: tables, total: tables });
    expect(a.meta.rowCounts).toEqual(sourceCounts);
    expect(a.meta.database).toBe('mastodon_test');
    expect(out.result!.manifest!.tools.pg_dump).toMatch(/^\d+/);
    expect(out.result!.manifest!.facts.serverVersion).toMatch(/^\d+/);
    expect(((await stat(a.path)).mode & 0o777).toString(8)).toBe('600');
    const head = (await readFile(a.path)).subarray(0, 4);
    expect(head.equals(Buffer.from([0x28, 0xb5, 0x2f, 0xfd]))).toBe(true); // zstd magic
    const all = JSON.stringify(out.result) + out.logs.join('\n');
    expect(all).not.toContain(PASSWORD);
    const db = await restore(a);
    expect(await tableChecksums(pg, db)).toEqual(sourceSums);
  });

  it('dumps in parallel into a directory (jobs 2, lz4) shipped as one tar', async () => {
    const out = await runStages({ stages: [credentials(), { use: 'pg-dump', format: 'directory', jobs: 2, compression: { method: 'lz4' } }] });
    expect(out.error).toBeUndefined();
    const a = artifactOf(out);
    expect(a).toMatchObject({ name: 'mastodon_test.dir.tar.lz4', format: 'pg-directory-tar', compression: 'lz4' });
    const db = await restore(a, 2);
    expect(await tableChecksums(pg, db)).toEqual(sourceSums);
  });

  it('plain SQL with pg_dump gzip, and globals without role passwords for a non-superuser', async () => {
    const out = await runStages({ stages: [credentials(), { use: 'pg-dump', format: 'plain', compression: { method: 'gzip', level: 1 }, globals: true }] });
    expect(out.error).toBeUndefined();
    const a = artifactOf(out);
    expect(a).toMatchObject({ name: 'mastodon_test.sql.gz', format: 'pg-plain', compression: 'gzip' });
    const db = await restore(a);
    expect(await tableChecksums(pg, db)).toEqual(sourceSums);
    const g = artifactOf(out, 'globals');
    expect(g.name).toBe('mastodon_test.globals.sql.gz');
    const gplain = join(dir, 'globals.sql');
    await decompressToFile(g, gplain, { exec: (f, ar, o) => exec(f, ar, o), signal: new AbortController().signal });
    const sql = await readFile(gplain, 'utf8');
    expect(sql).toContain('CREATE ROLE mastodon');
    expect(sql).not.toMatch(/SCRAM-SHA-256\$/);
  });

  it('custom format with pg_dump\'s own gzip stays readable by pg_restore as is', async () => {
    const out = await runStages({ stages: [credentials(), { use: 'pg-dump', compression: { method: 'gzip' }, countRows: false }] });
    expect(out.error).toBeUndefined();
    const a = artifactOf(out);
    expect(a).toMatchObject({ name: 'mastodon_test.dump', compression: 'gzip' });
    expect(a.meta.compressedBy).toBe('pg_dump');
    expect(a.meta.rowCounts).toBeUndefined();
    const list = await exec(join(pg.bindir, 'pg_restore'), ['--list', a.path]);
    expect(list.stdout).toContain('TABLE DATA public accounts');
  });

  it('rejects jobs with the custom format at config validation, naming the path and format: directory', async () => {
    const run = runStages({ stages: [credentials(), { use: 'pg-dump', jobs: 4 }] });
    await expect(run).rejects.toMatchObject({ code: 'CONFIG_INVALID' });
    await expect(run).rejects.toThrow(/pipelines\.test\.stages\[1\]\.jobs: .*format: directory/);
  });

  const fakeBin = async (name: string, script: string) => {
    const d = join(dir, name);
    await mkdir(d, { recursive: true });
    await writeFile(join(d, 'pg_dump'), `#!/bin/sh\n${script}\n`);
    await chmod(join(d, 'pg_dump'), 0o755);
    return d;
  };

  it('PG_VERSION_MISMATCH when pg_dump is older than the server', async () => {
    const binDir = await fakeBin('old', 'echo "pg_dump (PostgreSQL) 9.6.24"');
    const out = await runStages({ stages: [credentials(), { use: 'pg-dump', binDir }], dryRun: true });
    expect(out.error).toMatchObject({ code: 'PG_VERSION_MISMATCH', plugin: 'pg-dump', hook: 'preflight' });
    expect(out.error!.message).toContain('9.6');
    expect(out.error!.hint).toMatch(/postgresql-client-\d+/);
  });

  it('DUMP_EMPTY when pg_dump exits 0 without output; a failing pg_dump behind zstd fails the run', async () => {
    const empty = await fakeBin('empty', `[ "$1" = --version ] && echo "pg_dump (PostgreSQL) ${pg.major}.0"; exit 0`);
    const out = await runStages({ stages: [credentials(), { use: 'pg-dump', binDir: empty }] });
    expect(out.error).toMatchObject({ code: 'DUMP_EMPTY', plugin: 'pg-dump', hook: 'produce' });
    const failing = await fakeBin('failing', `[ "$1" = --version ] && { echo "pg_dump (PostgreSQL) ${pg.major}.0"; exit 0; }; printf 'PGDMP partial'; echo "pg_dump: error: disk on fire" >&2; exit 1`);
    const out2 = await runStages({ stages: [credentials(), { use: 'pg-dump', binDir: failing }] });
    expect(out2.error).toMatchObject({ code: 'EXEC_FAILED', plugin: 'pg-dump' });
    expect(out2.error!.message).toContain('disk on fire');
    expect(out2.result).toBeUndefined();
  });

  it('DUMP_INVALID when a custom dump lacks the PGDMP header; EXEC_NOT_FOUND for a binDir without pg_dump', async () => {
    const bogus = await fakeBin('bogus', `[ "$1" = --version ] && { echo "pg_dump (PostgreSQL) ${pg.major}.0"; exit 0; }; echo "this is not an archive"; exit 0`);
    const out = await runStages({ stages: [credentials(), { use: 'pg-dump', binDir: bogus }] });
    expect(out.error).toMatchObject({ code: 'DUMP_INVALID', plugin: 'pg-dump', hook: 'produce' });
    const emptyDir = join(dir, 'no-binaries');
    await mkdir(emptyDir, { recursive: true });
    const out2 = await runStages({ stages: [credentials(), { use: 'pg-dump', binDir: emptyDir }], dryRun: true });
    expect(out2.error).toMatchObject({ code: 'EXEC_NOT_FOUND', plugin: 'pg-dump', hook: 'preflight' });
    expect(out2.error!.message).toContain(emptyDir);
  });

  it('gives up after lockWaitTimeout instead of queueing behind a lock', async () => {
    const stdin = new PassThrough();
    const locker = exec(join(pg.bindir, 'psql'), ['-X', '-q', '-h', pg.socketDir, '-p', String(pg.port), '-U', pg.superuser, '-d', 'mastodon_test'], { stdin, env: { PGPASSFILE: join(dir, 'none') } });
    stdin.write('BEGIN; LOCK TABLE statuses IN ACCESS EXCLUSIVE MODE; SELECT 1;\n');
    try {
      // Wait until the lock is really granted (not a guessed delay).
      for (let i = 0; ; i++) {
        const rows = await pg.psql(`SELECT 1 FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = 'statuses' AND l.mode = 'AccessExclusiveLock' AND l.granted`, 'mastodon_test');
        if (rows.length > 0) break;
        if (i > 750) throw new Error('the lock on statuses was not granted within 15 s');
        await new Promise((r) => setTimeout(r, 20));
      }
      const started = Date.now();
      const out = await runStages({ stages: [credentials(), { use: 'pg-dump', lockWaitTimeout: '1s', countRows: false }] });
      expect(out.error?.code, out.error?.message + JSON.stringify(out.error?.details)).toBe('DUMP_LOCK_TIMEOUT');
      expect(out.error?.message).toMatch(/waiting 1s for a lock on .*statuses/);
      expect(out.error?.hint).toMatch(/db:migrate/);
      expect(Date.now() - started).toBeLessThan(15_000);
    } finally {
      stdin.end('ROLLBACK;\n');
      await locker.catch(() => undefined);
    }
  });

  it('dry-run plans the exact, masked pg_dump command', async () => {
    const out = await runStages({ stages: [credentials(), { use: 'pg-dump' }], dryRun: true });
    expect(out.error).toBeUndefined();
    const step = out.result!.plan!.steps.find((s) => s.plugin === 'pg-dump')!;
    expect(step.command).toMatch(/pg_dump --format=c --no-password --lock-wait-timeout=5min --compress=0 --snapshot=SNAPSHOT \| zstd -q -c -T0 -3 > .*mastodon_test\.dump\.zst$/);
    expect(JSON.stringify(out.result)).not.toContain(PASSWORD);
  });
});
