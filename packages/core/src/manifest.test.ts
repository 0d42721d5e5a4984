import { describe, expect, it } from 'vitest';
import { isPipelineError } from './errors.js';
import { ArtifactName, parseManifest, readManifestText, serializeManifest, type Manifest } from './manifest.js';
import { sampleManifest } from './test-fixtures.js';

const good: Manifest = sampleManifest;
const artifact = good.artifacts[0]!;
const withArtifact = (change: Record<string, unknown>) => ({ ...good, artifacts: [{ ...artifact, ...change }] });

const serializeError = (m: unknown): string => {
  try {
    serializeManifest(m as Manifest);
  } catch (error) {
    if (isPipelineError(error)) return `${error.code}: ${error.message}`;
    throw error;
  }
  return 'serialized';
};

describe('manifest rules', () => {
  it('accepts a valid manifest for its own set only', () => {
    expect(parseManifest(JSON.stringify(good), good.id)).toEqual(good);
    expect(parseManifest(JSON.stringify(good), '20261126T000000Z-mastodon')).toBeUndefined();
    expect(readManifestText(JSON.stringify(good), '20261126T000000Z-mastodon').problem).toBe(`manifest belongs to set ${good.id}, not 20261126T000000Z-mastodon`);
  });

  it.each([
    ['not JSON', '{"format": ', /^manifest is not JSON/],
    ['another format', JSON.stringify({ ...good, format: 'other@1' }), /^manifest field format:/],
    ['no artifacts', JSON.stringify({ ...good, artifacts: [] }), /^manifest field artifacts:/],
    ['a bad checksum', JSON.stringify(withArtifact({ sha256: 'xyz' })), /^manifest field artifacts\[0\]\.sha256: not a sha256/],
    ['a negative size', JSON.stringify(withArtifact({ bytes: -1 })), /^manifest field artifacts\[0\]\.bytes:/],
    ['a compression that is not an identifier', JSON.stringify(withArtifact({ compression: '../x' })), /^manifest field artifacts\[0\]\.compression: not an identifier/],
    ['an artifact in a folder', JSON.stringify(withArtifact({ name: '../etc/passwd' })), /^manifest field artifacts\[0\]\.name: not a valid file name/],
    ['a plaintext name in a folder', JSON.stringify(withArtifact({ plain: { name: '../../../../tmp/x/PWNED.dump', bytes: 1, sha256: 'b'.repeat(64) } })), /^manifest field artifacts\[0\]\.plain\.name:/],
    ['two artifacts of one name', JSON.stringify({ ...good, artifacts: [artifact, artifact] }), /two artifacts are named db\.dump\.zst/],
    ['an id that is not a set id', JSON.stringify({ ...good, id: '../x' }), /^manifest field id:/],
  ])('rejects %s, saying which field', (_what, text, problem) => {
    expect(parseManifest(text, good.id)).toBeUndefined();
    expect(readManifestText(text).problem).toMatch(problem);
  });

  it('accepts compressions, encryption methods and formats that plugins declare', () => {
    const open = withArtifact({ compression: 'xz', format: 'my-format', kind: 'redis', encryption: { method: 'age', recipients: ['age1xyz'] } });
    expect(parseManifest(JSON.stringify(open), good.id)).toEqual(open);
  });

  it.each([
    ['db.dump', true],
    ['secrets.tar.zst.gpg', true],
    ['with space é.txt', true],
    ['manifest.json', false],
    ['.hidden', false],
    ['..', false],
    ['half.dump.partial', false],
    ['a/b', false],
    ['/etc/passwd', false],
    ['a\\b', false],
    ['nul\0byte', false],
    ['tab\there', false],
    ['x'.repeat(201), false],
    ['x'.repeat(200), true],
    ['é'.repeat(101), false],
    ['fullwidth／slash', false],
    ['division∕slash', false],
    ['fraction⁄slash', false],
    ['one-dot-leader․․', false],
    ['zero\u200bwidth', false],
    ['rtl\u202eoverride', false],
    [' leading-space', false],
    ['ﬁligature', false],
  ])('file name %j is allowed: %s', (name, ok) => {
    expect(ArtifactName.safeParse(name).success).toBe(ok);
  });
});

describe('serializeManifest: a manifest is written only if readers will read it back as the same set', () => {
  it('writes a valid manifest unchanged (no masking: a weak password that occurs in the id stays data)', () => {
    const text = serializeManifest(good);
    expect(JSON.parse(text)).toEqual(good);
    expect(text).toContain('"id": "20261125T014500Z-mastodon"');
  });

  it.each([
    ['an invalid field', withArtifact({ sha256: 'nope' }), 'artifacts[0].sha256'],
    ['a field readers drop', withArtifact({ level: 3 }), 'artifacts[0].level would be dropped by readers'],
    ['a nested field readers drop', withArtifact({ encryption: { method: 'age', recipients: [], identity: 'x' } }), 'artifacts[0].encryption.identity would be dropped'],
    ['a hostile plaintext name', withArtifact({ plain: { name: '../x', bytes: 1, sha256: 'b'.repeat(64) } }), 'artifacts[0].plain.name'],
  ])('fails with MANIFEST_INVALID on %s, naming the field', (_what, manifest, field) => {
    const error = serializeError(manifest);
    expect(error).toMatch(/^MANIFEST_INVALID: the manifest of set 20261125T014500Z-mastodon would not be read back as a complete set: /);
    expect(error).toContain(field);
  });
});
