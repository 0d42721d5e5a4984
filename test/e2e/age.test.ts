/**
 * age alone, through the CLI, against real PostgreSQL: backup (the env file's secrets archive
 * encrypted by age too), `list` (encrypted), `verify latest --restore-test`, `restore latest`
 * into a new database and the env file into a folder, retention — and no gpg anywhere: the
 * config has no gpg stage and GNUPGHOME points at nothing.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { tableChecksums } from '@backup-pipeline/testing';
import { mastodonHost, pipeline, writeConfig, writeMastodonConfig, type MastodonHost } from './support.js';

let host: MastodonHost;
let publicKey: string;
const NO_GPG = { GNUPGHOME: '/nonexistent/no-gpg-here' };
/** The stages the config starts with (a test takes some away, a later one puts them back). */
const stages = () => [
  { use: 'credentials', envFile: host.envFile },
  { use: 'pg-dump' },
  { use: 'files', envFile: host.envFile },
  { use: 'verify', expectTables: ['accounts', 'statuses'] },
  { use: 'age', recipients: [publicKey], identityFile: './age.key' },
  { use: 'retention', keepLast: 2 },
];

beforeAll(async () => {
  host = await mastodonHost();
  await execa('age-keygen', ['-o', join(host.dir, 'age.key')]);
  publicKey = (await execa('age-keygen', ['-y', join(host.dir, 'age.key')])).stdout.trim();
  await writeMastodonConfig(host.dir, { nightly: stages() });
});

afterAll(async () => {
  await host?.pg.stop();
});

describe('the age plugin, end to end without gpg', () => {
  it('backs up, lists as encrypted, verifies with a restore drill, restores the database and the env file', async () => {
    const run = await pipeline(['run'], host.dir, NO_GPG);
    expect(run.exitCode, run.stderr).toBe(0);
    const set = (await readdir(join(host.dir, 'folder'))).sort().at(-1)!;
    const files = (await readdir(join(host.dir, 'folder', set))).sort();
    expect(files).toEqual(['manifest.json', 'mastodon_production.dump.zst.age', 'secrets.tar.zst.age']);
    const manifest = JSON.parse(await readFile(join(host.dir, 'folder', set, 'manifest.json'), 'utf8')) as { artifacts: Array<{ encryption?: { method: string; recipients: string[] } }>; stages: Array<{ plugin: string }> };
    expect(manifest.artifacts.map((a) => a.encryption?.method)).toEqual(['age', 'age']);
    expect(manifest.artifacts[0]!.encryption!.recipients).toEqual([publicKey]);
    expect(manifest.stages.some((s) => s.plugin === 'gpg')).toBe(false);

    const list = await pipeline(['list', '--json'], host.dir, NO_GPG);
    expect(list.exitCode, list.stderr).toBe(0);
    const listed = JSON.parse(list.stdout) as Array<{ destination: string; sets: Array<{ id: string; complete: boolean; encrypted: boolean }> }>;
    for (const d of listed) expect(d.sets.every((s) => s.complete && s.encrypted), d.destination).toBe(true);

    const verify = await pipeline(['verify', 'latest', '--from', 'folder', '--restore-test'], host.dir, NO_GPG);
    expect(verify.exitCode, verify.stderr).toBe(0);
    expect(verify.stdout).toMatch(/every sha256 matches the manifest/);
    expect(verify.stdout).toMatch(/restore drill: \d+ tables \/ \d+ rows match the snapshot/);

    const out = join(host.dir, 'recovered');
    const restore = await pipeline(['restore', 'latest', '--from', 'folder', '--to', 'restored_age', '--files-to', out], host.dir, NO_GPG);
    expect(restore.exitCode, restore.stderr).toBe(0);
    expect(restore.stdout).toMatch(/restored \S+ into restored_age .*\(fetched from folder\)/);
    expect(await tableChecksums(host.pg, 'restored_age')).toEqual(await tableChecksums(host.pg, host.database));
    expect(await readFile(join(out, '.env.production'), 'utf8')).toBe(await readFile(host.envFile, 'utf8'));
  });

  it('says which key it needs when there is none, and never calls the set damaged', async () => {
    const config = JSON.parse(await readFile(join(host.dir, 'pipeline.config.json'), 'utf8'));
    const age = config.pipelines.nightly.stages.find((s: { use: string }) => s.use === 'age');
    delete age.identityFile;
    await writeConfig(host.dir, config);
    const restore = await pipeline(['restore', 'latest', '--to', 'never_created_age'], host.dir, NO_GPG);
    expect(restore.exitCode).toBe(1);
    expect(restore.stderr).toContain('AGE_IDENTITY_MISSING');
    expect(restore.stderr).not.toContain('CHECKSUM_MISMATCH');
    expect(await host.pg.psql(`SELECT count(*) FROM pg_database WHERE datname = 'never_created_age'`)).toEqual([['0']]);
    // The key given on the command line instead.
    const verify = await pipeline(['verify', 'latest', '-o', `identityFile=${join(host.dir, 'age.key')}`], host.dir, NO_GPG);
    expect(verify.exitCode, verify.stderr).toBe(0);

    // Without the age stage at all: a plugin is missing, which is a fact, not damage.
    config.pipelines.nightly.stages = config.pipelines.nightly.stages.filter((s: { use: string }) => s.use !== 'age' && s.use !== 'files');
    await writeConfig(host.dir, config);
    const missing = await pipeline(['restore', 'latest', '--to', 'never_created_age'], host.dir, NO_GPG);
    expect(missing.exitCode).toBe(1);
    expect(missing.stderr).toContain('RESTORE_NEEDS_PLUGIN');
    expect(missing.stderr).toContain('use: age');
    const list = JSON.parse((await pipeline(['list', '--json'], host.dir, NO_GPG)).stdout) as Array<{ sets: Array<{ complete: boolean; needs?: string[] }> }>;
    expect(list.every((d) => d.sets.every((s) => s.complete && s.needs?.includes('decrypt "age"')))).toBe(true);
    expect((await pipeline(['list', '-d', 'folder'], host.dir, NO_GPG)).stdout).toContain('complete (needs a plugin for decrypt "age" to restore)');
  });

  it('survives retention like any other set', async () => {
    const config = JSON.parse(await readFile(join(host.dir, 'pipeline.config.json'), 'utf8'));
    config.pipelines.nightly.stages = stages();
    await writeConfig(host.dir, config);
    for (let i = 0; i < 2; i++) {
      await new Promise((r) => setTimeout(r, 1100));
      const run = await pipeline(['run'], host.dir, NO_GPG);
      expect(run.exitCode, run.stderr).toBe(0);
    }
    const sets = (await readdir(join(host.dir, 'folder'))).sort();
    expect(sets).toHaveLength(2);
    const prune = await pipeline(['prune', '--dry-run'], host.dir, NO_GPG);
    expect(prune.exitCode, prune.stderr).toBe(0);
    expect(prune.stdout).toContain('folder: keep 2, would delete 0');
    const restore = await pipeline(['restore', sets[0]!, '--to', 'restored_age_older'], host.dir, NO_GPG);
    expect(restore.exitCode, restore.stderr).toBe(0);
  });
});
