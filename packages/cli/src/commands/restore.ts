/** `pipeline restore SET --to DB`: flags in, the core's restore (locate → fetch → check → decrypt → restore), a report out. */
import { resolve } from 'node:path';
import type { Command } from 'commander';
import { PipelineError, type RestoreReport } from '@backup-pipeline/core';
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
}

export function printRestoreReport(report: RestoreReport): void {
  if (!report.counts) return;
  const rows = [['table', 'in dump', 'restored', '']];
  for (const c of report.counts) rows.push([c.table, String(c.expected ?? '-'), String(c.restored ?? '-'), c.expected === c.restored ? 'ok' : 'MISMATCH']);
  output.stdout(table(rows));
}

export default async function restore(command: Command, id: string, flags: RestoreFlags): Promise<number> {
  const session = await openSession(command);
  const pipeline = session.runner.pipeline(flags.pipeline);
  return withSignals(async (signal) => {
    const result = await session.runner.restore(
      pipeline.name,
      { set: id, from: flags.from, database: flags.to, filesTo: flags.filesTo ? resolve(flags.filesTo) : undefined, globals: flags.globals, jobs: flags.jobs, clean: flags.clean },
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
        if (r === database) output.stdout(`${green('restored')} ${result.setId} into ${r.into} in ${formatDuration(r.durationMs)}: ${r.tables} tables, ${r.rows} rows (fetched from ${result.from})\n`);
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
