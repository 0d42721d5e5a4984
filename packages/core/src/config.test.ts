import { mkdir, mkdtemp, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { CONFIG_MAX_BYTES, findConfig, interpolate, loadConfig, resolveConfig, formatPath, SYSTEM_CONFIG_DIR_ENV, type Problem } from './config.js';
import { SecretRegistry } from './secrets.js';
import { tempDir } from './test-fixtures.js';

const CORE_DIR = resolve(fileURLToPath(import.meta.url), '../..');

/** A plugin package in a temp folder outside the repository, as a community author would publish it. */
async function communityProject(pluginSource: string, name = 'backup-pipeline-plugin-hello'): Promise<string> {
  const project = await tempDir('bp-community-');
  const pkg = join(project, 'node_modules', name);
  await mkdir(pkg, { recursive: true });
  await mkdir(join(project, 'node_modules', '@backup-pipeline'), { recursive: true });
  await symlink(CORE_DIR, join(project, 'node_modules', '@backup-pipeline', 'core'));
  await writeFile(join(pkg, 'package.json'), JSON.stringify({ name, version: '1.0.0', type: 'module', exports: { '.': { default: './index.js' } } }));
  await writeFile(join(pkg, 'index.js'), pluginSource);
  return project;
}

const HELLO_PLUGIN = `
import { definePlugin, z } from '@backup-pipeline/core';
export default definePlugin({
  name: 'hello',
  description: 'says hello',
  options: z.object({ greeting: z.string().min(1), times: z.number().int().positive().default(1) }).strict(),
  apply(hooks, options) {
    hooks.preflight.tapPromise('hello', async (ctx) => { ctx.facts.greeting = options.greeting.repeat(options.times); });
  },
});
`;

async function write(dir: string, name: string, text: string): Promise<string> {
  const file = join(dir, name);
  await writeFile(file, text);
  return file;
}

describe('config validation', () => {
  it('reports every problem at once with its exact path', async () => {
    const project = await communityProject(HELLO_PLUGIN);
    const file = await write(
      project,
      'pipeline.config.yaml',
      `
workDir: ./backups
timezone: Mars/Olympus
colour: blue
destinations:
  offsite: { use: hello }
pipelines:
  nightly:
    stages:
      - use: hello
        greeting: ""
        times: -2
        extra: true
      - use: no-such-plugin
    destinations: [offsite, missing]
  "bad name":
    stages: []
`,
    );
    const error = await loadConfig({ file, cwd: project }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'CONFIG_INVALID', exitCode: 2 });
    const problems = (error as { details: { problems: Problem[] } }).details.problems.map((p) => `${p.path}: ${p.message}`);
    expect(problems).toMatchInlineSnapshot(`
      [
        "timezone: not a known IANA time zone",
        "pipelines.bad name: invalid name: use letters, digits, "-" and "_" (starting with a letter or digit)",
        "(root): Unrecognized key: "colour"",
        "destinations.offsite.use: plugin "hello" is not a destination type",
        "pipelines.nightly.stages[0].greeting: Too small: expected string to have >=1 characters",
        "pipelines.nightly.stages[0].times: Too small: expected number to be >0",
        "pipelines.nightly.stages[0]: Unrecognized key: "extra"",
        "pipelines.nightly.stages[1].use: plugin "no-such-plugin" is not installed (looked for @backup-pipeline/plugin-no-such-plugin, no-such-plugin, backup-pipeline-plugin-no-such-plugin)",
        "pipelines.nightly.destinations[1]: destination "missing" is not declared under destinations:",
      ]
    `);
  });

  it('loads a community plugin package by name from the config folder, outside the repository', async () => {
    const project = await communityProject(HELLO_PLUGIN);
    await write(project, 'pipeline.config.json', JSON.stringify({ pipelines: { nightly: { stages: [{ use: 'hello', greeting: 'hi', times: 2 }] } } }));
    const config = await loadConfig({ cwd: project });
    const stage = config.pipelines.nightly!.stages[0]!;
    expect(stage.plugin.name).toBe('hello');
    expect(stage.options).toEqual({ greeting: 'hi', times: 2 });
    expect(config.workDir).toBe(join(project, 'backups'));
  });

  it('rejects a module that is not a plugin, and two modules claiming one plugin name', async () => {
    const project = await communityProject('export default { name: "fake" };', 'not-a-plugin');
    await mkdir(join(project, 'node_modules', 'hello-copy'), { recursive: true });
    await writeFile(join(project, 'node_modules', 'hello-copy', 'package.json'), JSON.stringify({ name: 'hello-copy', type: 'module', exports: { '.': './index.js' } }));
    await writeFile(join(project, 'node_modules', 'hello-copy', 'index.js'), HELLO_PLUGIN);
    await writeFile(join(project, 'hello.mjs'), HELLO_PLUGIN);
    const file = await write(
      project,
      'pipeline.config.json',
      JSON.stringify({ pipelines: { a: { stages: [{ use: 'not-a-plugin' }, { use: 'hello-copy', greeting: 'x' }, { use: './hello.mjs', greeting: 'y' }] } } }),
    );
    const error = await loadConfig({ file }).catch((e: unknown) => e);
    const problems = (error as { details: { problems: Problem[] } }).details.problems;
    expect(problems[0]!.path).toBe('pipelines.a.stages[0].use');
    expect(problems[0]!.message).toMatch(/is not a backup-pipeline plugin/);
    expect(problems[1]!.path).toBe('pipelines.a.stages[2].use');
    expect(problems[1]!.message).toMatch(/plugin name "hello" .* is already taken/);
  });

  it('names a missing config file and an unreadable one', async () => {
    const dir = await tempDir();
    const env = { XDG_CONFIG_HOME: join(dir, 'xdg'), [SYSTEM_CONFIG_DIR_ENV]: join(dir, 'etc') };
    await expect(loadConfig({ cwd: dir, env })).rejects.toMatchObject({ code: 'CONFIG_NOT_FOUND', exitCode: 2 });
    await expect(loadConfig({ file: join(dir, 'nope.yaml') })).rejects.toMatchObject({ code: 'CONFIG_NOT_FOUND' });
    const broken = await write(dir, 'broken.yaml', 'pipelines: [unclosed\n');
    await expect(loadConfig({ file: broken })).rejects.toMatchObject({ code: 'CONFIG_UNREADABLE' });
  });

  it('fills ${ENV} and ${file:…} references, registers them as secrets, and names unset variables', async () => {
    const dir = await tempDir();
    await writeFile(join(dir, 'secret.txt'), 's3cr3t:with\\colon\n');
    const secrets = new SecretRegistry();
    const problems: Problem[] = [];
    const out = interpolate(
      { a: '${HOME_DIR}/x', b: ['${file:secret.txt}'], c: '${NOPE}', d: '${NOPE:-fallback}', e: '$${LITERAL}', f: '${DB_PASSWORD}' },
      { HOME_DIR: '/home/m', DB_PASSWORD: 'pw-from-env' },
      dir,
      secrets,
      problems,
    );
    expect(out).toEqual({ a: '/home/m/x', b: ['s3cr3t:with\\colon'], c: '', d: 'fallback', e: '${LITERAL}', f: 'pw-from-env' });
    expect(problems).toEqual([{ path: 'c', message: 'environment variable NOPE is not set' }]);
    expect(secrets.mask('s3cr3t:with\\colon and pw-from-env and /home/m')).toBe('*** and *** and /home/m');
  });

  it('formats paths like pipelines.nightly.stages[3].recipients', () => {
    expect(formatPath(['pipelines', 'nightly', 'stages', 3, 'recipients'])).toBe('pipelines.nightly.stages[3].recipients');
    expect(formatPath([])).toBe('(root)');
  });

  it('resolves ~ in workDir and in a destination\'s declared folders from HOME, and refuses a staging work dir that holds a destination', async () => {
    const project = await communityProject(
      `
import { definePlugin, z } from '@backup-pipeline/core';
export default definePlugin({
  name: 'folder',
  description: 'a folder destination (and a stage that does nothing)',
  options: z.object({}).strict(),
  apply() {},
  destination: {
    options: z.object({ path: z.string() }).strict(),
    create() { throw new Error('not needed'); },
    writablePaths: (o, api) => [api.resolvePath(o.path)],
  },
});
`,
      'backup-pipeline-plugin-folder',
    );
    const home = join(project, 'home');
    const content = (keepInWorkDir: boolean, path: string) => ({ workDir: '~/bp', keepInWorkDir, destinations: { copy: { use: 'folder', path } }, pipelines: { x: { stages: [{ use: 'folder' }], destinations: ['copy'] } } });
    const file = join(project, 'pipeline.config.mjs');
    expect((await resolveConfig(file, content(true, '~/bp/sets'), { cwd: project, env: { HOME: home } })).workDir).toBe(join(home, 'bp'));
    expect((await resolveConfig(file, content(false, '~/elsewhere'), { cwd: project, env: { HOME: home } })).workDir).toBe(join(home, 'bp'));
    const refused = await resolveConfig(file, content(false, '~/bp/sets'), { cwd: project, env: { HOME: home } }).catch((e: unknown) => e);
    expect((refused as { details?: { problems?: Problem[] } }).details?.problems).toEqual([
      { path: 'destinations.copy', message: expect.stringContaining(`writes to ${join(home, 'bp', 'sets')}, which overlaps workDir ${join(home, 'bp')}`) },
    ]);
  });

  it('validates content given directly (config as code)', async () => {
    const project = await communityProject(HELLO_PLUGIN);
    const config = await resolveConfig(join(project, 'pipeline.config.mjs'), { pipelines: { x: { source: 'mastodon', stages: [{ use: 'hello', greeting: 'a' }] } } }, { cwd: project });
    expect(config.pipelines.x!.source).toBe('mastodon');
  });
});

/** A YAML "billion laughs" under 500 bytes: each level holds the one before nine times, 9⁹ nodes in all. */
const ALIAS_BOMB = [
  'a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]',
  ...'bcdefghi'.split('').map((c, i) => `${c}: &${c} [${Array(9).fill(`*${'abcdefghi'[i]}`).join(',')}]`),
  'pipelines: { x: { stages: [ { use: "*i" } ] } }',
].join('\n');

describe('config limits', () => {
  it('refuses a YAML alias bomb at once, naming the file (exit 2), and still accepts a few aliases', async () => {
    const dir = await tempDir();
    expect(ALIAS_BOMB.length).toBeLessThan(500);
    const bomb = await write(dir, 'pipeline.config.yaml', ALIAS_BOMB);
    const error = await loadConfig({ file: bomb }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'CONFIG_INVALID', exitCode: 2 });
    expect((error as Error).message).toBe(`${bomb} expands YAML aliases (*name) more than 100 times; refusing to load it`);
    // Found by the search, too.
    await expect(loadConfig({ cwd: dir })).rejects.toMatchObject({ code: 'CONFIG_INVALID' });
    const fine = await write(
      dir,
      'fine.yaml',
      'x-stage: &dump { use: pg-dump, lockWaitTimeout: 1min }\npipelines:\n  a: { stages: [*dump] }\n  b: { stages: [{ <<: *dump, format: plain }] }\n',
    );
    const { content } = await findConfig({ file: fine });
    expect(content).toMatchObject({ pipelines: { a: { stages: [{ use: 'pg-dump' }] }, b: { stages: [{ use: 'pg-dump', format: 'plain', lockWaitTimeout: '1min' }] } } });
  });

  it.each([
    ['pipeline.config.yaml', (n: number) => `# ${'x'.repeat(n)}\npipelines: {}\n`],
    ['pipeline.config.json', (n: number) => `{"pipelines": {}, "$schema": "${'x'.repeat(n)}"}`],
    ['.pipelinerc', (n: number) => `# ${'x'.repeat(n)}\n`],
  ])('refuses %s larger than 1 MiB, given or found, before parsing it', async (name, text) => {
    const dir = await tempDir();
    const file = await write(dir, name, text(CONFIG_MAX_BYTES));
    for (const options of [{ file }, { cwd: dir }]) {
      const error = await loadConfig(options).catch((e: unknown) => e);
      expect(error).toMatchObject({ code: 'CONFIG_INVALID', exitCode: 2 });
      expect((error as Error).message).toMatch(new RegExp(`^${file.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')} is \\d+ bytes; a config file may be at most 1048576 bytes \\(1 MiB\\)$`));
    }
  });
});

describe('config limits: ${file:…}', () => {
  it('refuses a referenced file over 64 KiB, and /dev/zero, naming the path, without reading it all', async () => {
    const dir = await tempDir();
    await writeFile(join(dir, 'big'), 'x'.repeat(64 * 1024 + 1));
    await writeFile(join(dir, 'ok'), `${'y'.repeat(64 * 1024 - 1)}\n`);
    const secrets = new SecretRegistry();
    const problems: Problem[] = [];
    const out = interpolate({ a: '${file:big}', b: '${file:/dev/zero}', c: '${file:ok}' }, {}, dir, secrets, problems);
    expect(problems).toEqual([
      { path: 'a', message: `cannot read ${join(dir, 'big')}: larger than 65536 bytes` },
      { path: 'b', message: 'cannot read /dev/zero: larger than 65536 bytes' },
    ]);
    expect((out as { c: string }).c).toHaveLength(64 * 1024 - 1);
  });
});

describe('config discovery', () => {
  const CONFIG = 'pipelines:\n  nightly:\n    stages: [{ use: retention, keepLast: 1 }]\n';

  /** A root with a project folder (cwd), an XDG_CONFIG_HOME and a system folder, none of them real. */
  async function places() {
    const root = await mkdtemp(join(tmpdir(), 'bp-discovery-'));
    const cwd = join(root, 'project', 'sub');
    const xdg = join(root, 'xdg');
    const system = join(root, 'etc', 'backup-pipeline');
    for (const d of [cwd, join(xdg, 'backup-pipeline'), system]) await mkdir(d, { recursive: true });
    return { root, cwd, xdg, system, env: { HOME: join(root, 'home'), XDG_CONFIG_HOME: xdg, [SYSTEM_CONFIG_DIR_ENV]: system } };
  }

  it('takes --config, then the working directory and its parents, then $XDG_CONFIG_HOME/backup-pipeline, then the system folder', async () => {
    const p = await places();
    const system = await write(p.system, 'pipeline.config.yaml', CONFIG);
    expect(await findConfig({ cwd: p.cwd, env: p.env })).toMatchObject({ file: system, found: 'system' });
    const user = await write(join(p.xdg, 'backup-pipeline'), 'pipeline.config.yml', CONFIG);
    expect(await findConfig({ cwd: p.cwd, env: p.env })).toMatchObject({ file: user, found: 'user' });
    const parent = await write(join(p.root, 'project'), '.pipelinerc.json', JSON.stringify({ pipelines: {} }));
    expect(await findConfig({ cwd: p.cwd, env: p.env })).toMatchObject({ file: parent, found: 'cwd' });
    const here = await write(p.cwd, 'pipeline.config.json', JSON.stringify({ pipelines: {} }));
    expect(await findConfig({ cwd: p.cwd, env: p.env })).toMatchObject({ file: here, found: 'cwd' });
    expect(await findConfig({ cwd: p.cwd, env: p.env, file: system })).toMatchObject({ file: system, found: 'option' });
  });

  it('uses ~/.config when XDG_CONFIG_HOME is unset (or not absolute), and names every place it looked', async () => {
    const p = await places();
    const env = { HOME: join(p.root, 'home'), XDG_CONFIG_HOME: 'relative', [SYSTEM_CONFIG_DIR_ENV]: p.system };
    const error = await findConfig({ cwd: p.cwd, env }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'CONFIG_NOT_FOUND' });
    expect((error as Error).message).toContain(`nor in ${join(p.root, 'home', '.config', 'backup-pipeline')}/ or ${p.system}/`);
    await mkdir(join(p.root, 'home', '.config', 'backup-pipeline'), { recursive: true });
    const home = await write(join(p.root, 'home', '.config', 'backup-pipeline'), 'pipeline.config.yaml', CONFIG);
    expect(await findConfig({ cwd: p.cwd, env: { ...env, XDG_CONFIG_HOME: '' } })).toMatchObject({ file: home, found: 'user' });
  });

  it('does not take a package.json from a configuration folder', async () => {
    const p = await places();
    await write(p.system, 'package.json', JSON.stringify({ name: 'x', pipeline: { pipelines: {} } }));
    await expect(findConfig({ cwd: p.cwd, env: p.env })).rejects.toMatchObject({ code: 'CONFIG_NOT_FOUND' });
  });
});
