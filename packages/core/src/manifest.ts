/**
 * The manifest: written last into every backup set, it lists every artifact with its size and
 * sha256. A set without a valid manifest is incomplete by definition.
 */
import { z } from 'zod';

export const MANIFEST_FORMAT = 'backup-pipeline/manifest@1';

const Sha256 = z.string().regex(/^[0-9a-f]{64}$/);
/** Artifact file names: one path segment, no hidden or partial files. */
export const ArtifactName = z
  .string()
  .min(1)
  .refine((n) => !n.includes('/') && !n.startsWith('.') && !n.endsWith('.partial') && n !== 'manifest.json', 'not a valid artifact file name');

export const ManifestArtifact = z.object({
  name: ArtifactName,
  kind: z.string(),
  format: z.string(),
  compression: z.enum(['none', 'gzip', 'zstd', 'lz4']),
  encryption: z.object({ method: z.literal('gpg'), recipients: z.array(z.string()), symmetric: z.boolean() }).optional(),
  bytes: z.number().int().nonnegative(),
  sha256: Sha256,
  plain: z.object({ name: z.string(), bytes: z.number().int().nonnegative(), sha256: Sha256 }).optional(),
  meta: z.record(z.string(), z.unknown()).default({}),
});

export const Manifest = z.object({
  format: z.literal(MANIFEST_FORMAT),
  id: z.string(),
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
});
export type Manifest = z.infer<typeof Manifest>;
export type ManifestArtifact = z.infer<typeof ManifestArtifact>;

const SET_ID = /^(\d{8}T\d{6}(?:\d{3})?Z)-([A-Za-z0-9][A-Za-z0-9_.-]*)$/;

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

/** Parses manifest text; undefined when it is not a valid manifest for `setId`. */
export function parseManifest(text: string, setId?: string): Manifest | undefined {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return undefined;
  }
  const result = Manifest.safeParse(json);
  if (!result.success) return undefined;
  if (setId && result.data.id !== setId) return undefined;
  return result.data;
}
