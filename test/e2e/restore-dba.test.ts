/**
 * A restore a DBA can trust, through the CLI against real PostgreSQL: `latest` is the newest set
 * complete anywhere (work dir or any destination); a copy that fails its checksum makes restore
 * use the same set from the next destination, and say so; PostgreSQL's own databases are refused;
 * `--clean` restores into a fresh database, checks it, then swaps names keeping the previous one;
 * a restore that fails drops the database it created and leaves the live one untouched.
 */
import { createHash } from 'node:crypto';
import { readdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tableChecksums } from '@backup-pipeline/testing';
import { mastodonHost, pipeline, writeConfig, type MastodonHost } from './support.js';

let host: MastodonHost;
let older: string;
let newest: string;
const DUMP = 'mastodon_production.dump.zst';
const sets = async (where: string) => (await readdir(join(host.dir, where))).filter((n) => !n.startsWith('.')).sort();
const databases = async (like: string) => (await host.pg.psql(`SELECT datname FROM pg_database WHERE datname LIKE '${like}' ORDER BY 1`)).map((r) => r[0]);

beforeAll(async () => {
  host = await mastodonHost();
  await writeConfig(host.dir, {
    workDir: './work',
    destinations: { first: { use: 'local', path: './first' }, second: { use: 'local', path: './second' } },
    pipelines: {
      nightly: {
        source: 'mastodon',
        stages: [{ use: 'credentials', envFile: host.envFile }, { use: 'pg-dump' }, { use: 'verify', expectTables: ['accounts'] }, { use: 'retention', keepLast: 5 }],
        destinations: ['first', 'second'],
      },
    },
  });
  expect((await pipeline(['run'], host.dir)).exitCode).toBe(0);
  await new Promise((r) => setTimeout(r, 1100));
  expect((await pipeline(['run'], host.dir)).exitCode).toBe(0);
  [older, newest] = await sets('second');
});

afterAll(async () => {
  await host?.pg.stop();
});

describe('restore, the way a DBA wants it', () => {
  it('takes `latest` from wherever the newest complete set is', async () => {
    // The newest set survives only in "second".
    await rm(join(host.dir, 'work', newest!), { recursive: true });
    await rm(join(host.dir, 'first', newest!), { recursive: true });
    const restore = await pipeline(['restore', 'latest', '--to', 'r_latest'], host.dir);
    expect(restore.exitCode, restore.stderr).toBe(0);
    expect(restore.stdout).toMatch(new RegExp(`restored ${newest} into r_latest .*\\(fetched from second\\)`));
  });

  it('uses the same set from the next destination when a copy fails its checksum, and says so', async () => {
    const file = join(host.dir, 'work', older!, DUMP);
    const bytes = await readFile(file);
    bytes[bytes.length >> 1] ^= 0xff;
    await writeFile(file, bytes);
    const restore = await pipeline(['restore', older!, '--to', 'r_fallback'], host.dir);
    expect(restore.exitCode, restore.stderr).toBe(0);
    expect(restore.stderr).toContain(`work/${older}/${DUMP} does not match its manifest`);
    expect(restore.stderr).toContain('trying the same set from first');
    expect(restore.stdout).toMatch(new RegExp(`restored ${older} into r_fallback .*\\(fetched from first\\)`));
    expect(await tableChecksums(host.pg, 'r_fallback')).toEqual(await tableChecksums(host.pg, host.database));
    // The bad copy is recorded as damaged in the set itself; the good copies stay complete.
    const listed = JSON.parse((await pipeline(['list', '--json'], host.dir)).stdout) as Array<{ destination: string; sets: Array<{ id: string; complete: boolean }> }>;
    const state = (d: string) => listed.find((l) => l.destination === d)!.sets.find((s) => s.id === older)!.complete;
    expect([state('work'), state('first'), state('second')]).toEqual([false, true, true]);
  });

  it('refuses PostgreSQL\'s own databases as targets', async () => {
    for (const target of ['postgres', 'template0', 'template1']) {
      const refused = await pipeline(['restore', 'latest', '--to', target, '--clean'], host.dir);
      expect(refused.exitCode, target).toBe(2);
      expect(refused.stderr).toContain('RESTORE_TARGET_REFUSED');
    }
  });

  it('--clean restores into a fresh database, then swaps names, keeping the previous one', async () => {
    const backedUp = await tableChecksums(host.pg, host.database);
    // A change after the backup: it must survive in the kept database, not in the restored one.
    await host.pg.psql(`DELETE FROM statuses WHERE id IN (SELECT id FROM statuses LIMIT 1)`, host.database);
    const restore = await pipeline(['restore', 'latest', '--to', host.database, '--clean'], host.dir);
    expect(restore.exitCode, restore.stderr).toBe(0);
    const kept = `${host.database}_before_${newest}`;
    expect(restore.stdout).toContain(`The previous database is kept as ${kept}`);
    expect(await tableChecksums(host.pg, host.database)).toEqual(backedUp);
    expect(await tableChecksums(host.pg, kept)).not.toEqual(backedUp);
    expect(await databases(`${host.database}_restoring_%`)).toEqual([]);
    // The same swap again would need the name it keeps: refused, nothing changed.
    const again = await pipeline(['restore', 'latest', '--to', host.database, '--clean'], host.dir);
    expect(again.exitCode).toBe(2);
    expect(again.stderr).toContain(`a database named ${kept} already exists`);
  });

  it('a restore that fails drops the database it created, and --clean leaves the live database untouched', async () => {
    // A copy whose manifest was rewritten to match a truncated dump: every check before
    // pg_restore passes, pg_restore fails.
    for (const where of ['work', 'first', 'second']) await rm(join(host.dir, where, newest!), { recursive: true, force: true });
    const dir = join(host.dir, 'second', older!);
    await truncate(join(dir, DUMP), 4096);
    const cut = await readFile(join(dir, DUMP));
    const manifest = JSON.parse(await readFile(join(dir, 'manifest.json'), 'utf8'));
    const entry = manifest.artifacts.find((a: { name: string }) => a.name === DUMP);
    entry.bytes = cut.length;
    entry.sha256 = createHash('sha256').update(cut).digest('hex');
    await writeFile(join(dir, 'manifest.json'), JSON.stringify(manifest, null, 2));
    await rm(join(host.dir, 'first', older!), { recursive: true });
    await rm(join(host.dir, 'work', older!), { recursive: true });

    const failed = await pipeline(['restore', 'latest', '--to', 'r_failed'], host.dir);
    expect(failed.exitCode).toBe(1);
    expect(failed.stderr).toContain('RESTORE_FAILED');
    expect(await databases('r_failed')).toEqual([]);

    const live = await tableChecksums(host.pg, host.database);
    const clean = await pipeline(['restore', 'latest', '--to', host.database, '--clean'], host.dir);
    expect(clean.exitCode).toBe(1);
    expect(await tableChecksums(host.pg, host.database)).toEqual(live);
    expect(await databases(`${host.database}_restoring_%`)).toEqual([]);
  });
});
