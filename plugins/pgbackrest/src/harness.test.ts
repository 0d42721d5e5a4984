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
    // A backup as the repository's owner, and info.
    await c.pgbackrest(['--type=full', 'backup']);
    const info = await c.pgbackrest(['--output=json', 'info']);
    expect(info.stdout).toContain('"system-id"');
    // Every file of the repository still belongs to the server's user (archive-push keeps working).
    if (c.serverUser) {
      const { stdout } = await exec('find', [c.repoPath, '!', '-user', c.serverUser]);
      expect(stdout.trim()).toBe('');
    }
  }, 120_000);
});
