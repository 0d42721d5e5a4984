/**
 * The restore test's two places: a throwaway cluster the run starts (the default where the server
 * binaries of the dump's major are installed) and a scratch database on the source server. In the
 * cluster, a role without CREATEDB passes and the server gets no scratch database; in both, the
 * row counts must match the dump's snapshot. A server-mode drill drops the scratch databases a
 * killed run of this host left behind, and leaves another host's alone.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, readlink, rm, writeFile } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { spawn } from 'node:child_process';
import { generateMastodonData, loadMastodonSchema, runStages, startPostgres, tableRowCounts, type PostgresServer } from '@backup-pipeline/testing';
import { drillTarget } from './restore-test.js';

/**
 * The drill cluster's processes still alive: their command line names the drill cluster
 * (`postgres: backup-pipeline-drill: …`) and they run in this run's cluster folder, taken from the
 * run's log (other test files' drills may be running at the same time).
 */
async function drillProcesses(logs: string[]): Promise<number[]> {
  const root = logs.map((l) => /started a throwaway PostgreSQL .* in (\S+)/.exec(l)?.[1]).find(Boolean);
  if (!root) throw new Error(`no cluster folder in the log:\n${logs.join('\n')}`);
  const pids: number[] = [];
  for (const entry of await readdir('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const cmd = await readFile(`/proc/${entry}/cmdline`, 'utf8').catch(() => '');
    const cwd = await readlink(`/proc/${entry}/cwd`).catch(() => '');
    if (cmd.includes('backup-pipeline-drill') && cwd.startsWith(root)) pids.push(Number(entry));
  }
  return pids;
}

describe('where the restore test restores', () => {
  it('auto and scratch-cluster pick the server binaries of the dump\'s major; without them scratch-cluster is refused, auto falls back to the server', async () => {
    const auto = await drillTarget('auto', undefined);
    expect(auto.into).toBe('scratch-cluster');
    await expect(drillTarget('scratch-cluster', 99)).rejects.toMatchObject({ code: 'VERIFY_RESTORE_UNAVAILABLE', message: expect.stringContaining('no PostgreSQL 99 server binaries') });
    await expect(drillTarget('scratch-cluster', 99)).rejects.toMatchObject({ hint: expect.stringContaining('apt-get install postgresql-99') });
    expect(await drillTarget('auto', 99)).toMatchObject({ into: 'server', why: expect.stringContaining('postgresql-99') });
    expect(await drillTarget('server', undefined)).toEqual({ into: 'server', why: 'restoreInto: server' });
  });
});

describe('restore test against a real server', () => {
  let pg: PostgresServer;
  let dir: string;
  let counts: Record<string, number>;
  const total = () => Object.values(counts).reduce((a, b) => a + b, 0);

  beforeAll(async () => {
    pg = await startPostgres();
    await pg.createRole('mastodon', 'mastodon-pw', { createdb: true });
    // The role a careful admin gives the backup: reads everything, creates nothing.
    await pg.createRole('reader', 'reader-pw', { inRoles: ['pg_read_all_data'] });
    await pg.createDatabase('mastodon_test', { owner: 'mastodon' });
    await loadMastodonSchema(pg, 'mastodon_test', { owner: 'mastodon' });
    await generateMastodonData(pg, 'mastodon_test', { scale: 'tiny', owner: 'mastodon' });
    counts = await tableRowCounts(pg, 'mastodon_test');
    dir = await mkdtemp(join(tmpdir(), 'bp-restore-test-'));
    await writeFile(join(dir, 'mastodon.pw'), 'mastodon-pw\n', { mode: 0o600 });
    await writeFile(join(dir, 'reader.pw'), 'reader-pw\n', { mode: 0o600 });
  });
  afterAll(async () => {
    await pg?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const credentials = (user: 'mastodon' | 'reader') => ({ use: 'credentials', from: 'options', host: '127.0.0.1', port: pg.port, database: 'mastodon_test', user, passwordFile: join(dir, `${user}.pw`) });
  const scratchDatabases = async () => (await pg.psql(`SELECT datname FROM pg_database WHERE datname LIKE 'bp\\_verify\\_%' ORDER BY 1`)).map((r) => r[0]);
  // eslint-disable-next-line @typescript-eslint/no-explicit-any -- manifest JSON in assertions
  const verification = (out: Awaited<ReturnType<typeof runStages>>) => out.result!.manifest!.artifacts.find((a) => a.kind === 'database')!.meta.verification as Record<string, any>;

  it.each([
    ['custom, zstd, jobs 2', { compression: { method: 'zstd' } }, 2],
    ['custom, lz4, streamed', { compression: { method: 'lz4' } }, 1],
    ['directory tar', { format: 'directory', jobs: 2 }, 2],
    ['plain SQL', { format: 'plain' }, 1],
  ] as const)('scratch cluster (%s): a role without CREATEDB passes, counts match, nothing is left on the server or on disk', async (_name, dump, jobs) => {
    const out = await runStages({ stages: [credentials('reader'), { use: 'pg-dump', ...dump }, { use: 'verify', restoreTest: true, jobs }] });
    try {
      expect(out.error).toBeUndefined();
      const v = verification(out);
      expect(v.restoreTest).toMatchObject({ into: 'scratch-cluster', database: 'bp_verify', rows: total(), tables: Object.keys(counts).length, jobs });
      expect(Number(String(v.restoreTest.serverVersion).split('.')[0])).toBe(pg.major);
      expect(await scratchDatabases()).toEqual([]);
      expect(existsSync(join(out.workDir, '.runs'))).toBe(false);
      expect(await drillProcesses(out.logs)).toEqual([]);
      expect(out.logs.join('\n')).toContain('into a throwaway PostgreSQL');
      // Started once, in preflight (while the dump is made), and used by the drill.
      expect(out.logs.filter((l) => l.includes('started a throwaway PostgreSQL'))).toHaveLength(1);
    } finally {
      await out.cleanup();
    }
  });

  it('scratch cluster: a count that does not match fails the run (VERIFY_FAILED) and the cluster is gone', async () => {
    // The dump's snapshot says one more account than there is: the restore cannot match it.
    const fixture = join(dir, 'miscount-plugin.mjs');
    const { createRequire } = await import('node:module');
    const { pathToFileURL } = await import('node:url');
    const core = pathToFileURL(createRequire(import.meta.url).resolve('@backup-pipeline/core')).href;
    await writeFile(
      fixture,
      `import { definePlugin, z } from ${JSON.stringify(core)};
export default definePlugin({ name: 'miscount', description: 'test fixture', options: z.object({}).strict(),
  apply(hooks) { hooks.produce.tapPromise('miscount', async (ctx) => { ctx.artifacts.find((a) => a.kind === 'database').meta.rowCounts['public.accounts'] += 1; }); } });
`,
    );
    const out = await runStages({ stages: [credentials('reader'), { use: 'pg-dump' }, { use: fixture }, { use: 'verify', restoreTest: true }] });
    try {
      expect(out.error).toMatchObject({ code: 'VERIFY_FAILED', plugin: 'verify', hook: 'verify' });
      expect(out.error!.message).toMatch(/public\.accounts: \d+ in the dump's snapshot, \d+ restored/);
      expect(await drillProcesses(out.logs)).toEqual([]);
      expect(existsSync(join(out.workDir, '.runs'))).toBe(false);
    } finally {
      await out.cleanup();
    }
  });

  it('restoreInto: server keeps the old way (CREATEDB refused in preflight for the reader; a scratch database for mastodon, dropped)', async () => {
    const refused = await runStages({ stages: [credentials('reader'), { use: 'pg-dump' }, { use: 'verify', restoreTest: true, restoreInto: 'server' }] });
    expect(refused.error).toMatchObject({ code: 'VERIFY_RESTORE_UNAVAILABLE', plugin: 'verify', hook: 'preflight' });
    expect(refused.error!.hint).toContain('ALTER ROLE "reader" CREATEDB');
    await refused.cleanup();
    const out = await runStages({ stages: [credentials('mastodon'), { use: 'pg-dump' }, { use: 'verify', restoreTest: true, restoreInto: 'server' }] });
    try {
      expect(out.error).toBeUndefined();
      expect(verification(out).restoreTest).toMatchObject({ into: 'server', database: expect.stringMatching(/^bp_verify_[0-9a-f]{12}$/), rows: total() });
      expect(await scratchDatabases()).toEqual([]);
    } finally {
      await out.cleanup();
    }
  });

  it('a server-mode drill drops the scratch databases killed runs of this host left, and keeps another host\'s', async () => {
    // A killed run's database: its comment names a process that is gone.
    const gone = spawn('true');
    await new Promise((r) => gone.on('exit', r));
    const comment = (host: string, pid: number) => JSON.stringify({ by: 'backup-pipeline restore test', host, pid, at: '2026-12-01T03:00:00.000Z' }).replace(/'/g, "''");
    await pg.psql(`CREATE DATABASE bp_verify_00000000dead OWNER mastodon`);
    await pg.psql(`COMMENT ON DATABASE bp_verify_00000000dead IS '${comment(hostname(), gone.pid!)}'`);
    // Another host's drill (still running there, as far as anyone here can tell).
    await pg.psql(`CREATE DATABASE bp_verify_00000000beef OWNER mastodon`);
    await pg.psql(`COMMENT ON DATABASE bp_verify_00000000beef IS '${comment('another-host', gone.pid!)}'`);
    // A live drill of this host (this process).
    await pg.psql(`CREATE DATABASE bp_verify_00000000a11e OWNER mastodon`);
    await pg.psql(`COMMENT ON DATABASE bp_verify_00000000a11e IS '${comment(hostname(), process.pid)}'`);
    // Left by an older version (no comment), nobody connected.
    await pg.psql(`CREATE DATABASE bp_verify_000000000001 OWNER mastodon`);
    const out = await runStages({ stages: [credentials('mastodon'), { use: 'pg-dump' }, { use: 'verify', restoreTest: true, restoreInto: 'server' }] });
    try {
      expect(out.error).toBeUndefined();
      expect(await scratchDatabases()).toEqual(['bp_verify_00000000a11e', 'bp_verify_00000000beef']);
      expect(out.logs.join('\n')).toContain('dropped bp_verify_00000000dead');
    } finally {
      await out.cleanup();
      await pg.psql('DROP DATABASE bp_verify_00000000a11e');
      await pg.psql('DROP DATABASE bp_verify_00000000beef');
    }
  });
});
