/** Helpers for the core's own tests: a config built in memory with inline plugins. */
import { mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { ResolvedConfig } from './config.js';
import { writeFileAtomic } from './atomic-file.js';
import { createLogger } from './logger.js';
import { definePlugin, type Plugin } from './plugin.js';
import { SecretRegistry } from './secrets.js';
import { LocalFolderDestination } from './local-folder.js';
import { z } from 'zod';
import { MANIFEST_FORMAT, type Manifest } from './manifest.js';

export async function tempDir(prefix = 'bp-test-'): Promise<string> {
  return mkdtemp(join(tmpdir(), prefix));
}

export const localDestinationPlugin = definePlugin({
  name: 'test-local',
  description: 'test destination',
  destination: { options: z.object({ path: z.string() }).strict(), create: (o) => new LocalFolderDestination(o.path) },
}) as Plugin;

/** A destination that rejects every put with MESSAGE (lists nothing, deletes nothing). */
export function failingDestinationPlugin(message: string): Plugin {
  return definePlugin({
    name: 'failing-dest',
    description: 'rejects every put',
    destination: {
      options: z.object({}).strict(),
      create: () => ({
        describe: () => 'nowhere',
        put: async () => {
          throw new Error(message);
        },
        list: async () => [],
        get: async () => {},
        delete: async () => {},
      }),
    },
  }) as Plugin;
}

/** A producer writing one small artifact. */
export const producerPlugin = definePlugin({
  name: 'test-producer',
  description: 'writes one artifact',
  options: z.object({ content: z.string().default('hello backup') }).strict(),
  apply(hooks, options) {
    hooks.produce.tapPromise('test-producer', async (ctx) => {
      const path = join(ctx.setDir, 'data.txt');
      const digest = await writeFileAtomic(path, options.content);
      ctx.addArtifact({ name: 'data.txt', path, kind: 'test', format: 'file', compression: 'none', meta: {}, ...digest });
    });
  },
}) as Plugin;

export async function testConfig(options: {
  stages: Array<{ plugin: Plugin; options?: unknown }>;
  destinations?: Record<string, string>;
  workDir?: string;
  stageTimeoutMinutes?: number;
}): Promise<ResolvedConfig> {
  const dir = await tempDir();
  await writeFile(join(dir, 'pipeline.config.json'), '{}');
  const destinations = Object.fromEntries(
    Object.entries(options.destinations ?? {}).map(([name, path]) => [name, { name, plugin: localDestinationPlugin, options: { path } }]),
  );
  return {
    file: join(dir, 'pipeline.config.json'),
    dir,
    workDir: options.workDir ?? join(dir, 'work'),
    timezone: 'UTC',
    concurrency: 4,
    destinations,
    pipelines: {
      nightly: {
        name: 'nightly',
        source: 'test',
        stages: options.stages.map((s, i) => ({ plugin: s.plugin, options: s.options ?? (s.plugin.options?.parse({}) ?? {}), path: `pipelines.nightly.stages[${i}]` })),
        destinations: Object.keys(destinations),
        stageTimeoutMinutes: options.stageTimeoutMinutes ?? 60,
      },
    },
    secrets: new SecretRegistry(),
    raw: {} as ResolvedConfig['raw'],
  };
}

export const silentLogger = () => createLogger({ level: 'silent', secrets: new SecretRegistry() });

/** A valid manifest of one artifact, for manifest and set-state tests. */
export const sampleManifest: Manifest = {
  format: MANIFEST_FORMAT,
  id: '20261125T014500Z-mastodon',
  pipeline: 'nightly',
  source: 'mastodon',
  createdAt: '2026-11-25T01:45:00.000Z',
  completedAt: '2026-11-25T01:46:00.000Z',
  framework: { name: 'backup-pipeline', version: '0.1.0', node: 'v20.20.2' },
  host: 'example',
  artifacts: [{ name: 'db.dump.zst', kind: 'database', format: 'pg-custom', compression: 'zstd', bytes: 10, sha256: 'a'.repeat(64), meta: {} }],
  stages: [{ plugin: 'pg-dump', hook: 'produce', durationMs: 5, result: 'ok' }],
  facts: {},
  tools: {},
  verified: true,
};
