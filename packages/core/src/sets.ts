/** Reading what a destination holds: set ids, their manifests, and whether they are complete. */
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { MANIFEST_NAME, type Destination, type StoredSet } from './destination.js';
import { parseManifest, parseSetId, type Manifest } from './manifest.js';

export interface SetInfo extends StoredSet {
  time: Date;
  source: string;
  /** The manifest is present and valid: the set counts as a backup. */
  complete: boolean;
  manifest?: Manifest;
  /** Why an incomplete set is incomplete. */
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
    const manifest = parseManifest(await readFile(path, 'utf8'), setId);
    return manifest ? { manifest } : { problem: 'manifest is corrupt or belongs to another set' };
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}

/** Every set of a destination, oldest first, with manifests read and checked. */
export async function listSets(destination: Destination, options: { scratchDir?: string } = {}): Promise<SetInfo[]> {
  const stored = await destination.list();
  const out: SetInfo[] = [];
  for (const set of stored) {
    const parsed = parseSetId(set.id);
    if (!parsed) continue;
    let info: SetInfo = { ...set, ...parsed, complete: false };
    if (set.hasManifest) {
      const { manifest, problem } = await readManifest(destination, set.id, options.scratchDir);
      info = { ...info, complete: manifest !== undefined, manifest, problem };
    } else {
      info.problem = 'no manifest (interrupted or still being written)';
    }
    out.push(info);
  }
  return out.sort((a, b) => a.id.localeCompare(b.id));
}
