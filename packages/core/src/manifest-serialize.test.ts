/** serializeManifest and readManifestText at their edges: secret fields, sizes, reserved and duplicate names, field paths. */
import { describe, expect, it } from 'vitest';
import { isPipelineError } from './errors.js';
import { MAX_MANIFEST_BYTES, readManifestText, serializeManifest, type Manifest } from './manifest.js';
import { sampleManifest } from './test-fixtures.js';

const SECRET = 'hunter2';
const isSecret = (v: string) => v === SECRET;
const artifact = sampleManifest.artifacts[0]!;

function failure(m: unknown, options?: { isSecret?: (v: string) => boolean }) {
  try {
    serializeManifest(m as Manifest, options);
  } catch (error) {
    if (isPipelineError(error)) return error;
    throw error;
  }
  return undefined;
}

describe('serializeManifest: no registered secret in a free-form field', () => {
  it.each([
    ['a fact', { facts: { note: SECRET } }, 'facts.note'],
    ['a nested fact', { facts: { db: { login: { password: SECRET } } } }, 'facts.db.login.password'],
    ['a fact in a list', { facts: { list: ['ok', SECRET] } }, 'facts.list[1]'],
    ['a tool', { tools: { pg_dump: SECRET } }, 'tools.pg_dump'],
    ['artifact meta', { artifacts: [{ ...artifact, meta: { url: SECRET } }] }, 'artifacts[0].meta.url'],
    ['the meta of a second artifact', { artifacts: [artifact, { ...artifact, name: 'b.tar', meta: { x: [1, { y: SECRET }] } }] }, 'artifacts[1].meta.x[1].y'],
  ])('refuses %s naming the field', (_label, change, field) => {
    const error = failure({ ...sampleManifest, ...change }, { isSecret });
    expect(error).toMatchObject({ code: 'MANIFEST_INVALID', details: { setId: sampleManifest.id } });
    expect(error!.message).toBe(`the manifest of set ${sampleManifest.id} would not be read back as a complete set: ${field} holds a registered secret (secrets never enter a manifest)`);
    expect(error!.hint).toMatch(/^Nothing was shipped/);
  });

  it('accepts fields that only contain the secret, numbers, null and booleans, and everything without isSecret', () => {
    const m = { ...sampleManifest, facts: { note: `not ${SECRET} alone`, n: 1, z: null, b: true, list: [] }, tools: { psql: '16.1' } } as Manifest;
    expect(serializeManifest(m, { isSecret })).toBe(JSON.stringify(m, null, 2) + '\n');
    expect(serializeManifest({ ...sampleManifest, facts: { note: SECRET } })).toContain(`"note": "${SECRET}"`);
  });
});

describe('serializeManifest: read back as the same set', () => {
  it('writes pretty JSON ending in a newline', () => {
    const text = serializeManifest(sampleManifest);
    expect(text).toBe(JSON.stringify(sampleManifest, null, 2) + '\n');
    expect(readManifestText(text, sampleManifest.id).manifest).toEqual(sampleManifest);
  });

  it.each([
    ['an unknown top-level field', { extra: 1 }, 'extra would be dropped by readers (not part of the manifest format)'],
    ['an unknown artifact field', { artifacts: [{ ...artifact, colour: 'red' }] }, 'artifacts[0].colour would be dropped by readers (not part of the manifest format)'],
    ['an unknown field in a stage', { stages: [{ ...sampleManifest.stages[0]!, note: 'x' }] }, 'stages[0].note would be dropped by readers (not part of the manifest format)'],
    ['a duplicate artifact name', { artifacts: [artifact, artifact] }, `manifest field artifacts[1].name: two artifacts are named ${artifact.name}`],
    ['the reserved name manifest.json', { artifacts: [{ ...artifact, name: 'manifest.json' }] }, 'manifest field artifacts[0].name: manifest.json and damaged.json are reserved names'],
    ['the reserved name damaged.json', { artifacts: [{ ...artifact, name: 'damaged.json' }] }, 'manifest field artifacts[0].name: manifest.json and damaged.json are reserved names'],
    ['a hostile artifact name', { artifacts: [{ ...artifact, name: '../x' }] }, 'manifest field artifacts[0].name: not a valid file name: it contains a slash'],
    ['a field of the wrong type', { verified: 'yes' }, 'manifest field verified:'],
  ])('refuses %s, naming the field', (_label, change, problem) => {
    const error = failure({ ...sampleManifest, ...change });
    expect(error?.code).toBe('MANIFEST_INVALID');
    expect(error!.message).toContain(`would not be read back as a complete set: ${problem}`);
  });
});

describe('readManifestText limits', () => {
  it('refuses a text over the size limit without parsing it, and parses one at the limit', () => {
    const over = ' '.repeat(MAX_MANIFEST_BYTES + 1);
    expect(readManifestText(over)).toEqual({ problem: `manifest is larger than ${MAX_MANIFEST_BYTES} bytes` });
    const text = JSON.stringify(sampleManifest);
    const padded = text + ' '.repeat(MAX_MANIFEST_BYTES - text.length);
    expect(padded.length).toBe(MAX_MANIFEST_BYTES);
    expect(readManifestText(padded, sampleManifest.id).manifest).toEqual(sampleManifest);
  });

  it('names the root when the whole value is wrong, and checks the id only when asked', () => {
    expect(readManifestText('[]').problem).toMatch(/^manifest field \(root\):/);
    expect(readManifestText(JSON.stringify(sampleManifest)).manifest).toEqual(sampleManifest);
    expect(readManifestText(JSON.stringify(sampleManifest), '20300101T000000Z-x').problem).toBe(`manifest belongs to set ${sampleManifest.id}, not 20300101T000000Z-x`);
  });
});
