import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generateMastodonData, loadMastodonSchema, runStages, startPostgres, tableRowCounts, type PostgresServer } from '@backup-pipeline/testing';
import { tableDataEntries } from './verify.js';

const PASSWORD = `v:e\\ri 'f"y# pw`;

describe('tableDataEntries', () => {
  it('reads TABLE DATA lines of pg_restore --list', () => {
    const list = ';\n; Archive created at\n215; 1259 16390 TABLE public accounts mastodon\n3367; 0 16390 TABLE DATA public accounts mastodon\n3368; 0 16400 TABLE DATA public statuses mastodon\n3369; 0 0 SEQUENCE SET public x mastodon\n';
    expect(tableDataEntries(list)).toEqual(['public.accounts', 'public.statuses']);
  });
});

describe('verify against a real server', () => {
  let pg: PostgresServer;
  let dir: string;
  let corrupt: string;
  let counts: Record<string, number>;

  beforeAll(async () => {
    pg = await startPostgres();
    await pg.createRole('mastodon', PASSWORD, { createdb: true });
    await pg.createDatabase('mastodon_test', { owner: 'mastodon' });
    await loadMastodonSchema(pg, 'mastodon_test', { owner: 'mastodon' });
    await generateMastodonData(pg, 'mastodon_test', { scale: 'tiny', owner: 'mastodon' });
    counts = await tableRowCounts(pg, 'mastodon_test');
    dir = await mkdtemp(join(tmpdir(), 'bp-verify-'));
    await writeFile(join(dir, 'pw'), PASSWORD + '\n', { mode: 0o600 });
    // A test-only stage that damages the dump after pg-dump made it (taps produce after it).
    const core = pathToFileURL(createRequire(import.meta.url).resolve('@backup-pipeline/core')).href;
    corrupt = join(dir, 'corrupt-plugin.mjs');
    await writeFile(
      corrupt,
      `import { definePlugin, z } from ${JSON.stringify(core)};
import { truncate, writeFile, stat } from 'node:fs/promises';
import { randomBytes } from 'node:crypto';
export default definePlugin({
  name: 'corrupt', description: 'test fixture',
  options: z.object({ mode: z.enum(['empty', 'truncate', 'garbage', 'counts']) }).strict(),
  apply(hooks, o) {
    hooks.produce.tapPromise('corrupt', async (ctx) => {
      const a = ctx.artifacts.find((x) => x.kind === 'database');
      if (o.mode === 'empty') { await truncate(a.path, 0); a.bytes = 0; }
      if (o.mode === 'truncate') { await truncate(a.path, Math.floor((await stat(a.path)).size * 0.6)); }
      if (o.mode === 'garbage') { await writeFile(a.path, randomBytes(5000)); }
      if (o.mode === 'counts') { a.meta.rowCounts['public.accounts'] += 1; }
    });
  },
});
`,
    );
  });
  afterAll(async () => {
    await pg?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const credentials = () => ({ use: 'credentials', from: 'options', host: '127.0.0.1', port: pg.port, database: 'mastodon_test', user: 'mastodon', passwordFile: join(dir, 'pw') });
  const scratchDatabases = async () => (await pg.psql(`SELECT datname FROM pg_database WHERE datname LIKE 'bp\\_verify\\_%'`)).map((r) => r[0]);
    // eslint-disable-next-line @typescript-eslint/no-explicit-any -- manifest JSON in assertions
  const verification = (out: Awaited<ReturnType<typeof runStages>>) => out.result!.manifest!.artifacts.find((a) => a.kind === 'database')!.meta.verification as Record<string, any>;

  it('lists and reads a good dump, records the verification in the manifest', async () => {
    const out = await runStages({ stages: [credentials(), { use: 'pg-dump' }, { use: 'verify' }] });
    expect(out.error).toBeUndefined();
    const v = verification(out);
    expect(v).toMatchObject({ listed: true, fullRead: true, tableData: Object.keys(counts).length });
    expect(out.result!.manifest!.verified).toBe(true);
  });

  it.each([
    ['custom, zstd, parallel restore from one temp file', { compression: { method: 'zstd' } }, 2],
    ['custom, streamed restore', { compression: { method: 'lz4' } }, 1],
    ['directory tar', { format: 'directory', jobs: 2 }, 2],
    ['plain SQL', { format: 'plain' }, 1],
  ] as const)('restore test into the server (%s) matches the snapshot counts and drops the scratch database', async (_name, dump, jobs) => {
    const out = await runStages({ stages: [credentials(), { use: 'pg-dump', ...dump }, { use: 'verify', restoreTest: true, restoreInto: 'server', jobs }] });
    expect(out.error).toBeUndefined();
    const v = verification(out);
    expect(v.restoreTest.rows).toBe(Object.values(counts).reduce((a, b) => a + b, 0));
    expect(v.restoreTest.tables).toBe(Object.keys(counts).length);
    expect(v.restoreTest.database).toMatch(/^bp_verify_[0-9a-f]+$/);
    expect(await scratchDatabases()).toEqual([]);
  });

  it('fails when the test restore does not match the counts, and still drops the scratch database', async () => {
    const out = await runStages({ stages: [credentials(), { use: 'pg-dump' }, { use: corrupt, mode: 'counts' }, { use: 'verify', restoreTest: true, restoreInto: 'server' }] });
    expect(out.error).toMatchObject({ code: 'VERIFY_FAILED', plugin: 'verify', hook: 'verify' });
    expect(out.error!.message).toMatch(/mastodon_test\.dump\.zst: .*public\.accounts: \d+ in the dump's snapshot, \d+ restored/);
    expect(out.result).toBeUndefined();
    expect(await scratchDatabases()).toEqual([]);
  });

  it.each([
    ['an empty file', 'empty', {}, /mastodon_test\.dump\.zst: it is empty/],
    ['a truncated zstd stream', 'truncate', {}, /truncated or corrupt/],
    ['a truncated uncompressed archive', 'truncate', { compression: { method: 'none' } }, /mastodon_test\.dump: .*(truncated|not a readable)/],
    ['garbage instead of an archive', 'garbage', { compression: { method: 'none' } }, /not a readable PostgreSQL archive/],
    ['garbage instead of zstd', 'garbage', {}, /truncated or corrupt/],
  ] as const)('VERIFY_FAILED for %s', async (_name, mode, dump, message) => {
    const out = await runStages({ stages: [credentials(), { use: 'pg-dump', ...dump }, { use: corrupt, mode }, { use: 'verify' }] });
    expect(out.error).toMatchObject({ code: 'VERIFY_FAILED', plugin: 'verify', hook: 'verify' });
    expect(out.error!.message).toMatch(message);
    expect(out.result).toBeUndefined();
  });

  it('VERIFY_FAILED when expected tables are missing; expectTables: [] disables the check', async () => {
    const out = await runStages({ stages: [credentials(), { use: 'pg-dump', tables: ['public.settings'] }, { use: 'verify' }] });
    expect(out.error?.code).toBe('VERIFY_FAILED');
    expect(out.error!.message).toContain('expected tables are missing from the dump: accounts, users, statuses, follows');
    const ok = await runStages({ stages: [credentials(), { use: 'pg-dump', tables: ['public.settings'] }, { use: 'verify', expectTables: [], restoreTest: true }] });
    expect(ok.error).toBeUndefined();
  });

  it('VERIFY_RESTORE_UNAVAILABLE in preflight when the user cannot create the scratch database (restoreInto: server)', async () => {
    await pg.createRole('reader', 'reader-pw', { inRoles: ['pg_read_all_data'] });
    await writeFile(join(dir, 'reader.pw'), 'reader-pw', { mode: 0o600 });
    const stage = { ...credentials(), user: 'reader', passwordFile: join(dir, 'reader.pw') };
    const out = await runStages({ stages: [stage, { use: 'pg-dump' }, { use: 'verify', restoreTest: true, restoreInto: 'server' }] });
    expect(out.error).toMatchObject({ code: 'VERIFY_RESTORE_UNAVAILABLE', plugin: 'verify', hook: 'preflight' });
    expect(out.error!.hint).toContain('ALTER ROLE "reader" CREATEDB');
  });

  it('VERIFY_FAILED when the archive holds no table data', async () => {
    const out = await runStages({ stages: [credentials(), { use: 'pg-dump', excludeTables: ['*'] }, { use: 'verify', expectTables: [] }] });
    expect(out.error?.code).toBe('VERIFY_FAILED');
    expect(out.error!.message).toContain('no TABLE DATA');
  });
});
