/**
 * What a community destination author runs: the shared conformance suite, and a real pipeline
 * that loads this package by name from a config file, the way `pipeline run` does.
 */
import { mkdir, mkdtemp, readdir, realpath, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createDestination, createLogger, listSets, loadConfig, resolvePlugin, Runner, SecretRegistry } from '@backup-pipeline/core';
import { describeDestinationConformance } from '@backup-pipeline/testing/conformance';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import plugin from './index.js';

const packageDir = dirname(dirname(fileURLToPath(import.meta.url)));
const coreDir = dirname(fileURLToPath(import.meta.resolve('@backup-pipeline/core/package.json')));

async function make(path: string, layout?: string) {
  const secrets = new SecretRegistry();
  const log = await createLogger({ secrets, level: 'silent' });
  const options = plugin.destination!.options.parse({ path, layout });
  return plugin.destination!.create(options, { name: plugin.name, log, secrets, configDir: '/', resolvePath: (p) => p });
}

for (const layout of ['year/month', 'year/month/day'] as const) {
  describeDestinationConformance(
    `dated-folder (${layout})`,
    async () => {
      const root = await mkdtemp(join(tmpdir(), 'dated-folder-'));
      return { destination: await make(join(root, 'sets'), layout), teardown: () => rm(root, { recursive: true, force: true }) };
    },
    { largeFileBytes: 16 * 1024 * 1024 },
  );
}

describe('dated-folder layout', () => {
  let root: string;
  beforeAll(async () => void (root = await mkdtemp(join(tmpdir(), 'dated-folder-layout-'))));
  afterAll(() => rm(root, { recursive: true, force: true }));

  it('files sets under YYYY/MM/<set id>/ and removes date folders a delete leaves empty', async () => {
    const d = await make(join(root, 'a'));
    const src = join(root, 'src.txt');
    await writeFile(src, 'x');
    const source = { path: src, bytes: 1, sha256: '2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881' };
    await d.put('20301231T235959Z-db', 'x.txt', source);
    await d.put('20310101T000000Z-db', 'x.txt', source);
    expect((await stat(join(root, 'a/2030/12/20301231T235959Z-db/x.txt'))).isFile()).toBe(true);
    expect((await stat(join(root, 'a/2031/01/20310101T000000Z-db/x.txt'))).isFile()).toBe(true);
    await d.delete('20301231T235959Z-db');
    expect(await readdir(join(root, 'a'))).toEqual(['2031']);
  });

  it('ignores folders that are not filed where their set id says', async () => {
    const d = await make(join(root, 'b'));
    await mkdir(join(root, 'b/2030/02/20300101T000000Z-misfiled'), { recursive: true });
    await mkdir(join(root, 'b/2030/01/not-a-set'), { recursive: true });
    expect(await d.list()).toEqual([]);
  });

  it('rejects unknown options and an unknown layout', () => {
    expect(plugin.destination!.options.safeParse({ path: '/x', extra: 1 }).success).toBe(false);
    expect(plugin.destination!.options.safeParse({ path: '/x', layout: 'YYYY' }).success).toBe(false);
    expect(plugin.destination!.options.parse({ path: '/x' })).toEqual({ path: '/x', layout: 'year/month' });
  });
});

/**
 * A throwaway project: a config file, this package installed under node_modules (a symlink, as
 * `npm link` would make), the core it peer-depends on, and a one-file producer stage.
 */
describe('dated-folder loaded by name from a config file', () => {
  let project: string;
  beforeAll(async () => {
    project = await mkdtemp(join(tmpdir(), 'dated-folder-project-'));
    await mkdir(join(project, 'node_modules/@backup-pipeline'), { recursive: true });
    await symlink(packageDir, join(project, 'node_modules/backup-pipeline-plugin-dated-folder'), 'dir');
    await symlink(coreDir, join(project, 'node_modules/@backup-pipeline/core'), 'dir');
    await writeFile(
      join(project, 'producer.mjs'),
      `import { join } from 'node:path';
import { definePlugin, writeFileAtomic, z } from '@backup-pipeline/core';

export default definePlugin({
  name: 'hello-producer',
  description: 'writes one small artifact',
  options: z.object({ text: z.string().default('hello') }).strict(),
  apply(hooks, options) {
    hooks.produce.tapPromise('hello-producer', async (ctx) => {
      const path = join(ctx.setDir, 'hello.txt');
      const digest = await writeFileAtomic(path, options.text + '\\n', { signal: ctx.signal });
      ctx.addArtifact({ name: 'hello.txt', path, kind: 'file', format: 'file', compression: 'none', meta: {}, ...digest });
    });
  },
});
`,
    );
    await writeFile(
      join(project, 'pipeline.config.yaml'),
      `workDir: ./work
destinations:
  archive:
    use: dated-folder        # → backup-pipeline-plugin-dated-folder in ./node_modules
    path: ./archive
    layout: year/month/day
pipelines:
  nightly:
    source: demo
    stages:
      - use: ./producer.mjs
        text: hello from a config file
    destinations: [archive]
`,
    );
  });
  afterAll(() => rm(project, { recursive: true, force: true }));

  it('resolves `dated-folder` to backup-pipeline-plugin-dated-folder in the project', async () => {
    const { plugin: resolved, file } = await resolvePlugin('dated-folder', [project], project);
    expect(resolved.name).toBe('dated-folder');
    expect(file).toBe(join(await realpath(packageDir), 'src/index.js'));
  });

  it('ships a real run to it; listSets shows the set complete, filed by date', async () => {
    const config = await loadConfig({ cwd: project, pluginSearchDirs: [] });
    expect(config.destinations.archive).toMatchObject({ plugin: { name: 'dated-folder' }, options: { path: './archive', layout: 'year/month/day' } });
    const log = await createLogger({ secrets: config.secrets, level: 'silent' });
    const now = new Date(Date.UTC(2030, 4, 17, 1, 45, 0));
    const result = await new Runner(config, log).run('nightly', { now: () => now });
    expect(result.summary).toMatchObject({ ok: true, setId: '20300517T014500Z-demo', destinations: [{ destination: 'archive', ok: true, files: 2 }] });

    const { destination } = await createDestination(config, config.destinations.archive!, log);
    const sets = await listSets(destination);
    expect(sets).toHaveLength(1);
    expect(sets[0]).toMatchObject({ id: '20300517T014500Z-demo', complete: true, source: 'demo' });
    expect(sets[0]!.manifest!.artifacts).toEqual([expect.objectContaining({ name: 'hello.txt', bytes: 'hello from a config file\n'.length })]);
    expect(sets[0]!.manifest!.stages).toEqual([expect.objectContaining({ plugin: 'hello-producer', hook: 'produce', result: 'ok' })]);
    const setDir = join(project, 'archive/2030/05/17/20300517T014500Z-demo');
    expect((await readdir(setDir)).sort()).toEqual(['hello.txt', 'manifest.json']);
    expect((await stat(join(setDir, 'hello.txt'))).mode & 0o777).toBe(0o600);
  });
});
