/** The types every hook receives: the run context, artifacts, progress and summary events. */
import type PQueue from 'p-queue';
import type { Logger } from 'pino';
import type { NamedDestination } from './destination.js';
import type { ExecOptions, ExecProcess } from './exec.js';
import type { PgSource } from './postgres.js';
import type { SecretRegistry } from './secrets.js';

export type Compression = 'none' | 'gzip' | 'zstd' | 'lz4';

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
  encryption?: { method: 'gpg'; recipients: string[]; symmetric: boolean };
  bytes: number;
  sha256: string;
  /** For an encrypted or otherwise derived artifact: what the original was. */
  plain?: { name: string; bytes: number; sha256: string };
  /** Facts about the content (database name, row counts…). JSON-compatible, no secrets. */
  meta: Record<string, unknown>;
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
  progress(event: Omit<ProgressEvent, 'plugin'> & { plugin?: string }): void;
  /** Registers cleanup that runs when the run ends, whatever the outcome (last registered first). */
  defer(cleanup: () => unknown): void;
  /** The run's one concurrency queue. */
  readonly queue: PQueue;
}
