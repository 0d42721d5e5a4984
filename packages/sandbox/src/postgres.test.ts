import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { psql as corePsql, type PgSource } from '@backup-pipeline/core';
import { startPostgres, type PostgresServer } from './postgres.js';
import { generateMastodonData, hostileStrings, loadMastodonSchema, MASTODON_TABLES, tableChecksums, tableRowCounts } from './mastodon-schema.js';

const HOSTILE_PASSWORD = `p:a\\ss 'w"o#rd $x`;

describe('startPostgres', () => {
  let pg: PostgresServer;
  beforeAll(async () => {
    pg = await startPostgres();
    await pg.createDatabase('mastodon_test');
    await pg.createRole('mastodon', HOSTILE_PASSWORD, { ownerOf: ['mastodon_test'] });
  });
  afterAll(async () => pg?.stop());

  it('listens on 127.0.0.1 with a known version', async () => {
    expect(pg.host).toBe('127.0.0.1');
    expect(pg.port).toBeGreaterThan(0);
    expect(pg.major).toBeGreaterThanOrEqual(14);
    const rows = await pg.psql(`SHOW listen_addresses; SHOW password_encryption;`);
    expect(rows).toEqual([['127.0.0.1'], ['scram-sha-256']]);
  });

  it('authenticates a hostile password over TCP with a pgpass file', async () => {
    const passFile = await pg.writePassFile('mastodon', HOSTILE_PASSWORD);
    const source: PgSource = pg.source('mastodon_test', 'mastodon', passFile);
    const rows = await corePsql(source, `SELECT current_user, inet_server_addr()::text, current_setting('ssl')`);
    expect(rows[0]?.[0]).toBe('mastodon');
    expect(rows[0]?.[1]).toMatch(/^127\.0\.0\.1/);
  });

  it('rejects a wrong password', async () => {
    const passFile = await pg.writePassFile('mastodon', 'wrong' + HOSTILE_PASSWORD);
    await expect(corePsql(pg.source('mastodon_test', 'mastodon', passFile), 'SELECT 1')).rejects.toThrow(/password authentication failed/);
  });

  it('loads the Mastodon schema and data with hostile text, and checksums it', async () => {
    const started = Date.now();
    await loadMastodonSchema(pg, 'mastodon_test');
    await generateMastodonData(pg, 'mastodon_test', { scale: 'tiny' });
    expect(Date.now() - started).toBeLessThan(5_000);
    const counts = await tableRowCounts(pg, 'mastodon_test');
    for (const t of MASTODON_TABLES) expect(counts[`public.${t}`], t).toBeGreaterThan(0);
    expect(counts['public.accounts']).toBe(50 + hostileStrings().length);
    const idx = await pg.psql(`SELECT indexdef FROM pg_indexes WHERE indexname = 'index_accounts_on_username_and_domain_lower'`, 'mastodon_test');
    expect(idx[0]?.[0]).toMatch(/UNIQUE/);
    // The hostile strings went in byte for byte.
    const long = await pg.psql(`SELECT length(text), md5(text) FROM statuses WHERE text LIKE '0: %' ORDER BY id LIMIT 1`, 'mastodon_test');
    expect(Number(long[0]?.[0])).toBeGreaterThan(50_000);
    const sums1 = await tableChecksums(pg, 'mastodon_test');
    expect(Object.keys(sums1)).toHaveLength(MASTODON_TABLES.length);
    await pg.psql(`UPDATE settings SET value = value || 'x' WHERE var = 'hostile_0'`, 'mastodon_test');
    const sums2 = await tableChecksums(pg, 'mastodon_test');
    expect(sums2['public.settings']).not.toBe(sums1['public.settings']);
    expect(sums2['public.accounts']).toBe(sums1['public.accounts']);
  });

  it('halts and restarts the server', async () => {
    await pg.halt();
    expect(pg.running).toBe(false);
    await expect(pg.psql('SELECT 1')).rejects.toThrow();
    await pg.restart();
    expect(await pg.psql('SELECT 1')).toEqual([['1']]);
  });
});
