/**
 * pg-dump's `restoreStream` tap (restoreFromStream) against a real server: from a stream, `--jobs 1`
 * into a disposable target goes straight into pg_restore (its scratch folder does not even exist,
 * so no file can have been written), otherwise through one decompressed file; a failed check
 * (`input.checked`) is the error reported, and a target that is not disposable is never touched
 * before the check passed.
 */
import { createReadStream } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger, exec, PipelineError, SecretRegistry, type Artifact, type PgSource, type RestoreInput } from '@backup-pipeline/core';
import { generateMastodonData, loadMastodonSchema, mastodonEnvText, runStages, startPostgres, tableChecksums, type PostgresServer } from '@backup-pipeline/testing';
import { restoreFromStream } from './restore.js';

describe('restoreFromStream (the restoreStream tap)', () => {
  let pg: PostgresServer;
  let dir: string;
  let dump: Artifact;
  let source: Record<string, string>;
  let n = 0;

  beforeAll(async () => {
    pg = await startPostgres();
    await pg.createRole('mastodon', 'secret pw');
    await pg.createDatabase('mastodon_test', { owner: 'mastodon' });
    await loadMastodonSchema(pg, 'mastodon_test', { owner: 'mastodon' });
    await generateMastodonData(pg, 'mastodon_test', { scale: 'tiny', owner: 'mastodon' });
    source = await tableChecksums(pg, 'mastodon_test');
    dir = await mkdtemp(join(tmpdir(), 'bp-restore-stream-'));
    const envFile = join(dir, '.env.production');
    await writeFile(envFile, mastodonEnvText({ host: '127.0.0.1', port: pg.port, database: 'mastodon_test', user: 'mastodon', password: 'secret pw' }), { mode: 0o600 });
    const out = await runStages({ dir, stages: [{ use: 'credentials', envFile }, { use: 'pg-dump' }] });
    const entry = out.result!.manifest!.artifacts.find((a) => a.kind === 'database')! as unknown as Artifact;
    dump = { ...entry, path: join(out.workDir, out.result!.summary.setId, entry.name) };
  });
  afterAll(async () => {
    await pg?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const ctxFor = async (tmpDir: string) => {
    const secrets = new SecretRegistry();
    const signal = new AbortController().signal;
    const passFile = join(dir, 'pgpass');
    await writeFile(passFile, `*:*:*:mastodon:secret pw\n`, { mode: 0o600 });
    const pgSource: PgSource = pg.source('postgres', 'mastodon', passFile);
    return {
      exec: ((file, args, options) => exec(file, args, { signal, secrets, ...options })) as typeof exec,
      signal,
      secrets,
      tmpDir,
      defer: () => {},
      log: await createLogger({ secrets, level: 'silent' }),
      progress: () => {},
      pg: pgSource,
    };
  };
  /** The dump's stored bytes as the core hands them over, with a check that passes or fails. */
  const inputOf = (checked: Promise<void>, targetDisposable: boolean): RestoreInput => {
    checked.catch(() => {});
    return { stream: createReadStream(dump.path), checked, targetDisposable };
  };
  const target = async (jobs: number) => {
    const database = `rs_${++n}`;
    await pg.createDatabase(database, { owner: 'mastodon' });
    return { database, jobs };
  };
  const tables = async (database: string) => Number((await pg.psql(`SELECT count(*) FROM pg_tables WHERE schemaname = 'public'`, database))[0]![0]);
  const mismatch = () => new PipelineError('CHECKSUM_MISMATCH', 'the stored copy does not match its manifest', { details: { storedCopy: true } });

  it('--jobs 1 into a disposable target: straight into pg_restore, no file (its scratch folder does not exist)', async () => {
    const t = await target(1);
    const report = await restoreFromStream({ ...dump, path: '' }, t, inputOf(Promise.resolve(), true), await ctxFor(join(dir, 'no-such-folder')));
    expect(report).toMatchObject({ into: t.database, mismatches: [] });
    expect(await tableChecksums(pg, t.database)).toEqual(source);
  });

  it('--jobs 2: decompressed once into the file pg_restore -j needs, restored once checked', async () => {
    const scratch = await mkdtemp(join(dir, 'tmp-'));
    const t = await target(2);
    const report = await restoreFromStream({ ...dump, path: '' }, t, inputOf(Promise.resolve(), true), await ctxFor(scratch));
    expect(report.mismatches).toEqual([]);
    expect(await tableChecksums(pg, t.database)).toEqual(source);
  });

  it('a target that is not disposable is not touched when the check fails; the check\'s error is the one reported', async () => {
    const scratch = await mkdtemp(join(dir, 'tmp-'));
    for (const jobs of [1, 2]) {
      const t = await target(jobs);
      const error = await restoreFromStream({ ...dump, path: '' }, t, inputOf(Promise.reject(mismatch()), false), await ctxFor(scratch)).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: 'CHECKSUM_MISMATCH' });
      expect(await tables(t.database)).toBe(0);
    }
  });

  it('straight into pg_restore: a check that fails at the end wins over what pg_restore made of the bytes', async () => {
    const t = await target(1);
    const error = await restoreFromStream({ ...dump, path: '' }, t, inputOf(Promise.reject(mismatch()), true), await ctxFor(join(dir, 'no-such-folder'))).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'CHECKSUM_MISMATCH' });
  });
});
