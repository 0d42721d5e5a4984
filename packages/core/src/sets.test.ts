import { describe, expect, it } from 'vitest';
import type { StoredSet } from './destination.js';
import type { Manifest } from './manifest.js';
import { sampleManifest } from './test-fixtures.js';
import { judgeSet } from './sets.js';

const manifest: Manifest = {
  ...sampleManifest,
  artifacts: [sampleManifest.artifacts[0]!, { name: 'env.tar.gpg', kind: 'secrets', format: 'tar', compression: 'none', bytes: 0, sha256: 'b'.repeat(64), meta: {} }],
};
const stored = (files: StoredSet['files'], hasManifest = true): StoredSet => ({ id: manifest.id, hasManifest, files });
const allFiles = [
  { name: 'db.dump.zst', bytes: 10 },
  { name: 'env.tar.gpg', bytes: 0 },
  { name: 'manifest.json', bytes: 700 },
];

describe('judgeSet: the state of a stored set', () => {
  it.each([
    ['every artifact present with its size', stored(allFiles), { manifest }, 'complete', undefined],
    ['extra files beside the artifacts', stored([...allFiles, { name: '.DS_Store', bytes: 3 }]), { manifest }, 'complete', undefined],
    ['no manifest', stored(allFiles.slice(0, 2), false), undefined, 'partial', 'no manifest (interrupted, or still being written)'],
    ['a manifest that does not parse', stored(allFiles), { problem: 'manifest is not JSON (x)' }, 'damaged', 'manifest is not JSON (x)'],
    ['a manifest that could not be fetched', stored(allFiles), { problem: 'manifest cannot be read: EIO' }, 'damaged', 'manifest cannot be read: EIO'],
    ['a missing artifact', stored([allFiles[0]!, allFiles[2]!]), { manifest }, 'damaged', 'env.tar.gpg is missing'],
    ['a truncated artifact', stored([{ name: 'db.dump.zst', bytes: 9 }, ...allFiles.slice(1)]), { manifest }, 'damaged', 'db.dump.zst is 9 bytes, the manifest says 10'],
    ['a grown artifact', stored([{ name: 'db.dump.zst', bytes: 11 }, ...allFiles.slice(1)]), { manifest }, 'damaged', 'db.dump.zst is 11 bytes, the manifest says 10'],
    ['a destination that lists no files', stored(undefined), { manifest }, 'damaged', 'the destination does not list the files of its sets, so their sizes cannot be checked'],
  ] as const)('%s → %s', (_what, set, read, state, problem) => {
    const judged = judgeSet(set, read);
    expect(judged.state).toBe(state);
    expect(judged.complete).toBe(state === 'complete');
    expect(judged.problem).toBe(problem);
  });

  it('keeps the manifest of a set damaged by its artifacts (so a person can see what it held)', () => {
    expect(judgeSet(stored([allFiles[2]!]), { manifest }).manifest).toBe(manifest);
  });
});
