/** The `pipeline` command through a real child process: exit codes, output, signals. */
import { mkdir, mkdtemp, readdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { execa } from 'execa';
import { describe, expect, it } from 'vitest';

const CLI_DIR = resolve(fileURLToPath(import.meta.url), '../..');
const BIN = join(CLI_DIR, 'bin', 'pipeline.js');
const CORE_DIR = resolve(CLI_DIR, '../core');

function pipeline(args: string[], cwd: string, env: Record<string, string> = {}) {
  return execa(process.execPath, [BIN, ...args], { cwd, reject: false, env: { NO_COLOR: '1', CI: 'true', ...env } });
}

/** A project folder with test plugins that import the core like a community package would. */
async function project(config: unknown): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'bp-cli-'));
  await mkdir(join(dir, 'node_modules', '@backup-pipeline'), { recursive: true });
  await symlink(CORE_DIR, join(dir, 'node_modules', '@backup-pipeline', 'core'));
  await writeFile(
    join(dir, 'plugins.mjs'),
    `
import { definePlugin, LocalFolderDestination, writeFileAtomic, z } from '@backup-pipeline/core';
import { join } from 'node:path';
export default definePlugin({
  name: 'fixture',
  description: 'writes a file, optionally slowly or never; also a folder destination',
  destination: { options: z.object({ path: z.string() }).strict(), create: (o, api) => new LocalFolderDestination(api.resolvePath(o.path)) },
  options: z.object({ mode: z.enum(['ok', 'slow', 'never']).default('ok') }).strict(),
  apply(hooks, options) {
    hooks.produce.tapPromise('fixture', async (ctx) => {
      if (options.mode === 'slow') await ctx.exec('sleep', ['30']);
      if (options.mode === 'never') await new Promise(() => {});
      const path = join(ctx.setDir, 'data.txt');
      const digest = await writeFileAtomic(path, 'data');
      ctx.addArtifact({ name: 'data.txt', path, kind: 'test', format: 'file', compression: 'none', meta: {}, ...digest });
    });
    hooks.plan.tapPromise('fixture', async (plan) => plan.add({ plugin: 'fixture', hook: 'produce', description: 'write data.txt', command: 'echo data' }));
  },
});
`,
  );
  await writeFile(join(dir, 'pipeline.config.json'), JSON.stringify(config, null, 2));
  return dir;
}

const config = (mode = 'ok') => ({
  workDir: './work',
  destinations: { copy: { use: './plugins.mjs', path: './copy' } },
  pipelines: { nightly: { stages: [{ use: './plugins.mjs', mode }], destinations: ['copy'] } },
});

describe('pipeline CLI', () => {
  it('prints help with the exit codes, and its version', async () => {
    const dir = await project(config());
    const help = await pipeline(['--help'], dir);
    expect(help.exitCode).toBe(0);
    expect(help.stdout).toMatchSnapshot();
    const runHelp = await pipeline(['run', '--help'], dir);
    expect(runHelp.stdout).toContain('--dry-run');
    expect(runHelp.stdout).toContain('75   another run of this pipeline holds the lock');
    expect((await pipeline(['--version'], dir)).stdout).toMatch(/^\d+\.\d+\.\d+$/);
  });

  it('bare `pipeline` prints the help on stderr and exits 1, like npm and git without a command', async () => {
    const dir = await project(config());
    const bare = await pipeline([], dir);
    expect(bare.exitCode).toBe(1);
    expect(bare.stdout).toBe('');
    expect(bare.stderr).toBe((await pipeline(['--help'], dir)).stdout);
  });

  it('exits 2 on usage errors', async () => {
    const dir = await project(config());
    expect((await pipeline(['frobnicate'], dir)).exitCode).toBe(2);
    expect((await pipeline(['run', '--no-such-flag'], dir)).exitCode).toBe(2);
    const unknown = await pipeline(['run', 'weekly'], dir);
    expect(unknown.exitCode).toBe(2);
    expect(unknown.stderr).toContain('no pipeline named "weekly"');
  });

  it('validate lists every problem with its path and exits 2', async () => {
    const dir = await project({
      pipelines: { nightly: { stages: [{ use: './plugins.mjs', mode: 'sometimes' }, { use: 'pg-dump', format: 'custom', jobs: 4 }], destinations: ['nowhere'] } },
      retention: 3,
    });
    const result = await pipeline(['validate'], dir);
    expect(result.exitCode).toBe(2);
    expect(result.stderr.replaceAll(dir, '<dir>')).toMatchSnapshot();
  });

  it('validate accepts a good config', async () => {
    const dir = await project(config());
    const result = await pipeline(['validate'], dir);
    expect(result.exitCode).toBe(0);
    expect(result.stdout).toContain('pipeline nightly: fixture ⇒ copy');
  });

  it('runs a pipeline, ships it, and prints a summary; --json gives the summary as JSON', async () => {
    const dir = await project(config());
    const run = await pipeline(['run', 'nightly'], dir);
    expect(run.exitCode, run.stderr).toBe(0);
    // On success stderr holds only info-level JSON records (not a terminal; progress is a record
    // too): no warning, no error, and it says where the set went.
    const lines = run.stderr.split('\n').filter(Boolean);
    const logs = lines.filter((l) => l.startsWith('{')).map((l) => JSON.parse(l) as { level: number; msg: string; destination?: string });
    expect(lines.filter((l) => !l.startsWith('{'))).toEqual([]);
    expect(logs.filter((l) => l.level > 30)).toEqual([]);
    expect(logs).toContainEqual(expect.objectContaining({ destination: 'copy', msg: 'shipped to copy' }));
    expect(run.stdout).toMatch(/^ok nightly: set \d{8}T\d{6}Z-nightly in/);
    expect(await readdir(join(dir, 'copy'))).toHaveLength(1);
    const json = await pipeline(['run', '--json', '--log-level', 'silent'], dir);
    expect(JSON.parse(json.stdout)).toMatchObject({ ok: true, pipeline: 'nightly', destinations: [{ destination: 'copy', ok: true }] });
  });

  it("a dependency's process warnings are log records (one JSON line each), never Node's plain lines on stderr", async () => {
    const dir = await project(config());
    // One warning while the plugin loads (before the logger exists), one just after.
    const plugin = join(dir, 'plugins.mjs');
    await writeFile(plugin, `process.emitWarning('old API\\nread the docs', 'DeprecationWarning');\nsetTimeout(() => process.emitWarning('later notice'), 0);\n${await readFile(plugin, 'utf8')}`);
    const run = await pipeline(['run', '--log-format', 'json'], dir);
    expect(run.exitCode, run.stderr).toBe(0);
    const records = run.stderr.split('\n').filter(Boolean).map((line) => {
      try {
        return JSON.parse(line) as { level: number; msg: string; warning?: string };
      } catch {
        throw new Error(`not a JSON line on stderr: ${line}`);
      }
    });
    expect(records.filter((r) => r.warning).map((r) => r.msg)).toEqual(['DeprecationWarning: old API read the docs', 'Warning: later notice']);
  });

  it('--dry-run prints the plan and touches nothing', async () => {
    const dir = await project(config());
    const result = await pipeline(['run', '--dry-run'], dir);
    expect(result.exitCode).toBe(0);
    expect(result.stdout).toContain('[fixture → produce] write data.txt');
    expect(result.stdout).toContain('$ echo data');
    expect(await readdir(dir)).not.toContain('copy');
    expect(await readdir(dir)).not.toContain('work');
  });

  it('exits 75 naming the holder when another run holds the lock', async () => {
    const dir = await project(config('slow'));
    const first = pipeline(['run'], dir);
    for (let i = 0; i < 50 && !(await readdir(join(dir, 'work', '.locks')).catch(() => [])).length; i++) await new Promise((r) => setTimeout(r, 100));
    const second = await pipeline(['run'], dir);
    expect(second.exitCode).toBe(75);
    expect(second.stderr).toMatch(/LOCKED: another run holds the lock .* pid \d+/);
    first.kill('SIGTERM');
    await first;
  });

  it.each([
    ['SIGTERM', 143],
    ['SIGINT', 130],
  ] as const)('on %s stops the child, removes the partial set, releases the lock, exits %i', async (signal, code) => {
    const dir = await project(config('slow'));
    const run = pipeline(['run'], dir);
    for (let i = 0; i < 50 && !(await readdir(join(dir, 'work', '.locks')).catch(() => [])).length; i++) await new Promise((r) => setTimeout(r, 100));
    run.kill(signal);
    const result = await run;
    expect(result.exitCode).toBe(code);
    expect(result.stderr).toContain('ABORTED');
    expect((await readdir(join(dir, 'work'))).filter((n) => !n.startsWith('.'))).toEqual([]);
    expect(await readdir(join(dir, 'work', '.locks'))).toEqual([]);
    expect(await readdir(dir)).not.toContain('copy');
  });

  it('fails with a named error, never exit 0, when a plugin promise can never settle', async () => {
    const dir = await project(config('never'));
    const result = await pipeline(['run'], dir);
    expect(result.exitCode).toBe(1);
    expect(result.stderr).toContain('[fixture → produce] STAGE_NEVER_SETTLED');
  });

  it('masks a ${file:…} secret on every channel: plan, --json, list headers, the run summary, errors and logs', async () => {
    const secret = 'tok-5ecr3t';
    const dir = await project({
      workDir: './work',
      destinations: { copy: { use: './plugins.mjs', path: './copy-${file:token.txt}' } },
      pipelines: { nightly: { stages: [{ use: './plugins.mjs' }], destinations: ['copy'] } },
    });
    await writeFile(join(dir, 'token.txt'), `${secret}\n`);
    const outputs = [];
    const plan = await pipeline(['run', '--dry-run'], dir);
    expect(plan.exitCode, plan.stderr).toBe(0);
    expect(plan.stdout).toContain(`ship to "copy": local folder ${join(dir, 'copy-***')}`);
    outputs.push(plan, await pipeline(['run', '--dry-run', '--json'], dir));
    const run = await pipeline(['run'], dir);
    expect(run.exitCode, run.stderr).toBe(0);
    const list = await pipeline(['list'], dir);
    expect(list.stdout).toContain(`copy — local folder ${join(dir, 'copy-***')}`);
    outputs.push(run, list, await pipeline(['list', '--json'], dir), await pipeline(['validate', '--json'], dir));
    // A destination that cannot be written: the summary line and the error name its path, masked.
    await writeFile(join(dir, 'blocker'), 'a file, not a folder');
    const config = JSON.parse(await readFile(join(dir, 'pipeline.config.json'), 'utf8')) as { destinations: { copy: { path: string } } };
    config.destinations.copy.path = './blocker/copy-${file:token.txt}';
    await writeFile(join(dir, 'pipeline.config.json'), JSON.stringify(config));
    const failed = await pipeline(['run'], dir);
    expect(failed.exitCode).toBe(1);
    expect(failed.stderr).toContain('blocker/copy-***');
    outputs.push(failed, await pipeline(['list', '--json'], dir));
    for (const out of outputs) {
      expect(out.stdout + out.stderr, out.command).not.toContain(secret);
    }
  });

  it('refuses a YAML alias bomb and an oversized config with exit 2, naming the file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'bp-cli-'));
    const bomb = ['a: &a [x,x,x,x,x,x,x,x,x]', ...'bcdefgh'.split('').map((c, i) => `${c}: &${c} [${Array(9).fill(`*${'abcdefgh'[i]}`).join(',')}]`), 'pipelines: { x: { stages: [*h] } }'].join('\n');
    await writeFile(join(dir, 'pipeline.config.yaml'), bomb);
    const out = await pipeline(['validate'], dir);
    expect(out.exitCode).toBe(2);
    expect(out.stderr).toContain(`error CONFIG_INVALID: ${join(dir, 'pipeline.config.yaml')} expands YAML aliases (*name) more than 100 times; refusing to load it`);
    await writeFile(join(dir, 'big.json'), JSON.stringify({ pipelines: {}, $schema: 'x'.repeat(2 << 20) }));
    const big = await pipeline(['run', '--config', 'big.json'], dir);
    expect(big.exitCode).toBe(2);
    expect(big.stderr).toMatch(new RegExp(`error CONFIG_INVALID: ${join(dir, 'big.json')} is \\d+ bytes; a config file may be at most 1048576 bytes`));
  });

  it('finds the config in $XDG_CONFIG_HOME/backup-pipeline, then the system folder, and logs the one it chose', async () => {
    const dir = await project(config());
    const empty = await mkdtemp(join(tmpdir(), 'bp-cli-cwd-'));
    const xdg = join(dir, 'xdg');
    const system = join(dir, 'etc');
    const env = { XDG_CONFIG_HOME: xdg, BACKUP_PIPELINE_SYSTEM_CONFIG_DIR: system };
    const none = await pipeline(['validate'], empty, env);
    expect(none.exitCode).toBe(2);
    expect(none.stderr).toContain(`nor in ${join(xdg, 'backup-pipeline')}/ or ${system}/`);
    // A config in the system folder, pointing at the project's plugin and folders by absolute paths.
    const text = JSON.stringify({ ...config(), workDir: join(dir, 'work') }).replaceAll('./plugins.mjs', join(dir, 'plugins.mjs')).replaceAll('./copy', join(dir, 'copy'));
    await mkdir(system, { recursive: true });
    await writeFile(join(system, 'pipeline.config.json'), text);
    const fromSystem = await pipeline(['list'], empty, env);
    expect(fromSystem.exitCode, fromSystem.stderr).toBe(0);
    const record = JSON.parse(fromSystem.stderr.split('\n')[0]!) as { level: number; config: string; found: string; msg: string };
    expect(record).toMatchObject({ level: 30, config: join(system, 'pipeline.config.json'), found: 'system' });
    await mkdir(join(xdg, 'backup-pipeline'), { recursive: true });
    await writeFile(join(xdg, 'backup-pipeline', 'pipeline.config.json'), text);
    const fromUser = await pipeline(['validate'], empty, env);
    expect(fromUser.stdout).toContain(`ok ${join(xdg, 'backup-pipeline', 'pipeline.config.json')} (found: user)`);
  });
});
