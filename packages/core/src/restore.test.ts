/**
 * The restore half through the Runner, with inline plugins (no PostgreSQL): keyed first-plugin
 * hooks, a missing plugin reported as a fact, a bad copy replaced by the next destination's,
 * verifyStored running the verify hook on fetched plaintext, prune under the lock, and
 * command-line stage options validated by the plugin's schema.
 */
import { mkdir, readFile, readdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, expectTypeOf, it } from 'vitest';
import { z } from 'zod';
import { hashFile, writeFileAtomic } from './atomic-file.js';
import type { Artifact } from './context.js';
import { acquireLock } from './lock.js';
import { definePlugin, type Plugin } from './plugin.js';
import type { Destination } from './destination.js';
import { PipelineError } from './errors.js';
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

const rot = (b: Buffer, by: number) => Buffer.from(b.map((x) => (x + by) & 0xff));

/**
 * A toy stream cipher (every byte + 1), method `rot`: encrypted in Node at backup, decrypted on
 * restore by an OS program (`tr`) through `decryptFilter` — the one-pass path. `decryptWith`
 * replaces the program (a failing one, say).
 */
const rotPlugin = (options: { decryptWith?: { command: string; args: string[] } } = {}) =>
  definePlugin({
    name: 'rot',
    description: 'rot',
    apply(hooks) {
      hooks.transform.tapPromise('rot', async (artifact, ctx) => {
        if (artifact.encryption) return artifact;
        const path = join(ctx.setDir, `${artifact.name}.rot`);
        const digest = await writeFileAtomic(path, rot(await readFile(artifact.path), 1));
        return { ...artifact, name: `${artifact.name}.rot`, path, ...digest, encryption: { method: 'rot', recipients: [] }, plain: { name: artifact.name, bytes: artifact.bytes, sha256: artifact.sha256 } };
      });
      hooks.decryptFilter.for('rot').tapPromise('rot', async () => ({
        ...(options.decryptWith ?? { command: 'tr', args: ['\\001-\\377\\000', '\\000-\\377'] }),
        env: { LC_ALL: 'C' },
        label: 'tr (rot)',
        failure: (error: unknown) => new PipelineError('ROT_DECRYPT_FAILED', `rot could not decrypt: ${(error as Error).message}`),
      }));
    },
  }) as Plugin;

/** A local-folder destination that counts how it is read: `get` (a file) or `read` (a stream). */
const countingDestination = (calls: string[], options: { noRead?: boolean } = {}) =>
  definePlugin({
    name: 'counting',
    description: 'counting',
    destination: {
      options: z.object({ path: z.string() }).strict(),
      create: (o) => {
        const inner = new LocalFolderDestination(o.path);
        const counted: Destination = {
          describe: () => inner.describe(),
          put: (...args) => inner.put(...args),
          list: () => inner.list(),
          delete: (setId) => inner.delete(setId),
          get: (setId, name, to, opts) => (calls.push(`get ${name}`), inner.get(setId, name, to, opts)),
        };
        if (!options.noRead) counted.read = (setId, name, opts) => (calls.push(`read ${name}`), inner.read(setId, name, opts));
        return counted;
      },
    },
  }) as Plugin;

async function countedBackup(stages: Array<{ plugin: Plugin; options?: unknown }>, options: { noRead?: boolean } = {}) {
  const calls: string[] = [];
  const dir = await tempDir();
  const config = await testConfig({ stages: [{ plugin: producerPlugin, options: { content: 'the data, '.repeat(1000) } }, ...stages], destinations: { counted: join(dir, 'counted') } });
  config.destinations.counted!.plugin = countingDestination(calls, options);
  const runner = new Runner(config, await silentLogger());
  const { summary } = await runner.run('nightly');
  return { config, runner, setId: summary.setId, calls, stored: join(dir, 'counted', summary.setId) };
}

/** Every file name under `dir`, recursively. */
async function filesUnder(dir: string): Promise<string[]> {
  return (await readdir(dir, { recursive: true }).catch(() => [] as string[])).map(String);
}

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

  it('a file already in the folder is not overwritten: RESTORE_TARGET_NOT_EMPTY, the file as it was', async () => {
    const { config, runner } = await backedUp([{ plugin: xorPlugin('xor') }]);
    const out = join(config.dir, 'out');
    await mkdir(out);
    await writeFile(join(out, 'data.txt'), 'mine');
    const error = await runner.restore('nightly', { set: 'latest', filesTo: out }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'RESTORE_TARGET_NOT_EMPTY', message: `${join(out, 'data.txt')} already exists; not overwritten` });
    expect(await readFile(join(out, 'data.txt'), 'utf8')).toBe('mine');
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

  it('one pass: a destination that streams and a decryptFilter program restore without a ciphertext file (read, never get)', async () => {
    const { config, runner, calls } = await countedBackup([{ plugin: rotPlugin() }]);
    const seen: string[] = [];
    // The scratch folder of the restore, looked at while the plaintext is written into it.
    const spy = definePlugin({
      name: 'spy',
      description: 'spy',
      apply(hooks) {
        hooks.restored.tapPromise('spy', async (_summary, ctx) => void seen.push(...(await filesUnder(ctx.tmpDir))));
      },
    }) as Plugin;
    config.pipelines.nightly!.stages.push({ plugin: spy, options: {}, path: 'spy' });
    const out = join(config.dir, 'out');
    const result = await runner.restore('nightly', { set: 'latest', filesTo: out, from: 'counted' });
    expect(result.from).toBe('counted');
    expect(await readFile(join(out, 'data.txt'), 'utf8')).toBe('the data, '.repeat(1000));
    expect(calls.filter((c) => !c.endsWith('manifest.json'))).toEqual(['read data.txt.rot']);
    expect(seen.filter((f) => f.endsWith('.rot'))).toEqual([]);
    expect(seen.some((f) => f.endsWith('plain-data.txt'))).toBe(true);
  });

  it('a destination without read is fetched with get into a file, then streamed through the same checks', async () => {
    const { config, runner, calls } = await countedBackup([{ plugin: rotPlugin() }], { noRead: true });
    const out = join(config.dir, 'out');
    await runner.restore('nightly', { set: 'latest', filesTo: out, from: 'counted' });
    expect(await readFile(join(out, 'data.txt'), 'utf8')).toBe('the data, '.repeat(1000));
    expect(calls.filter((c) => !c.endsWith('manifest.json'))).toEqual(['get data.txt.rot']);
  });

  it('a stored byte changed: CHECKSUM_MISMATCH at the end of the stream, the copy recorded as damaged, nothing written', async () => {
    const { config, runner, setId, stored } = await countedBackup([{ plugin: rotPlugin() }]);
    const file = join(stored, 'data.txt.rot');
    const bytes = await readFile(file);
    bytes[bytes.length >> 1] ^= 0x01;
    await writeFile(file, bytes);
    const out = join(config.dir, 'out');
    const error = await runner.restore('nightly', { set: setId, filesTo: out, from: 'counted' }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'CHECKSUM_MISMATCH', details: { storedCopy: true } });
    expect((error as Error).message).toContain(`counted/${setId}/data.txt.rot does not match its manifest`);
    expect(await filesUnder(out)).toEqual([]);
    const [set] = await listSets(new LocalFolderDestination(join(stored, '..')));
    expect(set).toMatchObject({ id: setId, state: 'damaged' });
  });

  it('a damaged streamed copy: the same set from the next destination that holds it', async () => {
    const { config, runner, setId, stored } = await countedBackup([{ plugin: rotPlugin() }]);
    const file = join(stored, 'data.txt.rot');
    const bytes = await readFile(file);
    bytes[0] ^= 0x01;
    await writeFile(file, bytes);
    // Holders in the order of the config: counted first, the work dir after it.
    config.pipelines.nightly!.destinations = ['counted'];
    const result = await runner.restore('nightly', { set: setId, filesTo: join(config.dir, 'out') });
    expect(result.from).toBe('work');
    expect(await readFile(join(config.dir, 'out', 'data.txt'), 'utf8')).toBe('the data, '.repeat(1000));
  });

  it('content re-encrypted from other plaintext (the stored sha256 made to match): CHECKSUM_MISMATCH of the plaintext, not a damaged copy', async () => {
    const { config, runner, setId, stored } = await countedBackup([{ plugin: rotPlugin() }]);
    const file = join(stored, 'data.txt.rot');
    await writeFile(file, rot(Buffer.from('other data, '.repeat(1000)), 1));
    // The manifest made to name the new ciphertext, so only the plaintext check can catch it.
    const manifestPath = join(stored, 'manifest.json');
    const manifest = JSON.parse(await readFile(manifestPath, 'utf8'));
    Object.assign(manifest.artifacts[0], await hashFile(file));
    await writeFile(manifestPath, JSON.stringify(manifest, null, 2));
    const out = join(config.dir, 'out');
    const error = await runner.restore('nightly', { set: setId, filesTo: out, from: 'counted' }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'CHECKSUM_MISMATCH' });
    expect((error as Error).message).toContain('data.txt.rot decrypts to content that does not match the manifest');
    expect(await filesUnder(out)).toEqual([]);
  });

  it('a decrypting program that fails: its plugin\'s error (the first real cause), nothing written', async () => {
    const { config, runner, setId } = await countedBackup([{ plugin: rotPlugin({ decryptWith: { command: 'sh', args: ['-c', 'head -c 10 >/dev/null; echo bad key >&2; exit 3'] } }) }]);
    const out = join(config.dir, 'out');
    const error = await runner.restore('nightly', { set: setId, filesTo: out, from: 'counted' }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'ROT_DECRYPT_FAILED' });
    expect((error as Error).message).toContain('bad key');
    expect(await filesUnder(out)).toEqual([]);
  });

  it('a decrypting program that fails early on a damaged copy: the rest is still read and hashed, so the cause is CHECKSUM_MISMATCH', async () => {
    const { config, runner, setId, stored } = await countedBackup([{ plugin: rotPlugin({ decryptWith: { command: 'sh', args: ['-c', 'head -c 10 >/dev/null; echo cannot decrypt >&2; exit 3'] } }) }]);
    const file = join(stored, 'data.txt.rot');
    const bytes = await readFile(file);
    bytes[bytes.length - 1] ^= 0x01;
    await writeFile(file, bytes);
    const error = await runner.restore('nightly', { set: setId, filesTo: join(config.dir, 'out'), from: 'counted' }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'CHECKSUM_MISMATCH', details: { storedCopy: true } });
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
