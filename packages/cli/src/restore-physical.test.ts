/**
 * `pipeline restore` flags for physical restores through the real binary: the recovery target is
 * checked before anything is opened, a target needs a data dir, a data dir goes alone, and a
 * restore without a set needs a target to pick one by (USAGE, exit 2). The restores themselves
 * are tested against a real pgBackRest repository in plugins/pgbackrest/src/restore.test.ts.
 */
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const BIN = join(resolve(fileURLToPath(import.meta.url), '../..'), 'bin', 'pipeline.js');
let dir: string;
const pipeline = (args: string[]) => execa(process.execPath, [BIN, '--config', join(dir, 'pipeline.config.json'), ...args], { cwd: dir, reject: false, stdin: 'ignore', env: { NO_COLOR: '1', CI: 'true' } });

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bp-restore-physical-'));
  await writeFile(
    join(dir, 'pipeline.config.json'),
    JSON.stringify({ workDir: join(dir, 'work'), pipelines: { physical: { source: 'mastodon', stages: [{ use: 'pgbackrest', stanza: 'main', configFile: join(dir, 'pgbackrest.conf') }] } } }),
  );
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

describe('pipeline restore: physical flags', () => {
  it.each([
    [['restore', '--to-time', '2026-12-01 14:03:00', '--data-dir', 'D'], /--to-time "2026-12-01 14:03:00" is not a time with a UTC offset/],
    [['restore', '--to-lsn', '3000060', '--data-dir', 'D'], /--to-lsn "3000060" is not a WAL position/],
    [['restore', '--to-time', '2026-12-01 14:03:00+00', '--to-lsn', '0/1', '--data-dir', 'D'], /give one recovery target/],
    [['restore', '--to-time', '2026-12-01 14:03:00+00'], /a recovery target \(--to-time, --to-lsn\) needs a data dir/],
    [['restore', 'latest', '--data-dir', 'D', '--to', 'mastodon_production'], /--data-dir restores a physical backup alone/],
    [['restore', '--data-dir', 'D'], /which set\? give a set id or "latest"/],
  ])('%j is refused with USAGE (exit 2) before anything is touched', async (args, message) => {
    const out = await pipeline(args);
    expect(out.exitCode).toBe(2);
    expect(out.stderr).toMatch(message);
    await expect(stat(join(dir, 'D'))).rejects.toThrow();
    await expect(stat(join(dir, 'work'))).rejects.toThrow();
  });

  it('restore --help shows the physical flags', async () => {
    const out = await pipeline(['restore', '--help']);
    expect(out.exitCode).toBe(0);
    for (const flag of ['--data-dir <dir>', '--to-time <time>', '--to-lsn <lsn>', '--delta', '[set]']) expect(out.stdout).toContain(flag);
  });
});
