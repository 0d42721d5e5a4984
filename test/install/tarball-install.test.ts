/**
 * The install path the README documents, from the packages exactly as they would be published:
 * every workspace packed with `npm pack`, the CLI and the built-in plugins installed from those
 * tarballs into a fresh prefix outside the checkout, then `pipeline --version`, `validate` and
 * `demo` run from there, and an outside plugin package installed into the same prefix and used by
 * a real run.
 *
 * npm may fetch third-party packages (from its cache or the configured registry) but nothing of
 * ours: the `@backup-pipeline` scope is pointed at a closed loopback port, so a package that is
 * not among the tarballs fails the install instead of coming from anywhere else.
 */
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, realpath, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const ROOT = resolve(fileURLToPath(import.meta.url), '../../..');
const EXAMPLE = join(ROOT, 'examples', 'backup-pipeline-plugin-dated-folder');
/** Nothing listens here: any request for a @backup-pipeline package fails at once. */
const CLOSED_SCOPE = ['--@backup-pipeline:registry=http://127.0.0.1:9/', '--fetch-retries=0'];
/** Packages that only the test kit may pull in: never part of the CLI's production tree. */
const TEST_SERVERS = ['s3rver', 'koa', 'busboy', 'dicer', '@backup-pipeline/testing'];

let base: string;
let packs: string;
let prefix: string;
let etc: string;
const tarballs: Record<string, string> = {};

/** The environment of an admin's shell: nothing that npm sets for the suite it runs in, no NODE_PATH. */
function cleanEnv(): Record<string, string> {
  const keep = new Set(['npm_config_cache', 'npm_config_userconfig', 'npm_config_registry', 'npm_config_cafile']);
  const env: Record<string, string> = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (value === undefined || key === 'NODE_PATH' || key === 'INIT_CWD') continue;
    if (key.toLowerCase().startsWith('npm_') && !keep.has(key.toLowerCase())) continue;
    env[key] = value;
  }
  return { ...env, NO_COLOR: '1' };
}

function npm(args: string[], cwd: string) {
  return execa('npm', [...args, '--no-audit', '--no-fund', '--prefer-offline'], { cwd, env: cleanEnv(), extendEnv: false, reject: false, stdin: 'ignore', all: true });
}

/** The installed command, run the way an admin runs it (its bin link, PATH lookup of node). */
function pipeline(args: string[], cwd: string) {
  return execa(join(prefix, 'node_modules', '.bin', 'pipeline'), args, { cwd, env: cleanEnv(), extendEnv: false, reject: false, stdin: 'ignore' });
}

beforeAll(async () => {
  // The prefix must not sit under the checkout, or Node's resolver would find its node_modules.
  const tmp = tmpdir();
  base = await mkdtemp(join(tmp.startsWith(ROOT + sep) ? '/tmp' : tmp, 'bp-install-'));
  packs = join(base, 'packs');
  prefix = join(base, 'opt', 'backup-pipeline');
  etc = join(base, 'etc', 'backup-pipeline');
  await mkdir(packs);
  await mkdir(prefix, { recursive: true });
  await mkdir(etc, { recursive: true });

  // Every publishable workspace, packed with its lifecycle scripts (the CLI's prepack adds the schema).
  const packed = await npm(['pack', '--workspaces', '--pack-destination', packs, '--json'], ROOT);
  expect(packed.exitCode, packed.all).toBe(0);
  const example = await npm(['pack', '--pack-destination', packs, '--json'], EXAMPLE);
  expect(example.exitCode, example.all).toBe(0);
  for (const file of await readdir(packs)) tarballs[file.replace(/-\d+\.\d+\.\d+\.tgz$/, '')] = join(packs, file);

  const ours = Object.entries(tarballs)
    .filter(([name]) => name.startsWith('backup-pipeline-') && name !== 'backup-pipeline-testing' && name !== 'backup-pipeline-plugin-dated-folder')
    .map(([, file]) => file);
  const installed = await npm(['install', '--prefix', prefix, ...CLOSED_SCOPE, ...ours], base);
  expect(installed.exitCode, installed.all).toBe(0);
}, 600_000);

afterAll(async () => {
  if (base) await rm(base, { recursive: true, force: true });
});

describe('the published packages', () => {
  it('each carries the LICENSE, a README, its repository and publishConfig, and no tests or sources', async () => {
    const publishable = Object.keys(tarballs).filter((name) => name !== 'backup-pipeline-plugin-dated-folder');
    expect(publishable).toEqual(expect.arrayContaining(['backup-pipeline-cli', 'backup-pipeline-core', 'backup-pipeline-sandbox', 'backup-pipeline-testing', 'backup-pipeline-plugin-pg-dump']));
    for (const name of publishable) {
      const list = await execa('tar', ['-tzf', tarballs[name]!]);
      const files = list.stdout.split('\n');
      expect(files, name).toContain('package/LICENSE');
      expect(files, name).toContain('package/README.md');
      expect(files.filter((f) => /\.test\.|\/src\/|test-fixtures/.test(f)), name).toEqual([]);
      const manifest = JSON.parse((await execa('tar', ['-xzOf', tarballs[name]!, 'package/package.json'])).stdout) as Record<string, unknown>;
      expect(manifest.license, name).toBe('MIT');
      expect(manifest.repository, name).toMatchObject({ type: 'git' });
      expect(manifest.publishConfig, name).toEqual({ access: 'public' });
      expect(manifest.engines, name).toEqual({ node: '>=20.19' });
    }
  });
});

describe('an install into one prefix from the tarballs', () => {
  it('is a real copy outside the checkout, with no test server in its production tree', async () => {
    const cli = await realpath(join(prefix, 'node_modules', '@backup-pipeline', 'cli'));
    expect(cli.startsWith(ROOT + sep)).toBe(false);
    expect(cli).toBe(join(await realpath(prefix), 'node_modules', '@backup-pipeline', 'cli'));
    for (const name of TEST_SERVERS) expect(existsSync(join(prefix, 'node_modules', name)), name).toBe(false);
    const tree = await npm(['ls', '--prefix', prefix, '--all', '--parseable', '--omit=dev'], base);
    expect(tree.exitCode, tree.all).toBe(0);
    for (const name of TEST_SERVERS) expect(tree.stdout.split('\n').filter((p) => p.endsWith(`${sep}${name}`)), name).toEqual([]);
    // One core for the CLI and every plugin: no nested copy anywhere.
    expect(tree.stdout.split('\n').filter((p) => p.endsWith(join('@backup-pipeline', 'core')))).toEqual([join(prefix, 'node_modules', '@backup-pipeline', 'core')]);
    // The one-pass stream's splicing tee ships with the core (without it, coreutils' tee copies).
    expect(existsSync(join(prefix, 'node_modules', '@backup-pipeline', 'core', 'libexec', 'splice-tee.pl'))).toBe(true);
  });

  it('pipeline --version', async () => {
    const version = JSON.parse(await readFile(join(ROOT, 'packages', 'cli', 'package.json'), 'utf8')).version as string;
    const out = await pipeline(['--version'], '/');
    expect(out.exitCode, out.stderr).toBe(0);
    expect(out.stdout.trim()).toBe(version);
  });

  it('pipeline validate, from / as systemd and cron start it', async () => {
    const config = join(etc, 'pipeline.config.yaml');
    await writeFile(
      config,
      `workDir: ${join(base, 'var', 'work')}
destinations:
  copies: { use: local, path: ${join(base, 'var', 'sets')} }
  offsite: { use: rsync, target: backup@backup.example:/srv/mastodon }
pipelines:
  nightly:
    source: mastodon
    stages:
      - use: credentials
        envFile: ${join(base, 'live', '.env.production')}
      - use: pg-dump
        lockWaitTimeout: 5min
      - use: verify
        restoreTest: true
      - use: retention
        keepDaily: 7
    destinations: [copies, offsite]
`,
    );
    const out = await pipeline(['validate', '--config', config], '/');
    expect(out.stderr).toBe('');
    expect(out.exitCode).toBe(0);
    expect(out.stdout).toContain('pipeline nightly: credentials → pg-dump → verify → retention ⇒ copies, offsite');
  });

  it('pipeline demo: a throwaway database backed up, restored and compared, all from the installed packages', async () => {
    const out = await pipeline(['demo', '--dir', join(base, 'demo'), '--scale', 'tiny'], base);
    expect(out.stderr).toBe('');
    expect(out.exitCode).toBe(0);
    expect(out.stdout).toContain('the restored database is identical to the source, table by table.');
  }, 600_000);

  it('an outside plugin package installed into the same prefix loads with the CLI\'s core and ships a set', async () => {
    const installed = await npm(['install', '--prefix', prefix, ...CLOSED_SCOPE, tarballs['backup-pipeline-plugin-dated-folder']!], base);
    expect(installed.exitCode, installed.all).toBe(0);
    const plugin = join(prefix, 'node_modules', 'backup-pipeline-plugin-dated-folder');
    expect(existsSync(join(plugin, 'package.json'))).toBe(true);
    // Its @backup-pipeline/core peer is the CLI's, not a copy of its own.
    expect(existsSync(join(plugin, 'node_modules', '@backup-pipeline', 'core'))).toBe(false);

    const config = join(etc, 'dated.config.yaml');
    const archive = join(base, 'var', 'archive');
    await writeFile(
      config,
      `workDir: ${join(base, 'var', 'dated-work')}
destinations:
  archive:
    use: dated-folder          # backup-pipeline-plugin-dated-folder, installed in the CLI's prefix
    path: ${archive}
    layout: year/month/day
pipelines:
  files:
    source: host
    stages:
      - use: command
        command: [sh, -c, 'echo hello > "$BACKUP_OUTPUT_DIR/hello.txt"']
    destinations: [archive]
`,
    );
    const validate = await pipeline(['validate', '--config', config], '/');
    expect(validate.stderr).toBe('');
    expect(validate.exitCode).toBe(0);
    expect(validate.stdout).toContain('pipeline files: command ⇒ archive');

    const run = await pipeline(['run', 'files', '--config', config, '--log-format', 'json'], '/');
    expect(run.exitCode, run.stderr).toBe(0);
    const sets: string[] = [];
    for (const year of await readdir(archive)) {
      for (const month of await readdir(join(archive, year))) {
        for (const day of await readdir(join(archive, year, month))) {
          for (const set of await readdir(join(archive, year, month, day))) sets.push(join(archive, year, month, day, set));
        }
      }
    }
    expect(sets).toHaveLength(1);
    expect((await readdir(sets[0]!)).sort()).toEqual(['hello.txt', 'manifest.json']);
  });
});
