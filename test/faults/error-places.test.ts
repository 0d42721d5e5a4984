/**
 * Errors name the place, through the real CLI: a pg_restore refused by the server shows the
 * server's `ERROR:` line (`permission denied for schema public`), not the last lines of the
 * statement it was running (the middle of a CREATE TABLE), whether it reads a pipe (`-j 1`) or a
 * seekable file (`-j 2`); a read-only work dir fails with ACCESS_DENIED naming the path, before
 * any data moves.
 */
import { mkdir, readdir } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import {
  assertCleanedUp,
  assertFailed,
  HOSTILE_PASSWORD,
  join,
  listSets,
  mastodonHost,
  project,
  recordedPids,
  running,
  sandbox,
  scanForSecrets,
  type MastodonHost,
  type Project,
  type Sandbox,
} from './support.js';

let host: MastodonHost;
let sb: Sandbox;
let p: Project;
const mounts: string[] = [];

beforeAll(async () => {
  [host, sb] = await Promise.all([mastodonHost(), sandbox('places')]);
  p = await project(sb, 'places', {
    destinations: { folder: { use: 'local', path: './backups' } },
    pipelines: {
      nightly: {
        source: 'mastodon',
        stages: [{ use: 'credentials', envFile: host.envFile }, { use: 'pg-dump' }, { use: 'retention', keepLast: 5 }],
        destinations: ['folder'],
      },
    },
  });
  sb.setRoots.add(join(p.dir, 'backups'));
  const first = await p.run();
  expect(first.exitCode, first.stderr).toBe(0);
}, 300_000);

afterAll(async () => {
  if (sb) await scanForSecrets(sb, [HOSTILE_PASSWORD]).catch((e: unknown) => console.error(e));
  for (const m of mounts.reverse()) await execa('umount', ['--lazy', m], { reject: false });
  await host?.pg.stop();
  await sb?.cleanup();
});

describe('a PostgreSQL client that fails shows the server\'s ERROR line', () => {
  it.each([1, 2])('restore -j %i into a database whose schema public the role may not create in', async (jobs) => {
    // Owned by the superuser: since PostgreSQL 15 only the owner may create in public.
    const target = `refused_${jobs}`;
    await host.pg.psql(`CREATE DATABASE ${target} TEMPLATE template0`);
    const seen = await recordedPids(sb);
    const out = await p.cli(['restore', 'latest', '--to', target, '--jobs', String(jobs), '--log-format', 'json']);
    const line = assertFailed(out, jobs === 1 ? 'RESTORE_FAILED' : 'EXEC_FAILED', ['[pg-dump → restoreStream]', 'pg_restore', 'ERROR:  permission denied for schema public']);
    if (process.env.BP_SHOW) console.log(line);
    // Not the tail of the statement text pg_restore printed after it.
    expect(line).not.toMatch(/NOT NULL|bigint|character varying/);
    expect(line).not.toMatch(/not a readable PostgreSQL archive|truncated or corrupt/);
    for (const pid of await recordedPids(sb)) if (!seen.has(pid)) expect(await running(pid)).toBe(false);
    await assertCleanedUp(sb, p);
    expect(await readdir(join(p.workDir, '.runs')).catch(() => [])).toEqual([]);
    // The database existed before: the failed restore left it in place, still without tables.
    expect(await host.pg.psql(`SELECT count(*) FROM pg_tables WHERE schemaname = 'public'`, target)).toEqual([['0']]);
  });
});

describe('a file system error names the path', () => {
  it('a read-only work dir fails the run with ACCESS_DENIED naming the lock path; nothing is shipped', async () => {
    const q = await project(sb, 'readonly', {
      destinations: { folder: { use: 'local', path: './backups' } },
      pipelines: { nightly: { source: 'mastodon', stages: [{ use: 'credentials', envFile: host.envFile }, { use: 'pg-dump' }], destinations: ['folder'] } },
    });
    await mkdir(q.workDir, { recursive: true });
    const mounted = await execa('mount', ['-t', 'tmpfs', '-o', 'ro,size=1m', 'tmpfs', q.workDir], { reject: false });
    expect(mounted.exitCode, `cannot mount a read-only tmpfs (run as root): ${mounted.stderr}`).toBe(0);
    mounts.push(q.workDir);
    const out = await q.run();
    assertFailed(out, 'ACCESS_DENIED', ['taking the lock', 'read-only file system', join(q.workDir, '.locks')]);
    expect(await readdir(join(q.dir, 'backups')).catch(() => [])).toEqual([]);
    expect(await readdir(sb.tmp)).toEqual([]);
    expect((await listSets(sb, q)).folder?.complete ?? []).toEqual([]);
  });
});
