import { describe, expect, it } from 'vitest';
import { ArtifactName, MANIFEST_FORMAT, parseManifest, type Manifest } from './manifest.js';

const good: Manifest = {
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

describe('manifest rules', () => {
  it('accepts a valid manifest for its own set only', () => {
    expect(parseManifest(JSON.stringify(good), good.id)).toEqual(good);
    expect(parseManifest(JSON.stringify(good), '20261126T000000Z-mastodon')).toBeUndefined();
  });

  it.each([
    ['not JSON', '{"format": '],
    ['another format', JSON.stringify({ ...good, format: 'other@1' })],
    ['no artifacts', JSON.stringify({ ...good, artifacts: [] })],
    ['a bad checksum', JSON.stringify({ ...good, artifacts: [{ ...good.artifacts[0], sha256: 'xyz' }] })],
    ['a negative size', JSON.stringify({ ...good, artifacts: [{ ...good.artifacts[0], bytes: -1 }] })],
    ['an unknown compression', JSON.stringify({ ...good, artifacts: [{ ...good.artifacts[0], compression: 'rar' }] })],
    ['an artifact in a folder', JSON.stringify({ ...good, artifacts: [{ ...good.artifacts[0], name: '../etc/passwd' }] })],
  ])('rejects %s', (_what, text) => {
    expect(parseManifest(text, good.id)).toBeUndefined();
  });

  it.each([
    ['db.dump', true],
    ['secrets.tar.zst.gpg', true],
    ['with space é.txt', true],
    ['manifest.json', false],
    ['.hidden', false],
    ['half.dump.partial', false],
    ['a/b', false],
  ])('artifact name %s is allowed: %s', (name, ok) => {
    expect(ArtifactName.safeParse(name).success).toBe(ok);
  });
});
