import { readFile } from 'node:fs/promises';
import { describe, expect, it } from 'vitest';
import { GENERATED, generated } from './gen-docs.js';

describe('generated config reference and JSON Schema', () => {
  it('are up to date with the zod schemas (run `npm run gen` after changing an option)', async () => {
    const fresh = await generated();
    expect(await readFile(GENERATED.schema, 'utf8')).toBe(fresh.schema);
    expect(await readFile(GENERATED.reference, 'utf8')).toBe(fresh.reference);
    expect(await readFile(GENERATED.plugins, 'utf8')).toBe(fresh.plugins);
  });

  it('describe every built-in stage in the schema', async () => {
    const schema = JSON.parse((await generated()).schema);
    const stageUses = schema.properties.pipelines.additionalProperties.properties.stages.items.anyOf.map((s: { properties: { use: { const?: string } } }) => s.properties.use.const);
    expect(stageUses).toEqual(expect.arrayContaining(['pg-dump', 'credentials', 'retention']));
  });
});
