/**
 * A tiny stage plugin module that produces one artifact, written to a file so a config can
 * `use:` it by path — for tests that need a pipeline to ship something without a database.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';

export interface ProducerPluginOptions {
  /** Module file to write (default `<dir>/producer.mjs`). */
  file?: string;
  /** Plugin name (default `test-producer`). */
  name?: string;
  /** Artifact file name (default `data.txt`). */
  artifact?: string;
  /** Artifact content; `${setId}` is replaced by the run's set id (default: 1000 lines of text). */
  content?: string;
  kind?: string;
  format?: string;
}

/** Writes the module and returns its path. It imports the core by absolute URL, so it works from any folder. */
export async function writeProducerPlugin(dir: string, options: ProducerPluginOptions = {}): Promise<string> {
  const file = options.file ?? join(dir, 'producer.mjs');
  const name = options.name ?? 'test-producer';
  const artifact = options.artifact ?? 'data.txt';
  const content = options.content ?? 'some data\n'.repeat(1000);
  const core = import.meta.resolve('@backup-pipeline/core');
  await writeFile(
    file,
    `import { join } from 'node:path';
import { definePlugin, writeFileAtomic } from ${JSON.stringify(core)};
export default definePlugin({
  name: ${JSON.stringify(name)},
  description: 'test producer: one artifact',
  apply(hooks) {
    hooks.produce.tapPromise(${JSON.stringify(name)}, async (ctx) => {
      const path = join(ctx.setDir, ${JSON.stringify(artifact)});
      const digest = await writeFileAtomic(path, ${JSON.stringify(content)}.replaceAll('\${setId}', ctx.setId));
      ctx.addArtifact({ name: ${JSON.stringify(artifact)}, path, kind: ${JSON.stringify(options.kind ?? 'file')}, format: ${JSON.stringify(options.format ?? 'file')}, compression: 'none', meta: {}, ...digest });
    });
  },
});
`,
  );
  return file;
}
