/**
 * The manifest: written last into every backup set, it lists every artifact with its size and
 * sha256. A set without a valid manifest is not a backup.
 *
 * A manifest is data the product reads back: it is built from typed fields, validated with the
 * same schema every reader uses before it is written (`serializeManifest`), and never passed
 * through display-time transformations such as secret masking.
 */
import { isDeepStrictEqual } from 'node:util';
import { z } from 'zod';
import { PipelineError } from './errors.js';
import { IDENTIFIER, nameProblem } from './names.js';

export const MANIFEST_FORMAT = 'backup-pipeline/manifest@1';
/** Largest manifest a reader accepts (a manifest of thousands of artifacts is well under 1 MiB). */
export const MAX_MANIFEST_BYTES = 16 * 1024 * 1024;

const Sha256 = z.string().regex(/^[0-9a-f]{64}$/, 'not a sha256 (64 lowercase hex digits)');
const Bytes = z.number().int().nonnegative().max(Number.MAX_SAFE_INTEGER);
/** Open identifiers (`zstd`, `age`, `pg-custom`…): any plugin may declare its own, but they are safe names. */
export const Identifier = z.string().regex(IDENTIFIER, 'not an identifier (letters, digits, ".", "_", "+", "-"; at most 64)');
/** File names of a set: one path segment, no hidden, partial or look-alike names (see names.ts). */
export const FileName = z.string().superRefine((name, ctx) => {
  const problem = nameProblem(name);
  if (problem) ctx.addIssue({ code: 'custom', message: `not a valid file name: it ${problem}` });
});
/** Artifact file names: a file name that is not the manifest's own. */
export const ArtifactName = FileName.refine((n) => n !== 'manifest.json' && n !== 'damaged.json', 'manifest.json and damaged.json are reserved names');

export const ManifestArtifact = z.object({
  name: ArtifactName,
  kind: Identifier,
  format: Identifier,
  compression: Identifier,
  encryption: z.object({ method: Identifier, recipients: z.array(z.string()), symmetric: z.boolean().optional() }).optional(),
  bytes: Bytes,
  sha256: Sha256,
  plain: z.object({ name: ArtifactName, bytes: Bytes, sha256: Sha256 }).optional(),
  meta: z.record(z.string(), z.unknown()).default({}),
  /**
   * A tree artifact (see tree.ts): this artifact is the tree's index, and the set is complete only
   * when the destination also holds tree `name` with its `files` (`bytes` in all), whose file list
   * has the sha256 `listSha256` (the plaintext index's).
   */
  tree: z.object({ name: ArtifactName, files: Bytes, bytes: Bytes, listSha256: Sha256 }).strict().optional(),
});

const SET_ID = /^(\d{8}T\d{6}(?:\d{3})?Z)-([A-Za-z0-9][A-Za-z0-9_.-]*)$/;

export const Manifest = z
  .object({
    format: z.literal(MANIFEST_FORMAT),
    id: z.string().regex(SET_ID, 'not a set id'),
    pipeline: z.string(),
    source: z.string(),
    createdAt: z.string(),
    completedAt: z.string(),
    framework: z.object({ name: z.string(), version: z.string(), node: z.string() }),
    host: z.string(),
    artifacts: z.array(ManifestArtifact).min(1),
    stages: z.array(z.object({ plugin: z.string(), hook: z.string(), durationMs: z.number(), result: z.string() })),
    facts: z.record(z.string(), z.unknown()).default({}),
    tools: z.record(z.string(), z.string()).default({}),
    verified: z.boolean(),
  })
  .superRefine((m, ctx) => {
    const seen = new Set<string>();
    m.artifacts.forEach((a, i) => {
      if (seen.has(a.name)) ctx.addIssue({ code: 'custom', path: ['artifacts', i, 'name'], message: `two artifacts are named ${a.name}` });
      seen.add(a.name);
    });
    // A tree takes its name and its seal's (`NAME.tree`) in the set: no artifact or other tree may use them.
    m.artifacts.forEach((a, i) => {
      if (!a.tree) return;
      for (const taken of [a.tree.name, `${a.tree.name}.tree`]) {
        if (seen.has(taken)) ctx.addIssue({ code: 'custom', path: ['artifacts', i, 'tree', 'name'], message: `tree ${a.tree.name} collides with the name ${taken}` });
        seen.add(taken);
      }
    });
  });
export type Manifest = z.infer<typeof Manifest>;
export type ManifestArtifact = z.infer<typeof ManifestArtifact>;

/** `20261125T014500Z-mastodon`: sorts by time, readable, safe as a folder or key name. */
export function makeSetId(date: Date, source: string): string {
  const stamp = date.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z');
  return `${stamp}-${source}`;
}

/** The time and source encoded in a set id, or undefined for names that are not set ids. */
export function parseSetId(id: string): { time: Date; source: string } | undefined {
  const m = SET_ID.exec(id);
  if (!m) return undefined;
  const s = m[1]!;
  const iso = `${s.slice(0, 4)}-${s.slice(4, 6)}-${s.slice(6, 8)}T${s.slice(9, 11)}:${s.slice(11, 13)}:${s.slice(13, 15)}Z`;
  const time = new Date(iso);
  return Number.isNaN(time.getTime()) ? undefined : { time, source: m[2]! };
}

const fieldPath = (path: ReadonlyArray<PropertyKey>) =>
  path.reduce<string>((out, key) => (typeof key === 'number' ? `${out}[${key}]` : out ? `${out}.${String(key)}` : String(key)), '') || '(root)';

/** Reads manifest text: the manifest, or the first reason it is not a valid manifest of `setId`. */
export function readManifestText(text: string, setId?: string): { manifest: Manifest; problem?: undefined } | { manifest?: undefined; problem: string } {
  if (text.length > MAX_MANIFEST_BYTES) return { problem: `manifest is larger than ${MAX_MANIFEST_BYTES} bytes` };
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    return { problem: `manifest is not JSON (${(error as Error).message})` };
  }
  const result = Manifest.safeParse(json);
  if (!result.success) {
    const issue = result.error.issues[0]!;
    return { problem: `manifest field ${fieldPath(issue.path)}: ${issue.message}` };
  }
  if (setId !== undefined && result.data.id !== setId) return { problem: `manifest belongs to set ${result.data.id}, not ${setId}` };
  return { manifest: result.data };
}

/** Parses manifest text; undefined when it is not a valid manifest for `setId`. */
export function parseManifest(text: string, setId?: string): Manifest | undefined {
  return readManifestText(text, setId).manifest;
}

/** The first place where `read` (what a reader gets back) differs from `written`, or undefined. */
function firstDifference(written: unknown, read: unknown, path: PropertyKey[] = []): string | undefined {
  if (written !== null && typeof written === 'object' && read !== null && typeof read === 'object' && Array.isArray(written) === Array.isArray(read)) {
    for (const [key, value] of Object.entries(written)) {
      const k = Array.isArray(written) ? Number(key) : key;
      if (!(key in read)) return `${fieldPath([...path, k])} would be dropped by readers (not part of the manifest format)`;
      const diff = firstDifference(value, (read as Record<string, unknown>)[key], [...path, k]);
      if (diff) return diff;
    }
    // Parsing only drops or defaults fields: every written key checked above is the whole difference.
    return undefined;
  }
  return isDeepStrictEqual(written, read) ? undefined : `${fieldPath(path)} would be read back as ${JSON.stringify(read)}`;
}

/** The first free-form field (facts, tools, artifact meta) whose value is a registered secret. */
function secretField(manifest: Manifest, isSecret: (value: string) => boolean): string | undefined {
  const walk = (value: unknown, path: PropertyKey[]): string | undefined => {
    if (typeof value === 'string') return isSecret(value) ? `${fieldPath(path)} holds a registered secret (secrets never enter a manifest)` : undefined;
    if (value === null || typeof value !== 'object') return undefined;
    for (const [key, inner] of Object.entries(value)) {
      const found = walk(inner, [...path, Array.isArray(value) ? Number(key) : key]);
      if (found) return found;
    }
    return undefined;
  };
  return walk(manifest.facts, ['facts']) ?? walk(manifest.tools, ['tools']) ?? manifest.artifacts.map((a, i) => walk(a.meta, ['artifacts', i, 'meta'])).find(Boolean);
}

/**
 * The text of `manifest`, after proving every reader will read it back as the same complete set:
 * the text is parsed and validated exactly as `list`, `restore` and retention will parse it, and
 * compared field by field; and no free-form field may hold a secret (`isSecret`). Throws
 * MANIFEST_INVALID naming the field otherwise.
 */
export function serializeManifest(manifest: Manifest, options: { isSecret?: (value: string) => boolean } = {}): string {
  const text = JSON.stringify(manifest, null, 2) + '\n';
  const read = readManifestText(text, manifest.id);
  const problem = read.problem ?? firstDifference(JSON.parse(text), read.manifest) ?? (options.isSecret && secretField(manifest, options.isSecret));
  if (problem) {
    throw new PipelineError('MANIFEST_INVALID', `the manifest of set ${manifest.id} would not be read back as a complete set: ${problem}`, {
      hint: 'Nothing was shipped. A stage recorded a value the manifest format does not allow; the plugin named in the field is at fault.',
      details: { setId: manifest.id },
    });
  }
  return text;
}
