/**
 * `restore --clean` killed halfway leaves the live database untouched: SIGTERM while pg_restore
 * writes into the fresh database (the command stops, drops what it created, exits 143), and
 * kill -9 (nothing can clean up: the live database is still the same, the half-restored one is
 * left under its `_restoring_` name for a person, and the next --clean restore still works), and
 * the server itself killed mid-restore (the live database is the same after its restart).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tableChecksums } from '@backup-pipeline/testing';
import { mastodonHost, pipeline, writeConfig, type MastodonHost } from './support.js';

let host: MastodonHost;

beforeAll(async () => {
  host = await mastodonHost({ scale: 'small' });
  await writeConfig(host.dir, {
    workDir: './work',
    pipelines: { nightly: { source: 'mastodon', stages: [{ use: 'credentials', envFile: host.envFile }, { use: 'pg-dump' }], destinations: [] } },
  });
  const run = await pipeline(['run'], host.dir);
  expect(run.exitCode, run.stderr).toBe(0);
});

afterAll(async () => {
  await host?.pg.stop();
});

/** Waits until a `<db>_restoring_…` database exists and pg_restore has created tables in it. */
async function whileRestoring(): Promise<string> {
  for (let i = 0; i < 600; i++) {
    const [row] = await host.pg.psql(`SELECT datname FROM pg_database WHERE datname LIKE '${host.database}_restoring_%'`);
    if (row?.[0]) {
      const tables = await host.pg.psql(`SELECT count(*) FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace`, row[0]).catch(() => [['0']]);
      if (Number(tables[0]?.[0]) > 0) return row[0];
    }
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error('the restore never reached pg_restore');
}

const restoring = async () => (await host.pg.psql(`SELECT datname FROM pg_database WHERE datname LIKE '${host.database}_restoring_%'`)).map((r) => r[0]);

describe('an interrupted --clean restore', () => {
  it('SIGTERM halfway: exit 143, the fresh database dropped, the live one untouched', async () => {
    const live = await tableChecksums(host.pg, host.database);
    const child = pipeline(['restore', 'latest', '--to', host.database, '--clean', '--jobs', '1'], host.dir);
    await whileRestoring();
    child.kill('SIGTERM');
    const result = await child;
    expect(result.exitCode, result.stderr).toBe(143);
    expect(await restoring()).toEqual([]);
    expect(await tableChecksums(host.pg, host.database)).toEqual(live);
  });

  it('the PostgreSQL server killed halfway (immediate stop): the restore fails, and after a restart the live database is untouched and the next --clean still swaps', async () => {
    const live = await tableChecksums(host.pg, host.database);
    const child = pipeline(['restore', 'latest', '--to', host.database, '--clean', '--jobs', '1'], host.dir);
    await whileRestoring();
    await host.pg.halt();
    const result = await child;
    expect(result.exitCode, result.stderr).toBe(1);
    expect(result.stderr).toMatch(/^error /m);
    await host.pg.restart();
    expect(await tableChecksums(host.pg, host.database)).toEqual(live);
    // Whatever was half restored is not the live database; clear it so the next cases start clean.
    for (const name of await restoring()) await host.pg.psql(`DROP DATABASE "${name}"`);
    const again = await pipeline(['restore', 'latest', '--to', host.database, '--clean'], host.dir);
    expect(again.exitCode, again.stderr).toBe(0);
    expect(await tableChecksums(host.pg, host.database)).toEqual(live);
    for (const [name] of await host.pg.psql(`SELECT datname FROM pg_database WHERE datname LIKE '${host.database}_before_%'`)) await host.pg.psql(`DROP DATABASE "${name}"`);
  });

  it('kill -9 halfway: the live database untouched; the half-restored one is left for a person, and the next --clean still swaps', async () => {
    const live = await tableChecksums(host.pg, host.database);
    const child = pipeline(['restore', 'latest', '--to', host.database, '--clean', '--jobs', '1'], host.dir);
    const fresh = await whileRestoring();
    child.kill('SIGKILL');
    await child;
    // Its pg_restore may still be finishing on its own: wait for it, then compare.
    for (let i = 0; i < 200 && (await host.pg.psql(`SELECT count(*) FROM pg_stat_activity WHERE datname = '${fresh}'`))[0]![0] !== '0'; i++) await new Promise((r) => setTimeout(r, 50));
    expect(await tableChecksums(host.pg, host.database)).toEqual(live);
    expect(await restoring()).toEqual([fresh]);

    const again = await pipeline(['restore', 'latest', '--to', host.database, '--clean'], host.dir);
    expect(again.exitCode, again.stderr).toBe(0);
    expect(await tableChecksums(host.pg, host.database)).toEqual(live);
  });
});
