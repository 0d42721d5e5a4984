import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { generateMastodonData, loadMastodonSchema, runStages, startPostgres, type PostgresServer } from '@backup-pipeline/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { lockTimeoutStatement, vacuumStatement } from './index.js';

const PASSWORD = `va"cu um's#pw`;
let pg: PostgresServer;
let passwordFile: string;

beforeAll(async () => {
  pg = await startPostgres();
  await pg.createRole('mastodon', PASSWORD);
  await pg.createDatabase('mastodon_test', { owner: 'mastodon' });
  await loadMastodonSchema(pg, 'mastodon_test', { owner: 'mastodon' });
  await generateMastodonData(pg, 'mastodon_test', { scale: 'tiny', owner: 'mastodon' });
  passwordFile = join(pg.socketDir, '..', 'vacuum-password');
  await writeFile(passwordFile, PASSWORD, { mode: 0o600 });
});
afterAll(async () => {
  await pg?.stop();
});

const credentials = () => ({ use: 'credentials', from: 'options', host: pg.host, port: pg.port, database: 'mastodon_test', user: 'mastodon', passwordFile, checkPrivileges: false });
const lastVacuum = async (table: string) => (await pg.psql(`SELECT coalesce(last_vacuum::text, ''), coalesce(last_analyze::text, '') FROM pg_stat_user_tables WHERE relname = '${table}'`, 'mastodon_test'))[0];

/** Holds an ACCESS EXCLUSIVE lock on `table` in another session until `release()`. */
async function holdLock(table: string) {
  const tag = `bp_lock_${Math.random().toString(36).slice(2)}`;
  const holder = pg.psql(`BEGIN; LOCK TABLE ${table} IN ACCESS EXCLUSIVE MODE; SELECT pg_sleep(60) AS ${tag}; COMMIT;`, 'mastodon_test').catch(() => undefined);
  for (let i = 0; i < 100; i++) {
    const rows = await pg.psql(`SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation WHERE c.relname = '${table}' AND l.mode = 'AccessExclusiveLock' AND l.granted`, 'mastodon_test');
    if (rows[0]?.[0] === '1') break;
    await new Promise((r) => setTimeout(r, 50));
  }
  return async () => {
    await pg.psql(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE '%${tag}%' AND pid <> pg_backend_pid()`);
    await holder;
  };
}

describe('vacuum against a real PostgreSQL', () => {
  it('vacuums and analyzes, and records VACUUM VERBOSE in vacuum-report.txt', async () => {
    const out = await runStages({ stages: [credentials(), { use: 'vacuum', verbose: true }] });
    expect(out.error).toBeUndefined();
    const [artifact] = out.result!.manifest!.artifacts;
    expect(artifact).toMatchObject({ name: 'vacuum-report.txt', kind: 'report', format: 'text', meta: { database: 'mastodon_test', analyze: true } });
    const report = await readFile(join(out.workDir, out.result!.summary.setId, 'vacuum-report.txt'), 'utf8');
    expect(report).toContain(`sql:      SET lock_timeout = '30s';`);
    expect(report).toContain('sql:      VACUUM (ANALYZE, VERBOSE);');
    expect(report).toMatch(/vacuuming "mastodon_test\.public\.accounts"|vacuuming "public\.accounts"/);
    expect(report).not.toContain(PASSWORD);
    const [vacuumed, analyzed] = (await lastVacuum('accounts'))!;
    expect(vacuumed).not.toBe('');
    expect(analyzed).not.toBe('');
    expect(out.logs.join('\n')).not.toContain(PASSWORD);
    expect(out.logs.join('\n')).not.toContain('VACUUM skipped');
    await out.cleanup();
  });

  it('vacuums only the listed tables', async () => {
    const before = (await lastVacuum('follows'))![0];
    await new Promise((r) => setTimeout(r, 20));
    const out = await runStages({ stages: [credentials(), { use: 'vacuum', tables: ['public.statuses'], analyze: false }] });
    expect(out.error).toBeUndefined();
    expect((await lastVacuum('follows'))![0]).toBe(before);
    const report = await readFile(join(out.workDir, out.result!.summary.setId, 'vacuum-report.txt'), 'utf8');
    expect(report).toContain('sql:      VACUUM "public"."statuses";');
    await out.cleanup();
  });

  it('gives up after lockTimeout behind a held lock (VACUUM_LOCK_TIMEOUT), or skips it with skipLocked', async () => {
    const release = await holdLock('accounts');
    try {
      const started = Date.now();
      const out = await runStages({ stages: [credentials(), { use: 'vacuum', tables: ['accounts'], lockTimeout: '300ms' }] });
      expect(out.error?.code).toBe('VACUUM_LOCK_TIMEOUT');
      expect(out.error?.plugin).toBe('vacuum');
      expect(out.error?.hint).toContain('skipLocked');
      expect(Date.now() - started).toBeLessThan(10_000);
      await out.cleanup();

      const skipped = await runStages({ stages: [credentials(), { use: 'vacuum', tables: ['accounts', 'statuses'], skipLocked: true, lockTimeout: '300ms' }] });
      expect(skipped.error).toBeUndefined();
      const report = await readFile(join(skipped.workDir, skipped.result!.summary.setId, 'vacuum-report.txt'), 'utf8');
      expect(report).toMatch(/skipping vacuum of "accounts" --- lock not available/);
      expect(skipped.logs.join('\n')).toContain('VACUUM skipped 1 table(s)');
      await skipped.cleanup();
    } finally {
      await release();
    }
  });

  it('needs the credentials stage first', async () => {
    const out = await runStages({ stages: [{ use: 'vacuum' }] });
    expect(out.error?.code).toBe('VACUUM_NO_SOURCE');
    await out.cleanup();
  });

  it('builds its statements', () => {
    expect(vacuumStatement({ tables: [], analyze: true, verbose: false, skipLocked: false })).toBe('VACUUM (ANALYZE)');
    expect(vacuumStatement({ tables: ['a', 's.b'], analyze: false, verbose: true, skipLocked: true })).toBe('VACUUM (VERBOSE, SKIP_LOCKED) "a", "s"."b"');
    expect(lockTimeoutStatement('2 min')).toBe("SET lock_timeout = '2min'");
  });

  it('rejects invalid options', async () => {
    await expect(runStages({ stages: [credentials(), { use: 'vacuum', tables: ['x; DROP TABLE y'] }] })).rejects.toThrow(/tables\[0\]/);
    await expect(runStages({ stages: [credentials(), { use: 'vacuum', lockTimeout: "1s'; DROP" }] })).rejects.toThrow(/lockTimeout/);
  });
});
