/** `pipeline restore SET --to DB`: flags in, the core's restore (locate → fetch → check → decrypt → restore), a report out. */
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { parseRecoveryTarget, PipelineError, type RestoreReport } from '@backup-pipeline/core';
import { formatDuration, green, output, table } from '../output.js';
import { openSession } from '../session.js';
import { withSignals } from '../signals.js';
import { progressReporter } from '../progress.js';
import { stageOptionsFrom, type StageOptionFlags } from '../stage-options.js';

export interface RestoreFlags extends StageOptionFlags {
  to?: string;
  from?: string;
  pipeline?: string;
  jobs?: number;
  clean?: boolean;
  globals?: boolean;
  filesTo?: string;
  dataDir?: string;
  toTime?: string;
  toLsn?: string;
  delta?: boolean;
}

export function printRestoreReport(report: RestoreReport): void {
  if (!report.counts) return;
  const rows = [['table', 'in dump', 'restored', '']];
  for (const c of report.counts) rows.push([c.table, String(c.expected ?? '-'), String(c.restored ?? '-'), c.expected === c.restored ? 'ok' : 'MISMATCH']);
  output.stdout(table(rows));
}

/** The lines that say what a restore into a data dir wrote, and how to start it. */
export function printPhysicalReport(report: RestoreReport, setId: string, from: string): void {
  const p = report.physical!;
  const target = p.recoveryTarget ? (p.recoveryTarget.time !== undefined ? `time ${p.recoveryTarget.time}` : `LSN ${p.recoveryTarget.lsn}`) : 'the end of the backup';
  output.stdout(`${green('restored')} ${setId} (backup ${p.backup}) into ${p.dataDir} in ${formatDuration(report.durationMs)}, recovery to ${target} (fetched from ${from})\n`);
  if (p.wal) output.stdout(`WAL: backup needs ${p.wal.start ?? '?'} … ${p.wal.stop ?? '?'}${p.wal.archivedUpTo ? `; the repository holds WAL up to ${p.wal.archivedUpTo}` : ''}\n`);
  for (const line of p.next ?? []) output.stdout(`${line}\n`);
}

export default async function restore(command: Command, id: string | undefined, flags: RestoreFlags): Promise<number> {
  const recoveryTarget = parseRecoveryTarget({ time: flags.toTime, lsn: flags.toLsn });
  if (id === undefined && !recoveryTarget) {
    throw new PipelineError('USAGE', 'which set? give a set id or "latest" (or a recovery target, --to-time or --to-lsn, to pick the set by it)');
  }
  const session = await openSession(command);
  const pipeline = session.runner.pipeline(flags.pipeline);
  return withSignals(async (signal) => {
    const result = await session.runner.restore(
      pipeline.name,
      {
        set: id ?? 'latest',
        from: flags.from,
        database: flags.to,
        filesTo: flags.filesTo ? resolve(flags.filesTo) : undefined,
        globals: flags.globals,
        jobs: flags.jobs,
        clean: flags.clean,
        dataDir: flags.dataDir ? resolve(flags.dataDir) : undefined,
        delta: flags.delta,
        recoveryTarget,
      },
      { signal, stageOptions: stageOptionsFrom(flags), observe: progressReporter({ quiet: session.options.quiet || session.options.json }) },
    ).catch((error: unknown) => {
      // A row-count mismatch: show the table that proves it, then fail.
      const report = (error as PipelineError).details?.report as RestoreReport | undefined;
      if (report && !session.options.json && !session.options.quiet) printRestoreReport(report);
      throw error;
    });
    const database = result.reports.find((r) => r.counts !== undefined);
    if (session.options.json) {
      output.json({ ok: true, ...result });
    } else if (!session.options.quiet) {
      for (const r of result.reports) {
        if (r.physical) printPhysicalReport(r, result.setId, result.from);
        else if (r === database) output.stdout(`${green('restored')} ${result.setId} into ${r.into} in ${formatDuration(r.durationMs)}: ${r.tables} tables, ${r.rows} rows (fetched from ${result.from})\n`);
        else output.stdout(`${green('restored')} ${r.artifact} into ${r.into}${r.files ? ` (${r.files.length} files)` : ''}\n`);
      }
      if (database) printRestoreReport(database);
      if (result.previousDatabase) {
        output.stdout(`The previous database is kept as ${result.previousDatabase}; drop it when you no longer need it: dropdb ${result.previousDatabase}\n`);
      }
    }
    return 0;
  }, session.options);
}
