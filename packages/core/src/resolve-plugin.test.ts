/**
 * Plugin resolution and the one supported layout: a plugin package must load the same
 * `@backup-pipeline/core` as the command that runs it; one with a core of its own is refused with
 * the command that installs it in the right place.
 */
import { cp, mkdir, mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isPipelineError } from './errors.js';
import { resolvePlugin } from './resolve-plugin.js';

const CORE_DIR = resolve(fileURLToPath(import.meta.url), '../..');
const PLUGIN = `import { definePlugin } from '@backup-pipeline/core';
export default definePlugin({ name: 'hello', description: 'says hello', apply() {} });
`;

let base: string;

/** A folder with `node_modules/<name>` (the plugin) and `node_modules/@backup-pipeline/core` made by `core`. */
async function project(name: string, core: (target: string) => Promise<void>): Promise<string> {
  const dir = await mkdtemp(join(base, 'project-'));
  const pkg = join(dir, 'node_modules', name);
  await mkdir(pkg, { recursive: true });
  await mkdir(join(dir, 'node_modules', '@backup-pipeline'), { recursive: true });
  await core(join(dir, 'node_modules', '@backup-pipeline', 'core'));
  await writeFile(join(pkg, 'package.json'), JSON.stringify({ name, version: '1.0.0', type: 'module', exports: { '.': { default: './index.js' } } }));
  await writeFile(join(pkg, 'index.js'), PLUGIN);
  return dir;
}

beforeAll(async () => {
  base = await mkdtemp(join(tmpdir(), 'bp-resolve-'));
});
afterAll(async () => {
  if (base) await rm(base, { recursive: true, force: true });
});

describe('resolvePlugin', () => {
  it('loads a plugin package whose core is the running one (a link to it, as one prefix gives)', async () => {
    const dir = await project('backup-pipeline-plugin-hello', (target) => symlink(CORE_DIR, target, 'dir'));
    const { plugin, file } = await resolvePlugin('hello', [dir], dir);
    expect(plugin.name).toBe('hello');
    expect(file).toBe(join(dir, 'node_modules', 'backup-pipeline-plugin-hello', 'index.js'));
  });

  it('refuses a plugin package that would load another copy of the core, saying where to install it', async () => {
    const dir = await project('backup-pipeline-plugin-hello', async (target) => {
      await mkdir(target);
      await cp(join(CORE_DIR, 'package.json'), join(target, 'package.json'));
      await cp(join(CORE_DIR, 'dist'), join(target, 'dist'), { recursive: true });
    });
    const error = await resolvePlugin('hello', [dir], dir).catch((e: unknown) => e);
    expect(isPipelineError(error)).toBe(true);
    const e = error as { code: string; message: string; hint?: string };
    expect(e.code).toBe('PLUGIN_INVALID');
    expect(e.message).toContain(`would load another copy of @backup-pipeline/core (${join(dir, 'node_modules', '@backup-pipeline', 'core')})`);
    expect(e.message).toContain('npm install --prefix');
    expect(e.message).toContain('backup-pipeline-plugin-hello');
  });

  it('a missing plugin: PLUGIN_NOT_FOUND with the names tried and the prefix install as the hint', async () => {
    const error = await resolvePlugin('no-such-thing', [base], base).catch((e: unknown) => e);
    const e = error as { code: string; message: string; hint?: string };
    expect(e.code).toBe('PLUGIN_NOT_FOUND');
    expect(e.message).toBe('plugin "no-such-thing" is not installed (looked for @backup-pipeline/plugin-no-such-thing, no-such-thing, backup-pipeline-plugin-no-such-thing)');
    expect(e.hint).toMatch(/npm install --prefix \S+ backup-pipeline-plugin-no-such-thing/);
  });
});
