/**
 * What a restore drill (`pipeline verify SET --restore-test`) proved for one part of an instance:
 * the verify tap that restored an artifact somewhere throwaway records it as `artifact.meta.drill`,
 * and the core carries it into the `VerifySummary` and the CLI's report (per part: restored, how
 * big, how long it took). A part whose plugin has no drill is shown as checked but not drilled.
 */
import type { Artifact } from './context.js';

export interface RestoreDrill {
  /** Which part of the instance: `database`, `secrets`, `files` (media), `redis`… (the artifact kind). */
  part: string;
  /** Bytes of the artifact that was restored (its plaintext). */
  bytes: number;
  /** Time to restore it into the throwaway target and check it, in milliseconds. */
  durationMs: number;
  /** One line for a person: what was restored and what matched (`3 keys in 2 databases match the snapshot`). */
  detail: string;
}

/** Records a drill on the artifact (during `verify`); throws nothing. */
export function recordDrill(artifact: Artifact, drill: RestoreDrill): void {
  artifact.meta.drill = { ...drill };
}

/** The drill recorded on an artifact, if a well-formed one is there. */
export function drillOf(artifact: Pick<Artifact, 'meta'>): RestoreDrill | undefined {
  const d = artifact.meta?.drill as Partial<RestoreDrill> | undefined;
  if (!d || typeof d !== 'object' || typeof d.part !== 'string' || typeof d.bytes !== 'number' || typeof d.durationMs !== 'number' || typeof d.detail !== 'string') return undefined;
  return { part: d.part, bytes: d.bytes, durationMs: d.durationMs, detail: d.detail };
}
