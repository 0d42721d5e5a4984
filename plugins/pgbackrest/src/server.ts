/**
 * What the stage asks the PostgreSQL server itself: its archiving settings and the archiver's
 * statistics (pg_stat_archiver), and row counts for the drill. Read-only SQL through the core's
 * psql runner.
 */
import { psql, quoteIdent, quoteLiteral, type PgSource, type SecretRegistry } from '@backup-pipeline/core';

export interface ArchiverState {
  archiveMode: string;
  archiveCommand: string;
  walLevel: string;
  serverVersionNum: number;
  inRecovery: boolean;
  archivedCount: number;
  lastArchivedWal?: string;
  /** Unix seconds. */
  lastArchivedTime?: number;
  failedCount: number;
  lastFailedWal?: string;
  lastFailedTime?: number;
  /** The server's clock, Unix seconds. */
  now: number;
  /** The WAL segment being written now. */
  currentWal?: string;
}

const num = (s: string | undefined) => (s === undefined || s === '' ? undefined : Number(s));

export async function archiverState(source: PgSource, opts: { psqlPath?: string; signal?: AbortSignal; secrets?: SecretRegistry }): Promise<ArchiverState> {
  const sql = `SELECT current_setting('archive_mode'), current_setting('archive_command'), current_setting('wal_level'), current_setting('server_version_num'),
    pg_is_in_recovery()::text, a.archived_count, coalesce(a.last_archived_wal, ''), coalesce(extract(epoch from a.last_archived_time)::text, ''),
    a.failed_count, coalesce(a.last_failed_wal, ''), coalesce(extract(epoch from a.last_failed_time)::text, ''), extract(epoch from now())::text,
    CASE WHEN pg_is_in_recovery() THEN '' ELSE pg_walfile_name(pg_current_wal_lsn()) END
    FROM pg_stat_archiver a`;
  const [row] = await psql({ ...source, database: source.database }, sql.replace(/\s+/g, ' '), opts);
  const r = row ?? [];
  return {
    archiveMode: r[0] ?? '',
    archiveCommand: r[1] ?? '',
    walLevel: r[2] ?? '',
    serverVersionNum: Number(r[3]),
    inRecovery: r[4] === 'true',
    archivedCount: Number(r[5]),
    lastArchivedWal: r[6] || undefined,
    lastArchivedTime: num(r[7]),
    failedCount: Number(r[8]),
    lastFailedWal: r[9] || undefined,
    lastFailedTime: num(r[10]),
    now: Number(r[11]),
    currentWal: r[12] || undefined,
  };
}

/** The archiver is failing: its last attempt failed (after the last success, or with no success yet). */
export function archiveFailing(s: ArchiverState): boolean {
  return s.failedCount > 0 && s.lastFailedTime !== undefined && (s.lastArchivedTime === undefined || s.lastFailedTime >= s.lastArchivedTime);
}

/** Mastodon's core tables, compared by the drill when they exist. */
export const MASTODON_CORE_TABLES = ['accounts', 'users', 'statuses', 'follows', 'favourites', 'media_attachments', 'notifications'];

/** Exact row counts of the tables of `wanted` that exist in `public` (a missing database: undefined). */
export async function rowCounts(source: PgSource, wanted: readonly string[], opts: { psqlPath?: string; signal?: AbortSignal; secrets?: SecretRegistry }): Promise<Record<string, number>> {
  const present = await psql(
    source,
    `SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname = ANY (ARRAY[${wanted.map(quoteLiteral).join(', ') || "''"}]::text[]) ORDER BY 1`,
    opts,
  );
  const tables = present.map((r) => r[0]!);
  if (tables.length === 0) return {};
  const rows = await psql(source, tables.map((t) => `SELECT ${quoteLiteral(t)}, count(*) FROM public.${quoteIdent(t)}`).join(' UNION ALL '), opts);
  return Object.fromEntries(rows.map((r) => [r[0]!, Number(r[1])]));
}
