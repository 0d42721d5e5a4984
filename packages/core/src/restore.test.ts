/**
 * The restore half through the Runner, with inline plugins (no PostgreSQL): keyed first-plugin
 * hooks, a missing plugin reported as a fact, a bad copy replaced by the next destination's,
 * verifyStored running the verify hook on fetched plaintext, prune under the lock, and
 * command-line stage options validated by the plugin's schema.
 */
import { readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, expectTypeOf, it } from 'vitest';
import { z } from 'zod';
import { hashFile, writeFileAtomic } from './atomic-file.js';
import type { Artifact } from './context.js';
import { acquireLock } from './lock.js';
import { definePlugin, type Plugin } from './plugin.js';
import type { RestoreContext } from './restore-context.js';
import { Runner } from './runner.js';
import { listSets } from './sets.js';
import { LocalFolderDestination } from './local-folder.js';
import { producerPlugin, silentLogger, tempDir, testConfig } from './test-fixtures.js';

const xor = (b: Buffer) => Buffer.from(b.map((x) => x ^ 0x5a));

/** A toy encryption stage: XOR, method `xor`; `declines` makes its decrypt tap pass (return undefined). */
const xorPlugin = (name: string, options: { declines?: boolean; seen?: string[] } = {}) =>
  definePlugin({
    name,
    description: 'xor',
    options: z.object({ key: z.string().default('k') }).strict(),
    apply(hooks, opts) {
      hooks.transform.tapPromise(name, async (artifact, ctx) => {
        if (artifact.encryption) return artifact;
        const path = join(ctx.setDir, `${artifact.name}.xor`);
        const digest = await writeFileAtomic(path, xor(await readFile(artifact.path)));
        return { ...artifact, name: `${artifact.name}.xor`, path, ...digest, encryption: { method: 'xor', recipients: [opts.key] }, plain: { name: artifact.name, bytes: artifact.bytes, sha256: artifact.sha256 } };
      });
      hooks.decrypt.for('xor').tapPromise(name, async (artifact, ctx) => {
        options.seen?.push(`${name}:${opts.key}`);
        if (options.declines) return undefined;
        const path = join(ctx.tmpDir, `plain-${artifact.plain!.name}`);
        const digest = await writeFileAtomic(path, xor(await readFile(artifact.path)));
        return { ...artifact, name: artifact.plain!.name, path, ...digest, encryption: undefined, plain: undefined };
      });
    },
  }) as Plugin;

async function backedUp(stages: Array<{ plugin: Plugin; options?: unknown }>, destinations: Record<string, string> = {}) {
  const config = await testConfig({ stages: [{ plugin: producerPlugin, options: { content: 'the data' } }, ...stages], destinations });
  const runner = new Runner(config, await silentLogger());
  const { summary } = await runner.run('nightly');
  return { config, runner, setId: summary.setId };
}

describe('restore through keyed hooks', () => {
  it('asks decrypt[method]: the first tap that answers wins, one returning undefined passes', async () => {
    const seen: string[] = [];
    const { config, runner, setId } = await backedUp([{ plugin: xorPlugin('decliner', { declines: true, seen }) }, { plugin: xorPlugin('xor', { seen }) }]);
    const out = join(config.dir, 'out');
    const result = await runner.restore('nightly', { set: 'latest', filesTo: out });
    expect(result).toMatchObject({ setId, from: 'work' });
    expect(await readFile(join(out, 'data.txt'), 'utf8')).toBe('the data');
    expect(seen).toEqual(['decliner:k', 'xor:k']);
  });

  it('a set needing a plugin that is not loaded: RESTORE_NEEDS_PLUGIN, nothing fetched, the set still complete', async () => {
    const { config, setId } = await backedUp([{ plugin: xorPlugin('xor') }]);
    config.pipelines.nightly!.stages = config.pipelines.nightly!.stages.slice(0, 1);
    const error = await new Runner(config, await silentLogger()).restore('nightly', { set: setId, filesTo: join(config.dir, 'out') }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'RESTORE_NEEDS_PLUGIN' });
    expect((error as Error).message).toContain('decrypt for "xor"');
    const [set] = await listSets(new LocalFolderDestination(config.workDir));
    expect(set).toMatchObject({ id: setId, state: 'complete' });
  });

  it('a copy that fails its checksum: the same set from the next destination, the bad copy recorded as damaged', async () => {
    const dir = await tempDir();
    const { config, runner, setId } = await backedUp([{ plugin: xorPlugin('xor') }], { offsite: join(dir, 'offsite') });
    const file = join(config.workDir, setId, 'data.txt.xor');
    await writeFile(file, xor(Buffer.from('not the data')));
    const result = await runner.restore('nightly', { set: 'latest', filesTo: join(config.dir, 'out') });
    expect(result.from).toBe('offsite');
    expect(await readFile(join(config.dir, 'out', 'data.txt'), 'utf8')).toBe('the data');
    const [work] = await listSets(new LocalFolderDestination(config.workDir));
    expect(work).toMatchObject({ id: setId, state: 'damaged' });
    const [offsite] = await listSets(new LocalFolderDestination(join(dir, 'offsite')));
    expect(offsite).toMatchObject({ id: setId, state: 'complete' });
  });

  it('verifyStored runs the verify hook on the fetched plaintext, with a RestoreContext', async () => {
    const verified: Array<{ name: string; sha256: string; command: string }> = [];
    const verifier = definePlugin({
      name: 'checker',
      description: 'records',
      apply(hooks) {
        hooks.verify.tapPromise('checker', async (artifact, ctx) => {
          const stored = ctx as RestoreContext;
          verified.push({ name: artifact.name, sha256: (await hashFile(artifact.path)).sha256, command: stored.request?.command ?? 'run' });
        });
      },
    }) as Plugin;
    const { runner, setId } = await backedUp([{ plugin: verifier }, { plugin: xorPlugin('xor') }]);
    const result = await runner.verifyStored('nightly', { set: setId });
    expect(result).toMatchObject({ setId, from: 'work', verifiers: 1 });
    expect(verified.map((v) => v.command)).toEqual(['run', 'verify']);
    expect(verified[1]!.name).toBe('data.txt');
    expect(verified[1]!.sha256).toBe(verified[0]!.sha256);
  });

  it('prune runs retain alone, under the pipeline lock, in dry-run when asked', async () => {
    const calls: boolean[] = [];
    const retainer = definePlugin({
      name: 'retainer',
      description: 'records',
      apply(hooks) {
        hooks.retain.tapPromise('retainer', async (ctx) => {
          calls.push(ctx.dryRun);
          ctx.retention.push({ destination: 'work', dryRun: ctx.dryRun, keep: [], delete: [], deleted: [], failed: [] });
        });
      },
    }) as Plugin;
    const { config, runner } = await backedUp([{ plugin: retainer }]);
    expect(await runner.prune('nightly', { dryRun: true })).toMatchObject({ retention: [{ destination: 'work', dryRun: true }] });
    const lock = await acquireLock(join(config.workDir, '.locks', 'nightly.lock'));
    try {
      await expect(runner.prune('nightly')).rejects.toMatchObject({ code: 'LOCKED' });
    } finally {
      await lock.release();
    }
    expect(calls).toEqual([false, true]);
    expect((await readdir(config.workDir)).filter((n) => !n.startsWith('.'))).toHaveLength(1);
  });

  it('stage options from the command line are validated by the plugin schema', async () => {
    const { runner, setId, config } = await backedUp([{ plugin: xorPlugin('xor') }]);
    await expect(runner.restore('nightly', { set: setId, filesTo: join(config.dir, 'o1') }, { stageOptions: { 'xor.nope': 1 } })).rejects.toMatchObject({ code: 'USAGE' });
    await expect(runner.restore('nightly', { set: setId, filesTo: join(config.dir, 'o2') }, { stageOptions: { key: 42 } })).rejects.toMatchObject({ code: 'USAGE' });
    // An option no stage declares is ignored (it may be for another pipeline's stage).
    await expect(runner.restore('nightly', { set: setId, filesTo: join(config.dir, 'o3') }, { stageOptions: { unrelated: 'x' } })).resolves.toMatchObject({ setId });
  });

  it('keyed hooks are tap-only for plugins', () => {
    definePlugin({
      name: 'types',
      description: 'types',
      apply(hooks) {
        hooks.decrypt.for('age').tapPromise('types', async (artifact, ctx) => {
          expectTypeOf(artifact).toEqualTypeOf<Artifact>();
          expectTypeOf(ctx).toEqualTypeOf<RestoreContext>();
          return undefined;
        });
        // @ts-expect-error only the core looks a keyed hook up or calls it
        void hooks.decrypt.get('age');
        // @ts-expect-error a restore tap must answer with a report or undefined
        hooks.restore.for('x').tapPromise('types', async () => 'done');
      },
    });
  });
});
