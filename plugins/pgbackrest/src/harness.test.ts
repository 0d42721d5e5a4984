import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exec } from '@backup-pipeline/core';
import { startArchivingCluster, type ArchivingCluster } from './test-support.js';

describe('pgbackrest test harness', () => {
  let c: ArchivingCluster;
  beforeAll(async () => {
    c = await startArchivingCluster();
  }, 120_000);
  afterAll(async () => c?.stop());

  it('archives WAL into the repository and passes pgbackrest check', async () => {
    await c.switchWal();
    const check = await c.pgbackrest(['check']);
    expect(check.exitCode).toBe(0);
    const [[failed]] = (await c.pg.psql('SELECT failed_count FROM pg_stat_archiver;')) as [[string]];
    expect(Number(failed)).toBe(0);
    // The test's own user (root in CI) can back up into the server-owned repository.
    await exec('pgbackrest', [`--config=${c.configFile}`, `--stanza=${c.stanza}`, '--type=full', 'backup']);
    const info = await exec('pgbackrest', [`--config=${c.configFile}`, `--stanza=${c.stanza}`, '--output=json', 'info']);
    console.log(info.stdout);
    expect(info.stdout).toContain('"system-id"');
  }, 120_000);
});
