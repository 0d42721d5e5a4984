/**
 * Reading what a destination holds, and judging each set. The state of a set is computed here
 * only, and `list`, `--json`, metrics, restore and retention all use it:
 *
 * - `complete`: a valid manifest of this set, and every artifact it lists present with its size;
 * - `damaged`: a manifest that cannot be read or is not valid, an artifact missing or of the
 *   wrong size, or a checksum failure recorded by restore/verify (`damaged.json`) — never deleted
 *   automatically, a person must look;
 * - `partial`: no manifest at all (an interrupted upload, or one still being written).
 */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { writeFileAtomic } from './atomic-file.js';
import { DAMAGE_MARKER_NAME, MANIFEST_NAME, type Destination, type StoredSet } from './destination.js';
import { MAX_MANIFEST_BYTES, parseSetId, readManifestText, type Manifest } from './manifest.js';

export type SetState = 'complete' | 'damaged' | 'partial';

export interface SetInfo extends StoredSet {
  time: Date;
  source: string;
  state: SetState;
  /** `state === 'complete'`: the set counts as a backup. */
  complete: boolean;
  /** The valid manifest (also present for a set damaged by a missing or short artifact). */
  manifest?: Manifest;
  /** Why a set is not complete. */
  problem?: string;
}

/** Reads and validates the manifest of a set, or explains why it is not usable. */
export async function readManifest(destination: Destination, setId: string, scratchDir?: string): Promise<{ manifest?: Manifest; problem?: string }> {
  const dir = await mkdtemp(join(scratchDir ?? tmpdir(), 'manifest-'));
  try {
    const path = join(dir, MANIFEST_NAME);
    try {
      await destination.get(setId, MANIFEST_NAME, path);
    } catch (error) {
      return { problem: `manifest cannot be read: ${(error as Error).message}` };
    }
    return readManifestText(await readFile(path, 'utf8'), setId);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** The state of a stored set from its listing and its manifest (pure: the rules above). */
export function judgeSet(set: StoredSet, read: { manifest?: Manifest; problem?: string } | undefined): Pick<SetInfo, 'state' | 'complete' | 'manifest' | 'problem'> {
  const damaged = (problem: string, manifest?: Manifest) => ({ state: 'damaged' as const, complete: false, problem, ...(manifest ? { manifest } : {}) });
  if (!set.hasManifest) return { state: 'partial', complete: false, problem: 'no manifest (interrupted, or still being written)' };
  if (!read?.manifest) return damaged(read?.problem ?? 'manifest was not read');
  const { manifest } = read;
  if (!set.files) return damaged('the destination does not list the files of its sets, so their sizes cannot be checked', manifest);
  if (set.files.some((f) => f.name === DAMAGE_MARKER_NAME)) return damaged(`a restore or verify found an altered file (see ${DAMAGE_MARKER_NAME} in the set)`, manifest);
  const stored = new Map(set.files.map((f) => [f.name, f.bytes]));
  for (const artifact of manifest.artifacts) {
    const bytes = stored.get(artifact.name);
    if (bytes === undefined) return damaged(`${artifact.name} is missing`, manifest);
    if (bytes !== artifact.bytes) return damaged(`${artifact.name} is ${bytes} bytes, the manifest says ${artifact.bytes}`, manifest);
    // A tree artifact also needs its tree, sealed (complete) in this destination, with the manifest's counts when the listing tells them.
    if (artifact.tree) {
      const { name, files, bytes: treeBytes } = artifact.tree;
      const tree = set.trees?.find((t) => t.name === name);
      if (!tree) return damaged(`tree ${name} of ${artifact.name} is missing or was not completed`, manifest);
      if ((tree.files !== undefined && tree.files !== files) || (tree.bytes !== undefined && tree.bytes !== treeBytes)) {
        return damaged(`tree ${name} holds ${tree.files ?? '?'} files (${tree.bytes ?? '?'} bytes), the manifest says ${files} (${treeBytes} bytes)`, manifest);
      }
    }
  }
  return { state: 'complete', complete: true, manifest };
}

/** Every set of a destination, oldest first, with manifests read and checked. Throws when the listing itself fails. */
export async function listSets(destination: Destination, options: { scratchDir?: string } = {}): Promise<SetInfo[]> {
  const stored = await destination.list();
  const out: SetInfo[] = [];
  for (const set of stored) {
    const parsed = parseSetId(set.id);
    if (!parsed) continue;
    let read: { manifest?: Manifest; problem?: string } | undefined;
    if (set.hasManifest) {
      const listed = set.files?.find((f) => f.name === MANIFEST_NAME);
      if (listed && listed.bytes > MAX_MANIFEST_BYTES) read = { problem: `manifest is larger than ${MAX_MANIFEST_BYTES} bytes` };
      else read = await readManifest(destination, set.id, options.scratchDir);
    }
    out.push({ ...set, ...parsed, ...judgeSet(set, read) });
  }
  return out.sort((a, b) => a.id.localeCompare(b.id));
}

/**
 * Records in the set itself that a restore or verify found `problem` (a checksum failure), so every
 * later listing, on every host, calls the set damaged. Never throws: a destination that refuses the
 * write (read-only, append-only) gets a warning, and the failure that was found is reported anyway.
 */
export async function recordDamage(
  destination: Destination,
  setId: string,
  problem: string,
  ctx: { scratchDir: string; signal?: AbortSignal; log?: { warn(obj: object, msg: string): void } },
): Promise<void> {
  const dir = await mkdtemp(join(ctx.scratchDir, 'damage-'));
  try {
    const path = join(dir, DAMAGE_MARKER_NAME);
    const digest = await writeFileAtomic(path, JSON.stringify({ setId, problem, foundAt: new Date().toISOString() }, null, 2) + '\n');
    await destination.put(setId, DAMAGE_MARKER_NAME, { path, ...digest }, { signal: ctx.signal });
  } catch (error) {
    ctx.log?.warn({ setId, err: (error as Error).message }, `could not record in ${setId} that it is damaged: ${(error as Error).message}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
