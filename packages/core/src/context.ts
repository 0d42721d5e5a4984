/** The types every hook receives: the run context, artifacts, progress and summary events. */
import type PQueue from 'p-queue';
import type { Logger } from 'pino';
import type { StreamArtifactRequest, StreamedArtifact } from './artifact-stream.js';
import type { NamedDestination } from './destination.js';
import type { ExecOptions, ExecProcess } from './exec.js';
import type { PgSource } from './postgres.js';
import type { RestoreReport, RestoreTarget } from './restore-context.js';
import type { SecretRegistry } from './secrets.js';

/** The compressions the built-in plugins read and write. */
export type KnownCompression = 'none' | 'gzip' | 'zstd' | 'lz4';
/**
 * An artifact's compression: a built-in one, or any identifier a plugin declares (`xz`…). The
 * manifest accepts every safe identifier; restoring needs a plugin that handles it.
 */
export type Compression = KnownCompression | (string & {});

/** How an artifact is encrypted. `method` is an identifier a plugin declares (`gpg`, `age`…). */
export interface Encryption {
  method: string;
  /** Who can decrypt it (key fingerprints, age recipients…); no secrets. */
  recipients: string[];
  /** Encrypted with a passphrase rather than for recipients. */
  symmetric?: boolean;
}

/** One file of a backup set. */
export interface Artifact {
  /** File name inside the set (no folders): `mastodon_production.dump.zst.gpg`. */
  name: string;
  /** Absolute path of the file in this run's staging folder. */
  path: string;
  /** What it holds: `database`, `globals`, `files`, `secrets`, `rake`, `command`… */
  kind: string;
  /** How to read it: `pg-custom`, `pg-directory-tar`, `pg-plain`, `tar`, `file`… */
  format: string;
  compression: Compression;
  encryption?: Encryption;
  bytes: number;
  sha256: string;
  /** For an encrypted or otherwise derived artifact: what the original was. */
  plain?: { name: string; bytes: number; sha256: string };
  /** Facts about the content (database name, row counts…). JSON-compatible, no secrets. */
  meta: Record<string, unknown>;
  /**
   * A tree artifact: this artifact's file is the index of a folder whose files the runner ships
   * with the destinations' `putTree` (before the artifact itself). `dir` and `index` (the local
   * folder, and the plaintext index, which stays readable after a transform encrypts the artifact)
   * exist only during a run; the manifest keeps `name`, `files`, `bytes` and `listSha256`.
   */
  tree?: ArtifactTree;
}

/** The tree of a tree artifact (see tree.ts). */
export interface ArtifactTree {
  /** The tree's name in the set (one path segment). */
  name: string;
  files: number;
  bytes: number;
  /** sha256 of the plaintext index: the digest of the file list. */
  listSha256: string;
  /** During a run: the local folder holding the files. */
  dir?: string;
  /** During a run: the plaintext index file. */
  index?: string;
}

export interface ProgressEvent {
  plugin: string;
  /** What is progressing: `dump`, `upload:offsite`, `restore`… */
  task: string;
  bytes?: number;
  totalBytes?: number;
  done?: number;
  total?: number;
  message?: string;
}

export interface StageEvent {
  plugin: string;
  hook: string;
  startedAt: number;
  durationMs?: number;
  result?: 'ok' | 'failed';
  error?: string;
}

export interface ShipReport {
  destination: string;
  ok: boolean;
  files: number;
  bytes: number;
  durationMs: number;
  error?: string;
  /** Tree artifacts stored (`putTree`): files and bytes of each tree, and what had to be written for it. */
  trees?: Array<{ name: string; files: number; bytes: number; filesWritten: number; bytesWritten: number }>;
}

export interface RunSummary {
  pipeline: string;
  setId: string;
  ok: boolean;
  startedAt: string;
  durationMs: number;
  artifacts: Array<Pick<Artifact, 'name' | 'bytes' | 'sha256' | 'kind' | 'format' | 'compression'> & { encrypted: boolean }>;
  destinations: ShipReport[];
  stages: StageEvent[];
  error?: { code: string; message: string; hint: string; plugin?: string; hook?: string };
}

/** Lines shown by `pipeline run --dry-run`: what each stage would do, commands masked. */
export interface Plan {
  steps: Array<{ plugin: string; hook: string; description: string; command?: string }>;
  add(step: { plugin?: string; hook?: string; description: string; command?: string }): void;
}

export interface RunContext {
  readonly pipeline: string;
  /** Sortable id of the set this run makes: `20261125T014500Z-mastodon`. */
  readonly setId: string;
  readonly source: string;
  readonly dryRun: boolean;
  readonly startedAt: Date;
  readonly timezone: string;
  /** The work dir root; completed sets stay there as the `work` destination. */
  readonly workDir: string;
  /** Staging folder of this run's set (inside workDir). */
  readonly setDir: string;
  /** A private (0700) temporary folder for this run, removed when it ends. */
  readonly tmpDir: string;
  readonly signal: AbortSignal;
  readonly log: Logger;
  readonly secrets: SecretRegistry;
  /** Artifacts of this set so far, in production order. */
  readonly artifacts: readonly Artifact[];
  /** The destinations this pipeline ships to (not including the work dir). */
  readonly destinations: readonly NamedDestination[];
  /** The work dir as a destination, for retention and listing. */
  readonly work: NamedDestination;
  /** Connection to the PostgreSQL server being backed up, set by a credentials plugin. */
  pg?: PgSource;
  /** Facts about the source for the manifest (server version, database size, tables…). */
  readonly facts: Record<string, unknown>;
  /** Versions of the tools used (`pg_dump`, `gpg`…), for the manifest. */
  readonly tools: Record<string, string>;
  /** Runs a program with this run's signal and secrets (see `exec`). */
  exec(file: string, args?: readonly string[], options?: ExecOptions): ExecProcess;
  addArtifact(artifact: Artifact): void;
  /**
   * Makes an artifact in one pass: runs the producer's program, the verifiers' consumers
   * (`verifyStream`), the compressor and the transforms' filters (`transformFilter`) as one chain
   * of processes, hashing the plain and the final bytes on the way, and writes the file once into
   * `request.dir`. Returns the artifact (not yet added: call `addArtifact`). Throws the first real
   * cause when any member fails, leaving no file behind.
   */
  streamArtifact(request: StreamArtifactRequest): Promise<StreamedArtifact>;
  progress(event: Omit<ProgressEvent, 'plugin'> & { plugin?: string }): void;
  /** Registers cleanup that runs when the run ends, whatever the outcome (last registered first). */
  defer(cleanup: () => unknown): void;
  /** The run's one concurrency queue. */
  readonly queue: PQueue;
  /**
   * Restores an artifact through the `restore` hook (keyed by its format): a restore test uses
   * this. Throws RESTORE_NEEDS_PLUGIN when no loaded plugin restores that format.
   */
  restore(artifact: Artifact, target: RestoreTarget): Promise<RestoreReport>;
  /** The artifact with its compression undone, through the `decompress` hook (a file in tmpDir). */
  decompress(artifact: Artifact): Promise<Artifact>;
  /** What `retain` taps kept and deleted, per destination (shown by `pipeline prune`). */
  readonly retention: RetainReport[];
  /** Set by `pipeline prune`: damaged sets the operator asked to delete (`--delete-damaged`). */
  readonly prune?: { readonly deleteDamaged: readonly string[] };
}

/** One retention pass over one destination, as a `retain` tap reports it (`ctx.retention.push`). */
export interface RetainReport {
  destination: string;
  dryRun: boolean;
  keep: Array<{ id: string; reasons: string[] }>;
  delete: Array<{ id: string; reasons: string[] }>;
  deleted: string[];
  failed: Array<{ id: string; error: string }>;
}
