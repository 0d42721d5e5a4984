/**
 * The restore drill of a physical backup: `pgbackrest restore --set=LABEL --type=immediate
 * --target-action=promote --archive-mode=off` into a private data dir, started as a throwaway
 * cluster (core `startScratchCluster`: no TCP, a private socket, archive_mode off on its command
 * line too — the copy can never push WAL into the real repository), waited on until recovery
 * reached the end of the backup and the copy promoted, queried, its row counts compared with the
 * counts taken at backup time, then stopped and removed.
 */
import { chmod, chown, mkdir, mkdtemp, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { findServerBinaries, PipelineError, psql, scratchClusterParent, startScratchCluster, type PluginApi, type RunContext, type ScratchCluster } from '@backup-pipeline/core';
import type { Pgbackrest } from './command.js';
import type { PgbackrestOptions } from './options.js';
import type { PhysicalBackupRecord } from './record.js';

export interface DrillResult {
  label: string;
  /** Tables compared, with the count at backup time and in the restored copy. */
  tables: Record<string, { expected: number; restored: number }>;
  mismatches: string[];
}

/** Tables whose restored count is off by more than `tolerance` (relative to the count at backup time). */
export function compareCounts(expected: Record<string, number>, restored: Record<string, number>, tolerance: number): string[] {
  const out: string[] = [];
  for (const [table, want] of Object.entries(expected)) {
    const got = restored[table];
    if (got === undefined) out.push(`${table}: missing in the restored copy (had ${want} rows)`);
    else if (Math.abs(got - want) > Math.floor(tolerance * want)) out.push(`${table}: ${got} rows restored, ${want} at backup time (tolerance ${tolerance * 100}%)`);
  }
  return out;
}

const fail = (message: string, cause?: unknown) =>
  new PipelineError('PGBACKREST_DRILL_FAILED', message, {
    hint: 'The backup was made but a copy restored from it did not start or did not answer as expected; do not rely on it (see the message).',
    cause,
  });

export async function runDrill(ctx: RunContext, cmd: Pgbackrest, record: PhysicalBackupRecord, options: PgbackrestOptions, api: Pick<PluginApi, 'resolvePath'>): Promise<DrillResult> {
  const started = Date.now();
  const major = Number.parseInt(record.pgVersion, 10);
  const bindir = options.binDir ? api.resolvePath(options.binDir) : await findServerBinaries(major, { signal: ctx.signal });
  if (!bindir) throw fail(`no PostgreSQL ${record.pgVersion} server binaries to start the restored copy with`, undefined);

  // A folder the cluster's user can reach (the run's scratch dir, or a noted one outside it).
  const parent = await scratchClusterParent(ctx.tmpDir, ctx.log);
  const outside = parent !== ctx.tmpDir;
  // Short names: the copy's socket path (…/scratch-cluster-XXXXXX/sock/.s.PGSQL.5432) must stay under 108 bytes.
  const work = await mkdtemp(join(parent, 'drill-'));
  const dataDir = join(work, 'data');
  let cluster: ScratchCluster | undefined;
  try {
    await chmod(work, 0o700);
    await mkdir(dataDir, { mode: 0o700 });
    // pgbackrest restore runs as the repository's owner (postgres when root): hand it the folders.
    if (cmd.ids) {
      await chown(work, cmd.ids.uid, cmd.ids.gid);
      await chown(dataDir, cmd.ids.uid, cmd.ids.gid);
    }
    // The copy's restore_command (archive-get) reads the same config: only reading the repository.
    const args = [`--pg1-path=${dataDir}`, `--set=${record.label}`, '--type=immediate', '--target-action=promote', '--archive-mode=off', 'restore'];
    await cmd.run(args, { label: 'pgbackrest restore (drill)', writes: dataDir }).catch((error: unknown) => {
      throw fail(`pgbackrest restore of ${record.label} into ${dataDir} failed: ${(error as Error).message}`, error);
    });
    try {
      // hot_standby off: no connections until recovery reached the end of the backup and promoted
      // (and no "insufficient parameter settings" when the drill allows fewer connections than production).
      cluster = await startScratchCluster({ bindir, parentDir: work, dataDir, settings: { archive_mode: false, archive_command: '', hot_standby: false }, signal: ctx.signal, log: ctx.log });
    } catch (error) {
      const log = String((error as { details?: { serverLog?: unknown } }).details?.serverLog ?? '');
      const fatal = log.split('\n').filter((l) => /FATAL|PANIC|ERROR/.test(l)).join(' | ');
      throw fail(`the copy restored from ${record.label} did not start: ${fatal || (error as Error).message}`, error);
    }
    // Recovery to the end of the backup, then promote: wait (bounded) until it is a primary.
    // The restored copy has the production's roles: connect as its bootstrap superuser (recorded at
    // backup time), over the copy's private socket (trust).
    const sql = (text: string, database = 'postgres') =>
      psql({ ...cluster!.source(database), user: record.superuser ?? cluster!.user }, text, { psqlPath: join(bindir, 'psql'), signal: ctx.signal });
    // (pg_ctl start returns once the postmaster runs; with hot_standby off it accepts no connection
    // before the promotion: "the database system is not accepting connections".)
    let promoted = false;
    let gone = 0;
    let last = '';
    for (let i = 0; i < 6000 && !promoted; i++) {
      ctx.signal.throwIfAborted();
      try {
        const [[inRecovery]] = (await sql('SELECT pg_is_in_recovery();')) as [[string]];
        promoted = inRecovery === 'f';
      } catch (error) {
        last = (error as Error).message;
        if (!/not accepting connections|starting up|in recovery/.test(last) && ++gone > 50) break;
      }
      if (!promoted) await new Promise((r) => setTimeout(r, 100));
    }
    if (!promoted) throw fail(`the copy restored from ${record.label} did not reach the end of the backup and promote${last ? `: ${last}` : ''}`);
    const [[systemId]] = (await sql('SELECT system_identifier::text FROM pg_control_system();')) as [[string]];
    if (systemId !== record.systemId) throw fail(`the restored copy has system id ${systemId}, the backup record says ${record.systemId}`);

    const tables: DrillResult['tables'] = {};
    let mismatches: string[] = [];
    if (record.rowCounts && Object.keys(record.rowCounts.tables).length > 0) {
      const db = record.rowCounts.database;
      const names = Object.keys(record.rowCounts.tables);
      const rows = await sql(names.map((t) => `SELECT '${t.replace(/'/g, "''")}', count(*) FROM public."${t.replace(/"/g, '""')}"`).join(' UNION ALL ') + ';', db).catch((error: unknown) => {
        throw fail(`the restored copy does not answer a count of ${names.join(', ')} in ${db}: ${(error as Error).message}`, error);
      });
      const restored = Object.fromEntries(rows.map((r) => [r[0]!, Number(r[1])]));
      for (const t of names) tables[t] = { expected: record.rowCounts.tables[t]!, restored: restored[t] ?? -1 };
      mismatches = compareCounts(record.rowCounts.tables, restored, options.drill.tolerance);
    } else {
      await sql('SELECT count(*) FROM pg_database;');
    }
    if (mismatches.length > 0) throw fail(`the copy restored from ${record.label} differs from the server at backup time: ${mismatches.join('; ')}`);
    ctx.log.info({ label: record.label, tables, durationMs: Date.now() - started }, `drill: ${record.label} restored, reached consistency, promoted and answered (${Object.keys(tables).length} table counts match)`);
    return { label: record.label, tables, mismatches };
  } finally {
    await cluster?.stop().catch((error: unknown) => ctx.log.warn({ err: (error as Error).message }, `could not stop the drill's cluster: ${(error as Error).message}`));
    await rm(work, { recursive: true, force: true });
    if (outside) await rm(parent, { recursive: true, force: true });
  }
}
