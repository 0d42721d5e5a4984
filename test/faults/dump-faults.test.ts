/**
 * Faults during the dump: pg_dump killed with SIGKILL, the PostgreSQL server stopped, a table lock
 * held beyond lockWaitTimeout, and the work dir filling up (a 256 KiB tmpfs). The dump is held at
 * a known point by another session's table lock, so each fault lands mid-dump every time.
 */
import { mkdir } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import {
  assertCleanedUp,
  assertFailed,
  HOSTILE_PASSWORD,
  holdTableLock,
  join,
  listSets,
  mastodonHost,
  project,
  runHeldInDump,
  sandbox,
  scanForSecrets,
  requireOrSkip,
  shimRecords,
  verifyCompleteSets,
  type MastodonHost,
  type Project,
  type Sandbox,
} from './support.js';

let host: MastodonHost;
let sb: Sandbox;
let p: Project;
const mounts: string[] = [];

const pipelineConfig = (pgDump: Record<string, unknown> = {}) => ({
  destinations: { folder: { use: 'local', path: './backups' } },
  pipelines: {
    nightly: {
      source: 'mastodon',
      stages: [{ use: 'credentials', envFile: host.envFile }, { use: 'pg-dump', ...pgDump }, { use: 'retention', keepLast: 2, incompleteGraceHours: 0 }],
      destinations: ['folder'],
    },
  },
});

beforeAll(async () => {
  [host, sb] = await Promise.all([mastodonHost(), sandbox('dump')]);
  p = await project(sb, 'dump', pipelineConfig());
  sb.setRoots.add(join(p.dir, 'backups'));
  const first = await p.run();
  expect(first.exitCode, first.stderr).toBe(0);
});

afterAll(async () => {
  if (sb) await scanForSecrets(sb, [HOSTILE_PASSWORD]);
  for (const m of mounts) await execa('umount', [m], { reject: false });
  await host?.pg.stop();
  await sb?.cleanup();
});

/** The failed run left every destination as it was; cleanup happened; the next run succeeds. */
async function aftermath(q: Project, before: Awaited<ReturnType<typeof listSets>>): Promise<void> {
  expect(await listSets(sb, q), 'a failed dump changed the sets').toEqual(before);
  expect(await verifyCompleteSets(q), 'the good sets verify by content').toBeGreaterThan(0);
  await assertCleanedUp(sb, q);
  const next = await q.run();
  expect(next.exitCode, next.stderr).toBe(0);
  await assertCleanedUp(sb, q);
}

describe('dump faults', () => {
  it('pg_dump killed with SIGKILL mid-dump fails naming pg_dump and the signal', async () => {
    const before = await listSets(sb, p);
    let killed = 0;
    const out = await runHeldInDump(sb, host, p, async () => {
      const dump = (await shimRecords(sb)).filter((r) => r.tool === 'pg_dump' && !r.argv.includes('--version')).at(-1)!;
      // Scoped to this cluster: the dump connects to its port.
      expect(`${dump.argv.join(' ')}\n${dump.env}`).toMatch(new RegExp(`(-p |--port=|PGPORT=)${host.pg.port}\\b`));
      process.kill(dump.pid, 'SIGKILL');
      killed = dump.pid;
    });
    expect(killed).toBeGreaterThan(0);
    assertFailed(out, 'EXEC_FAILED', ['pg-dump', 'pg_dump', 'SIGKILL']);
    await aftermath(p, before);
  });

  it('the PostgreSQL server stopped mid-dump fails naming the unreachable source', async () => {
    const before = await listSets(sb, p);
    const out = await runHeldInDump(sb, host, p, () => host.pg.halt());
    await host.pg.restart();
    const line = assertFailed(out, 'SOURCE_UNREACHABLE', ['pg-dump']);
    expect(line).toMatch(new RegExp(`pg_dump|127\\.0\\.0\\.1:${host.pg.port}`));
    await aftermath(p, before);
  });

  it('a table lock held beyond lockWaitTimeout fails with DUMP_LOCK_TIMEOUT naming the table', async () => {
    const q = await project(sb, 'lock-timeout', pipelineConfig({ lockWaitTimeout: '1s' }));
    sb.setRoots.add(join(q.dir, 'backups'));
    const good = await q.run();
    expect(good.exitCode, good.stderr).toBe(0);
    const before = await listSets(sb, q);
    const lock = await holdTableLock(host, 'accounts');
    let out;
    try {
      const started = Date.now();
      out = await q.run();
      expect(Date.now() - started).toBeLessThan(30_000);
    } finally {
      await lock.release();
    }
    assertFailed(out, 'DUMP_LOCK_TIMEOUT', ['pg-dump', 'accounts', '1s']);
    expect(out.stderr).toMatch(/hint .*migrat/);
    await aftermath(q, before);
  });

  it('the work dir filling up mid-dump fails naming the file system error; nothing partial remains', async (ctx) => {
    const base = join(sb.root, 'full');
    const small = join(base, 'work');
    await mkdir(small, { recursive: true });
    const mounted = await execa('mount', ['-t', 'tmpfs', '-o', 'size=256k,mode=0700', 'tmpfs', small], { reject: false });
    requireOrSkip(ctx, mounted.exitCode === 0, `cannot mount a small tmpfs for the work dir (${mounted.stderr.trim()}); run as root to test a full disk`);
    mounts.push(small);
    // An uncompressed dump of the tiny database is well over 256 KiB.
    const q = await project(sb, 'full', pipelineConfig({ compression: { method: 'none' } }));
    sb.setRoots.add(join(q.dir, 'backups'));
    // An earlier good set (made with room), so "no good set deleted" is not vacuous.
    await execa('mount', ['-o', 'remount,size=64m', small]);
    const good = await q.run();
    expect(good.exitCode, good.stderr).toBe(0);
    // Then only 256 KiB more than the good set takes.
    const used = Number((await execa('df', ['-B1', '--output=used', small])).stdout.split('\n')[1]!.trim());
    await execa('mount', ['-o', `remount,size=${Math.ceil((used + 256 * 1024) / 4096) * 4096}`, small]);
    const before = await listSets(sb, q);
    expect(before.folder!.complete).toHaveLength(1);
    const out = await q.run();
    const line = assertFailed(out, 'NO_SPACE', ['pg-dump', small]);
    expect(line).toMatch(/ENOSPC|No space left on device|no space/i);
    expect(await listSets(sb, q)).toEqual(before);
    await assertCleanedUp(sb, q);
    // With room again (a bigger tmpfs), the next run succeeds.
    await execa('mount', ['-o', 'remount,size=64m', small]);
    // (verify needs scratch room in the work dir, so it runs once there is room again)
    expect(await verifyCompleteSets(q)).toBe(2);
    const next = await q.run();
    expect(next.exitCode, next.stderr).toBe(0);
    await assertCleanedUp(sb, q);
    expect(await verifyCompleteSets(q)).toBeGreaterThanOrEqual(2);
  });
});
