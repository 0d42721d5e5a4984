/**
 * `keepInWorkDir: false`: the work dir only stages. A set leaves it once every destination has it
 * (and stays when shipping failed); one local destination on the same file system takes each
 * staged file by hard link, the others copy; with the default (keep) nothing is linked.
 */
import { createHash } from 'node:crypto';
import { existsSync, statSync } from 'node:fs';
import { mkdtemp, readdir, readFile, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { resolveConfig, type ResolvedConfig } from './config.js';
import { definePlugin, type Plugin } from './plugin.js';
import { Runner } from './runner.js';
import { failingDestinationPlugin, silentLogger, tempDir, testConfig } from './test-fixtures.js';

type Inodes = Record<string, number | undefined>;

/** Streams 300 kB of random bytes as `data.bin` (so the core hashes it as it writes it), and records inodes when shipped. */
function streamingProducer(seen: Inodes[]): Plugin {
  return definePlugin({
    name: 'streamer',
    description: 'streams random bytes',
    apply(hooks) {
      hooks.produce.tapPromise('streamer', async (ctx) => {
        const made = await ctx.streamArtifact({
          artifact: { name: 'data.bin', kind: 'test', format: 'file', compression: 'none', meta: {} },
          dir: ctx.setDir,
          start: (stdout) => ctx.exec('head', ['-c', '300000', '/dev/urandom'], { stdout }),
        });
        ctx.addArtifact(made.artifact);
      });
      // After every destination finished and before the work dir lets go of the set.
      hooks.shipped.tapPromise('streamer', async (_report, ctx) => {
        if (seen.length > 0) return;
        const ino = async (path: string) => (await stat(path).catch(() => undefined))?.ino;
        const inodes: Inodes = { work: await ino(join(ctx.setDir, 'data.bin')) };
        for (const [name, d] of Object.entries(destinationRoots)) inodes[name] = await ino(join(d, ctx.setId, 'data.bin'));
        seen.push(inodes);
      });
    },
  }) as Plugin;
}

let destinationRoots: Record<string, string> = {};

async function stagingConfig(seen: Inodes[], keepInWorkDir: boolean | undefined, workDir?: string): Promise<ResolvedConfig> {
  const root = await tempDir();
  destinationRoots = { a: join(root, 'a'), b: join(root, 'b') };
  const config = await testConfig({ stages: [{ plugin: streamingProducer(seen) }], destinations: destinationRoots, workDir });
  if (keepInWorkDir !== undefined) config.keepInWorkDir = keepInWorkDir;
  return config;
}

async function sha256(path: string): Promise<string> {
  return createHash('sha256').update(await readFile(path)).digest('hex');
}

describe('keepInWorkDir: false (the work dir only stages)', () => {
  it('links the staged file into one destination, copies it into the other, and removes the set from the work dir', async () => {
    const seen: Inodes[] = [];
    const config = await stagingConfig(seen, false);
    const { summary, manifest } = await new Runner(config, await silentLogger()).run('nightly');
    expect(summary.ok).toBe(true);
    const [inodes] = seen;
    expect(inodes?.work).toBeDefined();
    const linked = ['a', 'b'].filter((d) => inodes?.[d] === inodes?.work);
    expect(linked, 'destinations sharing the staged inode').toHaveLength(1);
    expect(inodes?.a).not.toBe(inodes?.b);

    // The set left the work dir; each destination holds its own complete, private copy.
    expect(await stat(join(config.workDir, summary.setId)).catch(() => undefined)).toBeUndefined();
    const artifact = manifest!.artifacts[0]!;
    for (const root of Object.values(destinationRoots)) {
      const file = join(root, summary.setId, 'data.bin');
      const info = await stat(file);
      expect(info.nlink, `${file} has one name`).toBe(1);
      expect(info.mode & 0o777).toBe(0o600);
      expect(await sha256(file)).toBe(artifact.sha256);
      expect(JSON.parse(await readFile(join(root, summary.setId, 'manifest.json'), 'utf8')).id).toBe(summary.setId);
    }
  });

  it('keeps the set in the work dir and links nothing by default', async () => {
    const seen: Inodes[] = [];
    const config = await stagingConfig(seen, undefined);
    const { summary } = await new Runner(config, await silentLogger()).run('nightly');
    const [inodes] = seen;
    expect(inodes?.work).toBeDefined();
    expect([inodes?.a, inodes?.b]).not.toContain(inodes?.work);
    expect((await stat(join(config.workDir, summary.setId, 'data.bin'))).nlink).toBe(1);
  });

  it('keeps the set in the work dir when a destination failed', async () => {
    const seen: Inodes[] = [];
    const config = await stagingConfig(seen, false);
    const refusing = failingDestinationPlugin('disk on fire');
    config.destinations.broken = { name: 'broken', plugin: refusing, options: {} };
    config.pipelines.nightly!.destinations.push('broken');
    const error = await new Runner(config, await silentLogger()).run('nightly').catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'DESTINATION_FAILED' });
    const [setId] = (await readdir(config.workDir)).filter((n) => !n.startsWith('.'));
    expect(setId).toBeDefined();
    const kept = join(config.workDir, setId!);
    expect((await stat(join(kept, 'manifest.json'))).isFile()).toBe(true);
    expect((await stat(join(kept, 'data.bin'))).size).toBe(300000);
  });

  // /dev/shm is another file system (tmpfs) than the temp dir on most machines: link(2) fails with EXDEV.
  const shm = existsSync('/dev/shm') ? statSync('/dev/shm') : undefined;
  const otherDevice = shm !== undefined && shm.dev !== statSync(tmpdir()).dev;
  it.skipIf(!otherDevice)('copies when the destination is on another file system than the work dir', async () => {
    const seen: Inodes[] = [];
    const config = await stagingConfig(seen, false, await mkdtemp('/dev/shm/bp-test-work-'));
    const { summary, manifest } = await new Runner(config, await silentLogger()).run('nightly');
    expect(summary.ok).toBe(true);
    for (const root of Object.values(destinationRoots)) expect(await sha256(join(root, summary.setId, 'data.bin'))).toBe(manifest!.artifacts[0]!.sha256);
    expect(await stat(join(config.workDir, summary.setId)).catch(() => undefined)).toBeUndefined();
  });

  it('is refused when a local destination writes into the work dir, naming it', async () => {
    const dir = await tempDir();
    const config = {
      keepInWorkDir: false,
      workDir: './work',
      destinations: { same: { use: 'local', path: './work' }, elsewhere: { use: 'local', path: './sets' } },
      pipelines: { nightly: { stages: [{ use: 'retention', keepLast: 1 }], destinations: ['same', 'elsewhere'] } },
    };
    const search = { cwd: dir, pluginSearchDirs: [fileURLToPath(new URL('../../cli', import.meta.url))] };
    const error = await resolveConfig(join(dir, 'pipeline.config.json'), config, search).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'CONFIG_INVALID' });
    expect((error as Error).message).toContain('destinations.same: writes to');
    expect((error as Error).message).not.toContain('destinations.elsewhere');
    // With the default (sets kept in the work dir) the same folders are accepted.
    await expect(resolveConfig(join(dir, 'pipeline.config.json'), { ...config, keepInWorkDir: true }, search)).resolves.toBeDefined();
  });

  it('is refused for a pipeline without destinations, naming it', async () => {
    const dir = await tempDir();
    // The stage's plugin cannot be loaded either: every problem is reported at once.
    const config = { keepInWorkDir: false, pipelines: { nightly: { stages: [{ use: 'no-such-plugin' }] } } };
    const error = await resolveConfig(join(dir, 'pipeline.config.json'), config, { cwd: dir }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'CONFIG_INVALID' });
    expect((error as Error).message).toContain('pipelines.nightly.destinations: keepInWorkDir is false');
  });
});
