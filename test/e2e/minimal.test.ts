/**
 * The smallest real pipeline, through the CLI: credentials from a Mastodon .env.production →
 * pg_dump → a local folder; the set is complete, restores into a new database, and every table
 * matches the source.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { listSets, LocalFolderDestination } from '@backup-pipeline/core';
import { tableChecksums } from '@backup-pipeline/testing';
import { HOSTILE_PASSWORD, mastodonHost, pipeline, writeConfig, type MastodonHost } from './support.js';

let host: MastodonHost;
beforeAll(async () => {
  host = await mastodonHost();
});
afterAll(async () => {
  await host?.pg.stop();
});

describe('minimal pipeline end to end', () => {
  it('dumps with credentials from .env.production into a local folder, and the set restores identically', async () => {
    const { dir, envFile, pg, database } = host;
    await writeConfig(dir, {
      workDir: './work',
      destinations: { folder: { use: 'local', path: './backups' } },
      pipelines: {
        nightly: {
          source: 'mastodon',
          stages: [{ use: 'credentials', from: 'mastodon', envFile }, { use: 'pg-dump' }],
          destinations: ['folder'],
        },
      },
    });
    const run = await pipeline(['run', 'nightly', '--log-format', 'json'], dir);
    expect(run.stderr + run.stdout).not.toContain(HOSTILE_PASSWORD);
    expect(run.exitCode, run.stderr).toBe(0);

    const sets = await listSets(new LocalFolderDestination(join(dir, 'backups')));
    expect(sets).toHaveLength(1);
    const set = sets[0]!;
    expect(set.complete).toBe(true);
    const manifestText = await readFile(join(dir, 'backups', set.id, 'manifest.json'), 'utf8');
    expect(manifestText).not.toContain(HOSTILE_PASSWORD);
    const artifact = set.manifest!.artifacts.find((a) => a.kind === 'database')!;
    expect(artifact.format).toBe('pg-custom');
    expect(await readdir(join(dir, 'backups', set.id))).toEqual(expect.arrayContaining([artifact.name, 'manifest.json']));

    // Restore by hand with the real tools, the way Mastodon's migration guide does.
    await pg.createDatabase('restored');
    const dump = join(dir, 'backups', set.id, artifact.name);
    const decompress = artifact.compression === 'zstd' ? `zstd -dc '${dump}'` : `cat '${dump}'`;
    const { execa } = await import('execa');
    await execa('sh', ['-c', `${decompress} | '${pg.bindir}/pg_restore' --no-owner -h '${pg.socketDir}' -p ${pg.port} -U ${pg.superuser} -d restored`]);
    expect(await tableChecksums(pg, 'restored')).toEqual(await tableChecksums(pg, database));
  });
});
