/**
 * A destination stores backup sets. Built-in and community destinations implement this same
 * small interface, so shipping, retention, `list`, `verify` and `restore` work for all of them.
 *
 * Layout rule every destination keeps: a set is a folder (or key prefix) named by its id holding
 * its artifacts and, written last, `manifest.json`. A set without a readable manifest is
 * incomplete and never counts as a backup.
 */
import type { Readable } from 'node:stream';
import { PARTIAL_SUFFIX } from './atomic-file.js';
import { PipelineError } from './errors.js';
import { parseSetId } from './manifest.js';
import type { StoredTree, TreeEntry, TreeOperationOptions, TreePutResult, TreeSource } from './tree.js';

export const MANIFEST_NAME = 'manifest.json';
/**
 * Written into a set when a restore or verify found one of its files altered (a checksum
 * failure): from then on every host lists the set as damaged, so retention keeps it out of its
 * keep slots (and never deletes it) until a person has looked.
 */
export const DAMAGE_MARKER_NAME = 'damaged.json';

/** A file a destination holds in a set, as its listing reports it. */
export interface StoredFile {
  name: string;
  bytes: number;
}

export interface StoredSet {
  id: string;
  /** Whether `manifest.json` is present. Validity is checked by the caller reading it. */
  hasManifest: boolean;
  /**
   * Every file of the set with its size, as the storage reports it (not from the manifest): the
   * core compares them with the manifest to tell a complete set from a damaged one. A destination
   * that leaves this out gets its sets listed as damaged.
   */
  files?: StoredFile[];
  /** When the destination last saw a write to this set (for the incomplete-set grace period). */
  modifiedAt?: Date;
  /** The complete trees of the set (sealed by `putTree`), for destinations that store trees. */
  trees?: StoredTree[];
}

export interface PutSource {
  /** Local file to upload. Destinations must stream it, never read it whole into memory. */
  path: string;
  bytes: number;
  sha256: string;
  /**
   * Set by the core when it hashed this file as it wrote it into the staging folder and it is
   * unchanged since (same size and modification time): a destination may then copy it without
   * reading it again to hash it (a local folder: `copyFileAtomic`).
   */
  hashedAsWritten?: boolean;
  /**
   * Offered by the core when the work dir only stages (`keepInWorkDir: false`) and the file is
   * `hashedAsWritten`: hard-links the staged file to `to` (which must not exist) and resolves true.
   * The core then only removes its own name for the file once the run is over, so the link is
   * that destination's copy, made without writing the bytes again. At most one destination of a
   * run gets true for a file; the others (and a `to` on another file system) get false and copy.
   * The staged file is never written again, but the linked file is shared with it until the run
   * ends: write nothing into it.
   */
  link?: (to: string) => Promise<boolean>;
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
  /**
   * Optional: `setId/name` as one stream of its stored bytes, start to end, so that restore can
   * fetch, check and decrypt in one pass without a local copy of the ciphertext (destinations
   * without it are fetched with `get` into a file). A missing file rejects with SET_NOT_FOUND,
   * from the promise or as the stream's error; a transfer that fails midway must make the stream
   * error, never end early as if complete. The caller checks the sha256; destroying the stream
   * stops the transfer.
   */
  read?(setId: string, name: string, options?: DestinationOperationOptions): Promise<Readable>;
  /**
   * Optional, for destinations whose stored files are files on this machine (a local folder, a
   * mounted disk): the path of `setId/name`. Restore then hands the file to its programs (hash,
   * decrypt) directly, and no byte of the stored copy passes through Node.js; the caller checks
   * the sha256 as with `read`, which is used when this is missing. A missing file rejects with
   * SET_NOT_FOUND. The path is only read, never written or removed.
   */
  localFile?(setId: string, name: string, options?: DestinationOperationOptions): Promise<string>;
  /** Removes a whole set. Deleting a set that does not exist is not an error. */
  delete(setId: string, options?: DestinationOperationOptions): Promise<void>;

  // ── trees (optional capability: a folder stored file by file, e.g. media; see tree.ts) ────────
  /**
   * Stores the files `source.entries` lists (read from `source.dir`) as tree `name` of `setId`,
   * paying only for what changed since this destination's previous tree of that name (hard links
   * to the previous snapshot, content-addressed objects…), so that every set still holds, and
   * restores, the whole tree. Each file written is checked against its sha256 (CHECKSUM_MISMATCH);
   * the tree's seal is written last, and `list` reports the tree in `StoredSet.trees` only once it
   * is there. Content shared with other sets must survive `delete` of any one of them: `delete`
   * removes only what no other set references.
   */
  putTree?(setId: string, name: string, source: TreeSource, options?: TreeOperationOptions): Promise<TreePutResult>;
  /**
   * Writes the files `entries` lists (all of the tree, or a sample) from tree `name` of `setId`
   * into the local folder `toDir` (0600 files, 0700 folders), each checked against its sha256
   * (CHECKSUM_MISMATCH); a missing tree or file rejects with SET_NOT_FOUND.
   */
  getTree?(setId: string, name: string, entries: readonly TreeEntry[], toDir: string, options?: TreeOperationOptions): Promise<void>;
  /** The entries of tree `name` of `setId` as its seal records them (SET_NOT_FOUND when it has none). */
  treeEntries?(setId: string, name: string, options?: TreeOperationOptions): Promise<TreeEntry[]>;
}

/** Whether a destination implements the tree capability (putTree, getTree, treeEntries). */
export function storesTrees(destination: Destination): destination is Destination & Required<Pick<Destination, 'putTree' | 'getTree' | 'treeEntries'>> {
  return typeof destination.putTree === 'function' && typeof destination.getTree === 'function' && typeof destination.treeEntries === 'function';
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

export { assertFileName } from './names.js';

/**
 * The token of a listing's next page, for destinations whose service pages its lists (S3's
 * ListObjectsV2: `IsTruncated`, `NextContinuationToken`). A page that says the list goes on but
 * gives no token would end the listing early, and a set whose manifest was on a later page would
 * look partial, and be swept by retention: that is an error, never a short list.
 */
export function nextPageToken(page: { truncated?: boolean; token?: string }, what: string): string | undefined {
  if (!page.truncated) return undefined;
  if (!page.token) {
    throw new PipelineError('DESTINATION_FAILED', `${what}: the server said the list goes on but gave no continuation token`, {
      hint: 'The service answered a paged listing out of protocol; nothing was deleted. Check the endpoint is S3-compatible.',
    });
  }
  return page.token;
}
