/** `npm run gen`: writes config/schema.json and docs/config.md from the zod schemas. */
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CLI_DIR } from './builtins.js';
import { configJsonSchema, configReference, withHookTable } from './reference.js';

export const ROOT = join(CLI_DIR, '..', '..');
export const GENERATED = {
  schema: join(ROOT, 'config', 'schema.json'),
  reference: join(ROOT, 'docs', 'config.md'),
  plugins: join(ROOT, 'docs', 'plugins.md'),
};

export async function generated(): Promise<Record<keyof typeof GENERATED, string>> {
  return {
    schema: JSON.stringify(await configJsonSchema(), null, 2) + '\n',
    reference: await configReference(),
    plugins: withHookTable(await readFile(GENERATED.plugins, 'utf8')),
  };
}

if (process.argv[1] && import.meta.url.endsWith(process.argv[1].split('/').pop()!)) {
  const out = await generated();
  await writeFile(GENERATED.schema, out.schema);
  await writeFile(GENERATED.reference, out.reference);
  await writeFile(GENERATED.plugins, out.plugins);
  process.stdout.write(`wrote ${GENERATED.schema}, ${GENERATED.reference} and the hook table of ${GENERATED.plugins}\n`);
}
