/** The types of the restore half of the lifecycle: what restore, verify and their taps receive. */
import type { Artifact, RunContext } from './context.js';
import type { Destination } from './destination.js';
import type { Manifest } from './manifest.js';
import type { RestoreDrill } from './restore-drill.js';
import type { PgSource } from './postgres.js';

/** Where one artifact is restored to. A tap restores into what fits its format and ignores the rest. */
export interface RestoreTarget {
  /** An existing database to restore a database artifact into (empty, or `clean`). */
  database?: string;
  /** A folder to restore file artifacts (archives, env files) into; existing files are never overwritten. */
  directory?: string;
  /** Roles and tablespaces (a globals artifact) are replayed into the server. */
  globals?: boolean;
  /** Parallel workers (pg_restore -j). */
  jobs: number;
  /** Drop objects the dump recreates first (pg_restore --clean). */
  clean?: boolean;
  /**
   * The server holding `database`, when it is not the context's `pg` (the source server): a
   * restore drill's throwaway cluster (`startScratchCluster(...).source(db)`). A tap that restores
   * into a database connects there.
   */
  server?: PgSource;
  /**
   * A PostgreSQL data directory to restore a physical backup into (formats a plugin declares in
   * `dataDirFormats`). It must not belong to a running server, and must be missing or empty unless
   * `delta` is set. The tap leaves it as PostgreSQL needs it (mode 0700, owned by the server's user).
   */
  dataDir?: string;
  /** The data dir is not empty: let the restore reuse and overwrite what is there (pgBackRest `--delta`). */
  delta?: boolean;
  /**
   * Stop recovery at this point, replaying archived WAL up to it. Only formats declared with this
   * target kind in `dataDirFormats` take it; every other restore tap must refuse it, never ignore it.
   */
  recoveryTarget?: RecoveryTarget;
}

/** The kinds of recovery target: a point in time, or a WAL position. */
export type RecoveryTargetKind = 'time' | 'lsn';

/**
 * Where a point-in-time recovery stops (the last transaction committed at or before it is kept).
 * `time` is the text given, with an explicit UTC offset (`2026-12-01 14:03:00+00`), passed to the
 * server as is so no precision is lost; `lsn` is a WAL position `X/Y` (hex).
 */
export type RecoveryTarget = { time: string; lsn?: undefined } | { lsn: string; time?: undefined };

/** What a `restore` tap did. */
export interface RestoreReport {
  /** The artifact restored. */
  artifact: string;
  /** Where it went: a database name or a folder. */
  into: string;
  /** Tables restored and rows counted in them (database artifacts). */
  tables?: number;
  rows?: number;
  /** Per table: rows counted in the dump's snapshot, and restored. */
  counts?: Array<{ table: string; expected?: number; restored?: number }>;
  /** What differs from what the artifact promised (e.g. row counts); empty when all matches. */
  mismatches: string[];
  /** Files written (folder targets). */
  files?: string[];
  /** Physical restores (data dir targets): which backup, the recovery target, the WAL it needs. */
  physical?: PhysicalRestoreReport;
  durationMs: number;
}

/** What a restore into a data dir wrote. */
export interface PhysicalRestoreReport {
  /** The backup restored (its label in the tool's repository). */
  backup: string;
  /** The data dir written. */
  dataDir: string;
  /** Where recovery stops; absent: at the end of the backup (the first consistent point). */
  recoveryTarget?: RecoveryTarget;
  /** WAL the backup itself needs (first and last segment), and what the repository holds past it. */
  wal?: { start?: string; stop?: string; archivedUpTo?: string };
  /** What to run to start the restored cluster, for the report. */
  next?: string[];
}

/** Which set a restore or verify works on, and where it was fetched from. */
export interface StoredSetRef {
  id: string;
  manifest: Manifest;
  /** Config name of the destination the artifacts were fetched from (`work` for the work dir). */
  from: string;
  /** That destination itself, for stages that read more than artifact files from it (a tree's files, through `getTree`). */
  destination?: Destination;
}

/** What `restore` / `verifyStored` was asked to do. */
export interface RestoreRequest {
  /** `restore` or `verify`. */
  command: 'restore' | 'verify';
  /** A set id, or `latest`. */
  set: string;
  /** verify: also restore into a scratch database and compare row counts. */
  restoreTest?: boolean;
}

/** The context of `restore` and `verifyStored`: a run context whose set is a stored one. */
export interface RestoreContext extends RunContext {
  /** The stored set being worked on (known once located). */
  readonly stored: StoredSetRef;
  readonly request: RestoreRequest;
}

export interface RestoreSummary {
  pipeline: string;
  setId: string;
  from: string;
  ok: boolean;
  reports: RestoreReport[];
  durationMs: number;
  error?: { code: string; message: string };
}

export interface VerifySummary {
  pipeline: string;
  setId: string;
  from: string;
  ok: boolean;
  /** Per artifact: what its verify stage found, and what a restore drill (`--restore-test`) proved. */
  artifacts: Array<Pick<Artifact, 'name' | 'kind' | 'format'> & { verification?: unknown; drill?: RestoreDrill }>;
  durationMs: number;
  error?: { code: string; message: string };
}
