/** Tree artifacts: the index format, the tree path check, the manifest's tree entry and judgeSet's rule for trees (pure). */
import { describe, expect, it } from 'vitest';
import { MANIFEST_FORMAT, readManifestText, type Manifest } from './manifest.js';
import { judgeSet } from './sets.js';
import { parseTreeIndex, serializeTreeIndex, treePathProblem, type TreeEntry } from './tree.js';

const sha = (c: string) => c.repeat(64);
const entry = (path: string, bytes = 3): TreeEntry => ({ path, bytes, sha256: sha('a'), mode: 0o644, mtimeMs: 1_700_000_000_000.5 });

describe('tree index', () => {
  it('round-trips entries sorted by path, with a header counting files and bytes', () => {
    const entries = [entry('b/2.png', 5), entry('a/1.png'), entry('.hidden/x', 0)];
    const text = serializeTreeIndex(entries);
    expect(text.split('\n')[0]).toBe(JSON.stringify({ format: 'backup-pipeline/tree@1', files: 3, bytes: 8 }));
    expect(parseTreeIndex(text).map((e) => e.path)).toEqual(['.hidden/x', 'a/1.png', 'b/2.png']);
    expect(parseTreeIndex(text)[1]).toEqual(entry('a/1.png'));
  });

  it.each([
    ['no header', '{"path":"a","bytes":1}\n', /line 1/],
    ['a header of another format', '{"format":"other"}\n', /not a backup-pipeline\/tree@1/],
    ['counts that do not match', `{"format":"backup-pipeline/tree@1","files":2,"bytes":3}\n${JSON.stringify(entry('a'))}\n`, /header says 2 files/],
    ['a path escaping the tree', `{"format":"backup-pipeline/tree@1","files":1,"bytes":3}\n${JSON.stringify(entry('../etc/passwd'))}\n`, /path "\.\.\/etc\/passwd"/],
    ['an absolute path', `{"format":"backup-pipeline/tree@1","files":1,"bytes":3}\n${JSON.stringify(entry('/etc/passwd'))}\n`, /empty, "\." or "\.\." segment/],
    ['a bad sha256', `{"format":"backup-pipeline/tree@1","files":1,"bytes":3}\n${JSON.stringify({ ...entry('a'), sha256: 'x' })}\n`, /invalid/],
    ['a duplicate', `{"format":"backup-pipeline/tree@1","files":2,"bytes":6}\n${JSON.stringify(entry('a'))}\n${JSON.stringify(entry('a'))}\n`, /listed twice/],
  ])('refuses an index with %s (MANIFEST_INVALID)', (_label, text, message) => {
    expect(() => parseTreeIndex(text)).toThrow(message);
    try {
      parseTreeIndex(text);
    } catch (error) {
      expect(error).toMatchObject({ code: 'MANIFEST_INVALID' });
    }
  });

  it.each([
    ['accounts/avatars/000/000/001/original/a.png', undefined],
    ['.well-known/x', undefined],
    ['a//b', /empty/],
    ['a/./b', /"\."/],
    ['a/b\u202e.png', /control or format/],
    ['a/b.partial', /\.partial/],
    ['a\\b', /slash/],
  ])('path %j: %s', (path, problem) => {
    if (problem) expect(treePathProblem(path)).toMatch(problem);
    else expect(treePathProblem(path)).toBeUndefined();
  });
});

describe('judgeSet with a tree artifact', () => {
  const manifest = (tree: Record<string, unknown> = { name: 'media', files: 2, bytes: 10, listSha256: sha('b') }): Manifest => {
    const read = readManifestText(
      JSON.stringify({
        format: MANIFEST_FORMAT,
        id: '20261201T010000Z-mastodon',
        pipeline: 'p',
        source: 'mastodon',
        createdAt: 'x',
        completedAt: 'x',
        framework: { name: 'backup-pipeline', version: '0', node: 'v20' },
        host: 'h',
        artifacts: [{ name: 'media.index.jsonl', kind: 'files', format: 'media-tree', compression: 'none', bytes: 100, sha256: sha('b'), meta: {}, tree }],
        stages: [],
        verified: false,
      }),
    );
    if (!read.manifest) throw new Error(read.problem);
    return read.manifest;
  };
  const files = [
    { name: 'media.index.jsonl', bytes: 100 },
    { name: 'manifest.json', bytes: 1 },
  ];
  const set = (trees?: Array<{ name: string; files?: number; bytes?: number }>) => ({ id: '20261201T010000Z-mastodon', hasManifest: true, files, ...(trees ? { trees } : {}) });

  it('is complete when the tree is sealed, with or without counts from the listing', () => {
    expect(judgeSet(set([{ name: 'media' }]), { manifest: manifest() }).state).toBe('complete');
    expect(judgeSet(set([{ name: 'media', files: 2, bytes: 10 }]), { manifest: manifest() }).state).toBe('complete');
  });

  it('is damaged when the tree is missing (never sealed), or holds other counts', () => {
    expect(judgeSet(set(), { manifest: manifest() })).toMatchObject({ state: 'damaged', problem: 'tree media of media.index.jsonl is missing or was not completed' });
    expect(judgeSet(set([{ name: 'other' }]), { manifest: manifest() }).state).toBe('damaged');
    expect(judgeSet(set([{ name: 'media', files: 1, bytes: 10 }]), { manifest: manifest() })).toMatchObject({ state: 'damaged', problem: expect.stringContaining('holds 1 files') });
  });

  it('is partial without a manifest, whatever trees there are', () => {
    expect(judgeSet({ ...set([{ name: 'media' }]), hasManifest: false }, undefined).state).toBe('partial');
  });

  it('refuses a manifest whose tree takes an artifact name or a hostile name', () => {
    expect(() => manifest({ name: 'media.index.jsonl', files: 1, bytes: 1, listSha256: sha('b') })).toThrow(/collides/);
    expect(() => manifest({ name: '../x', files: 1, bytes: 1, listSha256: sha('b') })).toThrow(/tree\.name/);
    expect(() => manifest({ name: 'media', files: 1, bytes: 1, listSha256: sha('b'), extra: 1 })).toThrow(/tree/);
  });
});
