import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startPostgres, type PostgresServer } from './postgres.js';
import { accountsForScale, generateMastodonData, hostileStrings, loadMastodonSchema, MASTODON_TABLES, tableRowCounts } from './mastodon-schema.js';

describe("generateMastodonData({ text: 'realistic' })", () => {
  let pg: PostgresServer;
  beforeAll(async () => {
    pg = await startPostgres();
    await pg.createRole('mastodon', 'realistic-pw', { login: true });
    await pg.createDatabase('mastodon_real', { owner: 'mastodon' });
    await loadMastodonSchema(pg, 'mastodon_real', { owner: 'mastodon' });
    await generateMastodonData(pg, 'mastodon_real', { scale: 'tiny', owner: 'mastodon', text: 'realistic' });
  }, 120_000);
  afterAll(async () => pg?.stop());

  const one = async (sql: string) => (await pg.psql(sql, 'mastodon_real'))[0]!;

  it('fills every table, with the same accounts as the simple data, owned by the owner', async () => {
    const counts = await tableRowCounts(pg, 'mastodon_real');
    for (const t of MASTODON_TABLES) expect(counts[`public.${t}`], t).toBeGreaterThan(0);
    expect(counts['public.accounts']).toBe(50 + hostileStrings().length);
    expect(counts['public.statuses']).toBe(50 * 20 + hostileStrings().length);
    expect(await one(`SELECT count(*) FROM pg_tables WHERE schemaname = 'public' AND tableowner <> 'mastodon'`)).toEqual(['0']);
    // the session's helpers and scratch tables were temporary
    expect(await one(`SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'public'`)).toEqual(['1']); // timestamp_id
  });

  it('uses snowflake ids, unique URIs and several languages and scripts', async () => {
    const [minId, uniqueUris, withUri, languages] = await one(
      `SELECT min(id) > (1::bigint << 40), count(DISTINCT uri), count(uri), count(DISTINCT language) FROM statuses WHERE language <> 'und' OR language IS NULL`,
    );
    expect(minId).toBe('t');
    expect(uniqueUris).toBe(withUri);
    expect(Number(languages)).toBeGreaterThanOrEqual(2); // a few accounts write most statuses
    const [latin, cyrillic, cjk, arabic] = await one(
      `SELECT count(*) FILTER (WHERE t ~ '[a-z]{3}'), count(*) FILTER (WHERE t ~ '[а-я]'), count(*) FILTER (WHERE t ~ '[一-龥]'), count(*) FILTER (WHERE t ~ '[ء-ي]')
       FROM (SELECT note FROM accounts WHERE username NOT LIKE 'hostile%' UNION ALL SELECT text FROM statuses WHERE language <> 'und') AS x(t)`,
    );
    for (const n of [latin, cyrillic, cjk, arabic]) expect(Number(n), JSON.stringify([latin, cyrillic, cjk, arabic])).toBeGreaterThan(0);
    expect(await one(`SELECT count(*) FROM accounts WHERE id < (1::bigint << 40) AND username NOT LIKE 'hostile%'`)).toEqual(['0']);
  });

  it('stores random keys and tokens where Mastodon does', async () => {
    const [keys, privateKeys, locals] = await one(
      `SELECT count(DISTINCT public_key), count(DISTINCT private_key), count(*) FILTER (WHERE domain IS NULL) FROM accounts WHERE username NOT LIKE 'hostile%'`,
    );
    expect(Number(keys)).toBe(50);
    expect(privateKeys).toBe(locals);
    const [users, passwords, tokens] = await one(`SELECT count(*), count(DISTINCT encrypted_password), count(DISTINCT confirmation_token) FROM users`);
    expect(passwords).toBe(users);
    expect(tokens).toBe(users);
    expect(await one(`SELECT count(*) FROM users WHERE encrypted_password !~ '^\\$2a\\$10\\$[./A-Za-z0-9]{53}$'`)).toEqual(['0']);
  });

  it('sizes realistic scales by their larger rows', () => {
    expect(accountsForScale({ targetMB: 100 }, 'realistic')).toBeLessThan(accountsForScale({ targetMB: 100 }));
    expect(accountsForScale('tiny', 'realistic')).toBe(50);
  });
});
