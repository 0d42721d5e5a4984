/** The operator commands on a real pipeline: plugins, prune (for real), restore --globals --files-to, verify --restore-test (throwaway cluster or server). */
import { mkdir, readdir, readFile, rename, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createGpgHome, type GpgHome } from '@backup-pipeline/testing';
import { mastodonHost, pipeline, writeMastodonConfig, type MastodonHost } from './support.js';

let host: MastodonHost;
let gpg: GpgHome;

beforeAll(async () => {
  [host, gpg] = await Promise.all([mastodonHost(), createGpgHome()]);
  await host.pg.createRole('mastodon_admin', undefined, { login: false });
  await writeMastodonConfig(host.dir, {
    nightly: [
      { use: 'credentials', envFile: host.envFile },
      { use: 'pg-dump', globals: true },
      { use: 'files', envFile: host.envFile },
      { use: 'gpg', gnupgHome: gpg.home, recipients: [gpg.fingerprint] },
      { use: 'retention', keepLast: 5 },
    ],
  });
});
afterAll(async () => {
  await Promise.allSettled([host?.pg.stop(), gpg?.cleanup()]);
});

describe('operator commands', () => {
  it('`pipeline plugins` lists every built-in with its options, defaults and the hooks it taps', async () => {
    const result = await pipeline(['plugins'], host.dir);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/^pg-dump \(stage\) — /m);
    expect(result.stdout).toMatch(/taps: preflight, plan, produce/);
    expect(result.stdout).toMatch(/lockWaitTimeout: string = "5min"/);
    expect(result.stdout).toMatch(/^s3 \(destination\) — /m);
    const json = JSON.parse((await pipeline(['plugins', '--json'], host.dir)).stdout) as Array<{ name: string; hooks: string[] }>;
    expect(json.find((p) => p.name === 'retention')!.hooks).toEqual(expect.arrayContaining(['preflight', 'retain']));
  });

  it('restore --globals --files-to brings back roles, the dump and the encrypted .env.production (unpacked)', async () => {
    const run = await pipeline(['run'], host.dir);
    expect(run.exitCode, run.stderr).toBe(0);
    // The role is gone on the "new server": --globals must bring it back.
    await host.pg.psql('DROP ROLE mastodon_admin; ALTER ROLE mastodon CREATEROLE');
    const out = join(host.dir, 'recovered');
    const restore = await pipeline(['restore', 'latest', '--to', 'restored', '--globals', '--files-to', out, '--gnupg-home', gpg.home], host.dir);
    expect(restore.exitCode, restore.stderr).toBe(0);
    // The files stage restores its own archive: the decrypted secrets are unpacked, not left as a tar.
    expect((await readdir(out)).sort()).toEqual(['.env.production']);
    expect(await readFile(join(out, '.env.production'), 'utf8')).toContain('SECRET_KEY_BASE=abc123');
    expect(restore.stdout).toMatch(/restored secrets\.tar\.zst into /);
    // A second restore into the same folder never overwrites what is there.
    const again = await pipeline(['restore', 'latest', '--to', 'restored_again', '--files-to', out, '--gnupg-home', gpg.home], host.dir);
    expect(again.exitCode).toBe(1);
    expect(again.stderr).toContain('FILES_RESTORE_FAILED');
    expect(await host.pg.psql(`SELECT count(*) FROM pg_database WHERE datname = 'restored_again'`)).toEqual([['0']]);
    // The secrets alone, before any database exists (the first step on a new server).
    const secretsOnly = join(host.dir, 'secrets-only');
    // No .env.production for the credentials stage yet: files alone need no database connection.
    await rename(host.envFile, `${host.envFile}.away`);
    const files = await pipeline(['restore', 'latest', '--files-to', secretsOnly, '--gnupg-home', gpg.home], host.dir).finally(() => rename(`${host.envFile}.away`, host.envFile));
    expect(files.exitCode, files.stderr).toBe(0);
    expect(await readdir(secretsOnly)).toEqual(['.env.production']);
    const nothing = await pipeline(['restore', 'latest'], host.dir);
    expect(nothing.exitCode).toBe(2);
    expect(nothing.stderr).toContain('nothing to restore');
    expect(await host.pg.psql(`SELECT count(*) FROM pg_roles WHERE rolname = 'mastodon_admin'`)).toEqual([['1']]);
  });

  it('prune deletes what the policy no longer keeps, --dry-run only says so', async () => {
    // Four more runs on distinct seconds, then a tighter policy.
    for (let i = 0; i < 2; i++) {
      await new Promise((r) => setTimeout(r, 1000));
      expect((await pipeline(['run'], host.dir)).exitCode).toBe(0);
    }
    const config = JSON.parse(await readFile(join(host.dir, 'pipeline.config.json'), 'utf8'));
    config.pipelines.nightly.stages.at(-1).keepLast = 1;
    await writeFile(join(host.dir, 'pipeline.config.json'), JSON.stringify(config));
    const before = (await readdir(join(host.dir, 'folder'))).sort();
    expect(before).toHaveLength(3);

    const dry = await pipeline(['prune', '--dry-run'], host.dir);
    expect(dry.exitCode, dry.stderr).toBe(0);
    expect(dry.stdout).toContain('folder: keep 1, would delete 2');
    expect((await readdir(join(host.dir, 'folder'))).sort()).toEqual(before);

    const real = await pipeline(['prune'], host.dir);
    expect(real.exitCode, real.stderr).toBe(0);
    expect(real.stdout).toContain(`deleted ${before[0]}`);
    expect(await readdir(join(host.dir, 'folder'))).toEqual([before.at(-1)]);
    expect((await readdir(join(host.dir, 'work'))).filter((n) => !n.startsWith('.'))).toEqual([before.at(-1)]);
  });

  it('list exits 2 naming an unknown destination', async () => {
    const unknown = await pipeline(['list', '-d', 'nowhere'], host.dir);
    expect(unknown.exitCode).toBe(2);
    expect(unknown.stderr).toContain('DESTINATION_UNKNOWN');
  });
});

describe('pipeline verify --restore-test', () => {
  it('drills in a throwaway cluster by default (no CREATEDB needed); --restore-into server uses a scratch database on the server', async () => {
    const dir = join(host.dir, 'drill');
    await mkdir(dir, { mode: 0o700 });
    await writeMastodonConfig(dir, {
      nightly: [
        { use: 'credentials', envFile: host.envFile },
        { use: 'pg-dump' },
        { use: 'verify' },
        { use: 'gpg', gnupgHome: gpg.home, recipients: [gpg.fingerprint] },
      ],
    });
    const run = await pipeline(['run'], dir);
    expect(run.exitCode, run.stderr).toBe(0);
    const scratchDatabases = async () => (await host.pg.psql(`SELECT datname FROM pg_database WHERE datname LIKE 'bp\\_verify\\_%'`)).map((r) => r[0]);
    // The backup role may not create databases (as a careful admin sets it up).
    await host.pg.psql('ALTER ROLE mastodon NOCREATEDB');
    try {
      const drill = await pipeline(['verify', 'latest', '--from', 'folder', '--restore-test', '--gnupg-home', gpg.home], dir);
      expect(drill.exitCode, drill.stderr).toBe(0);
      expect(drill.stdout).toMatch(/restore drill: \d+ tables \/ \d+ rows match the snapshot \(throwaway PostgreSQL 1\d\.\d+ cluster, /);
      expect(await scratchDatabases()).toEqual([]);
      expect(await readdir(join(dir, 'work'))).not.toContain('.runs');

      const refused = await pipeline(['verify', 'latest', '--from', 'folder', '--restore-test', '--restore-into', 'server', '--gnupg-home', gpg.home], dir);
      expect(refused.exitCode).toBe(1);
      expect(refused.stderr).toContain('VERIFY_RESTORE_UNAVAILABLE');
      expect(refused.stderr).toContain('CREATEDB');
    } finally {
      await host.pg.psql('ALTER ROLE mastodon CREATEDB');
    }
    const server = await pipeline(['verify', 'latest', '--from', 'folder', '--restore-test', '--restore-into', 'server', '--gnupg-home', gpg.home], dir);
    expect(server.exitCode, server.stderr).toBe(0);
    expect(server.stdout).toMatch(/rows match the snapshot \(scratch database on the server, /);
    expect(await scratchDatabases()).toEqual([]);

    const alone = await pipeline(['verify', 'latest', '--restore-into', 'server'], dir);
    expect(alone.exitCode).toBe(2);
    expect(alone.stderr).toContain('--restore-into says where --restore-test restores');
    const unknown = await pipeline(['verify', 'latest', '--restore-test', '--restore-into', 'elsewhere', '--gnupg-home', gpg.home], dir);
    expect(unknown.exitCode).toBe(2);
    expect(unknown.stderr).toContain('restoreInto');
  });
});
