/**
 * The set's artifact of a physical backup: `pgbackrest-backup.json`, a small record of one backup in
 * the pgBackRest repository (the data itself stays in the repository). The same fields are the
 * artifact's `meta`, so `list --json`, restore and retention read them without fetching the file.
 */
import { PipelineError, type ManifestArtifact } from '@backup-pipeline/core';
import type { RepositoryDescription } from './command.js';
import type { InfoBackup, InfoStanza } from './info.js';

export const RECORD_NAME = 'pgbackrest-backup.json';
export const RECORD_FORMAT_ID = 'backup-pipeline/pgbackrest-backup@1';
/** The artifact's `format` (the key of the restore hook) and `kind`. */
export const PGBACKREST_FORMAT = 'pgbackrest';
export const PHYSICAL_KIND = 'physical';

export interface PhysicalBackupRecord {
  format: typeof RECORD_FORMAT_ID;
  stanza: string;
  /** pgBackRest's backup label (`20261202-011928F`, `…F_20261202-013000D`). */
  label: string;
  type: 'full' | 'diff' | 'incr';
  /** The backup this one builds on (null for a full). */
  prior: string | null;
  /** Every backup this one needs besides itself (its full, and for an incr the ones between). */
  reference: string[];
  /** WAL positions of the backup's start and stop (the restored copy is consistent from `lsn.stop`). */
  lsn: { start: string; stop: string };
  /** First and last WAL segment the backup needs. */
  wal: { start: string; stop: string };
  /** ISO times the backup started and stopped. */
  startedAt: string;
  stoppedAt: string;
  bytes: { database: number; databaseDelta: number; repository: number; repositoryDelta: number };
  /** PostgreSQL's system identifier (a 64-bit integer, kept exact as a decimal string). */
  systemId: string;
  pgVersion: string;
  /** Where the repository is (no credentials). */
  repository: RepositoryDescription;
  cipher: string;
  pgbackrestVersion: string;
  /** The cluster's bootstrap superuser (role oid 10): a restored copy is entered as it. */
  superuser?: string;
  /** Row counts of the live server taken right after the backup ended (compared by the drill). */
  rowCounts?: { database: string; tables: Record<string, number>; takenAt: string };
}

export function buildRecord(stanza: InfoStanza, backup: InfoBackup, extra: { repository: RepositoryDescription; pgbackrestVersion: string; superuser?: string; rowCounts?: PhysicalBackupRecord['rowCounts'] }): PhysicalBackupRecord {
  const db = stanza.db.find((d) => d.id === backup.database.id) ?? stanza.db[stanza.db.length - 1];
  if (!backup.lsn || !backup.archive.start || !backup.archive.stop || !db) {
    throw new PipelineError('PGBACKREST_INFO_UNREADABLE', `pgbackrest info does not give the LSNs, WAL range or database of backup ${backup.label}`, {
      hint: 'pgBackRest 2.45 or newer prints them; check `pgbackrest info --output=json` by hand.',
    });
  }
  return {
    format: RECORD_FORMAT_ID,
    stanza: stanza.name,
    label: backup.label,
    type: backup.type,
    prior: backup.prior,
    reference: backup.reference ?? [],
    lsn: { start: backup.lsn.start, stop: backup.lsn.stop },
    wal: { start: backup.archive.start, stop: backup.archive.stop },
    startedAt: new Date(backup.timestamp.start * 1000).toISOString(),
    stoppedAt: new Date(backup.timestamp.stop * 1000).toISOString(),
    bytes: { database: backup.info.size, databaseDelta: backup.info.delta, repository: backup.info.repository.size, repositoryDelta: backup.info.repository.delta },
    systemId: String(db['system-id']),
    pgVersion: db.version,
    repository: extra.repository,
    cipher: stanza.cipher ?? 'none',
    pgbackrestVersion: extra.pgbackrestVersion,
    ...(extra.superuser ? { superuser: extra.superuser } : {}),
    ...(extra.rowCounts ? { rowCounts: extra.rowCounts } : {}),
  };
}

/** The record of a manifest entry (its meta), or undefined when it is not one of ours. */
export function recordOf(artifact: Pick<ManifestArtifact, 'format' | 'meta'>): PhysicalBackupRecord | undefined {
  if (artifact.format !== PGBACKREST_FORMAT) return undefined;
  const m = artifact.meta as Partial<PhysicalBackupRecord>;
  if (m.format !== RECORD_FORMAT_ID || typeof m.label !== 'string' || typeof m.stanza !== 'string') return undefined;
  return m as PhysicalBackupRecord;
}

/** Reads the record file (a fetched artifact); PGBACKREST_RECORD_INVALID when it is not one. */
export function parseRecord(text: string): PhysicalBackupRecord {
  let value: Partial<PhysicalBackupRecord>;
  try {
    value = JSON.parse(text) as Partial<PhysicalBackupRecord>;
  } catch (error) {
    throw new PipelineError('PGBACKREST_RECORD_INVALID', `${RECORD_NAME} is not JSON: ${(error as Error).message}`, { hint: 'The set is damaged; use another set.' });
  }
  if (value.format !== RECORD_FORMAT_ID || typeof value.label !== 'string' || typeof value.stanza !== 'string' || typeof value.systemId !== 'string') {
    throw new PipelineError('PGBACKREST_RECORD_INVALID', `${RECORD_NAME} is not a ${RECORD_FORMAT_ID} record`, { hint: 'The set is damaged or was written by another tool; use another set.' });
  }
  return value as PhysicalBackupRecord;
}
