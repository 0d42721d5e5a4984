/**
 * A destination stores backup sets. Built-in and community destinations implement this same
 * small interface, so shipping, retention, `list`, `verify` and `restore` work for all of them.
 *
 * Layout rule every destination keeps: a set is a folder (or key prefix) named by its id holding
 * its artifacts and, written last, `manifest.json`. A set without a readable manifest is
 * incomplete and never counts as a backup.
 */
import { PARTIAL_SUFFIX } from './atomic-file.js';
import { PipelineError } from './errors.js';
import { parseSetId } from './manifest.js';

export const MANIFEST_NAME = 'manifest.json';

export interface StoredSet {
  id: string;
  /** Whether `manifest.json` is present. Validity is checked by the caller reading it. */
  hasManifest: boolean;
  /** When the destination last saw a write to this set (for the incomplete-set grace period). */
  modifiedAt?: Date;
}

export interface PutSource {
  /** Local file to upload. Destinations must stream it, never read it whole into memory. */
  path: string;
  bytes: number;
  sha256: string;
}

export interface DestinationOperationOptions {
  signal?: AbortSignal;
  onBytes?: (bytes: number) => void;
}

export interface Destination {
  /** One line naming where this is, without secrets: `rsync backup@host:/srv/backups`. */
  describe(): string;
  /** Optional reachability/permission check run in preflight (and in --dry-run). */
  check?(options?: DestinationOperationOptions): Promise<void>;
  /**
   * Stores `source` as `setId/name`. Must be atomic per file where the protocol allows it (a
   * reader never sees a half-written file under the final name), and should verify the stored
   * checksum where the protocol allows it.
   */
  put(setId: string, name: string, source: PutSource, options?: DestinationOperationOptions): Promise<void>;
  /** Every set (complete or not) this destination holds. */
  list(options?: DestinationOperationOptions): Promise<StoredSet[]>;
  /** Downloads `setId/name` into the local file `toPath`. */
  get(setId: string, name: string, toPath: string, options?: DestinationOperationOptions): Promise<void>;
  /** Removes a whole set. Deleting a set that does not exist is not an error. */
  delete(setId: string, options?: DestinationOperationOptions): Promise<void>;
}

/** A destination as configured: its config name and the plugin that made it. */
export interface NamedDestination {
  name: string;
  plugin: string;
  destination: Destination;
}

/** Throws SET_NOT_FOUND unless `setId` is a set id (never a path, a partial or a hidden name). Destinations call it before touching storage. */
export function assertSetId(setId: string): void {
  if (!parseSetId(setId) || setId.endsWith(PARTIAL_SUFFIX)) {
    throw new PipelineError('SET_NOT_FOUND', `"${setId}" is not a backup set id`);
  }
}

/** Throws unless `name` can be a file of a set: one path segment, not hidden or partial, no control characters. */
export function assertFileName(name: string): void {
  if (!name || name.includes('/') || name.startsWith('.') || name.endsWith(PARTIAL_SUFFIX) || /[\0-\x1f\x7f]/.test(name)) {
    throw new PipelineError('DESTINATION_FAILED', `"${name}" is not a valid file name in a backup set`, {
      hint: 'Artifact names are one path segment, not hidden, without control characters.',
    });
  }
}
