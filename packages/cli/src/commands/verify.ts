/** `pipeline verify SET`: the core fetches one stored copy, checks every sha256, decrypts, and runs the pipeline's verify stages on it. */
import { drillOf, formatBytes, formatDuration, PipelineError, type RestoreDrill } from '@backup-pipeline/core';
import type { Command } from 'commander';
import { green, output, table } from '../output.js';
import { openSession } from '../session.js';
import { withSignals } from '../signals.js';
import { progressReporter } from '../progress.js';
import { stageOptionsFrom, type StageOptionFlags } from '../stage-options.js';

interface Verification {
  tableData?: number;
  restoreTest?: { tables: number; rows: number; into?: string; serverVersion?: string; durationMs?: number };
}

/** ` (throwaway PostgreSQL 15.8 cluster, 4.2 s)` */
function drillWhere(t: NonNullable<Verification['restoreTest']>): string {
  const where = t.into === 'scratch-cluster' ? `throwaway PostgreSQL ${t.serverVersion ?? ''} cluster`.replace('  ', ' ') : t.into === 'server' ? 'scratch database on the server' : '';
  const took = typeof t.durationMs === 'number' ? `${(t.durationMs / 1000).toFixed(1)} s` : '';
  const parts = [where, took].filter(Boolean);
  return parts.length > 0 ? ` (${parts.join(', ')})` : '';
}

/** The parts of a Mastodon instance by artifact kind, for the drill report. */
const PART_OF_KIND: Record<string, string> = { database: 'database', globals: 'roles', secrets: 'secrets', files: 'media', 'media-bucket': 'media', redis: 'redis' };
/** What a rebuilt instance needs, in the order Mastodon's migration guide restores them. */
const INSTANCE_PARTS = ['database', 'secrets', 'media', 'redis'];

export interface DrillReport {
  /** One line per artifact: drilled (restored somewhere throwaway and checked) or not. */
  parts: Array<{ part: string; artifact: string; restored: boolean; bytes?: number; durationMs?: number; detail: string }>;
  /** Parts of a Mastodon instance this set holds no artifact for. */
  missing: string[];
  /** The sum of the drills' times: what restoring these parts took here. */
  totalMs: number;
  /** Every artifact was drilled and no instance part is missing. */
  complete: boolean;
}

export function drillReport(artifacts: ReadonlyArray<{ name: string; kind: string; format: string; drill?: RestoreDrill }>): DrillReport {
  const parts = artifacts.map((a) =>
    a.drill
      ? { part: a.drill.part, artifact: a.name, restored: true, bytes: a.drill.bytes, durationMs: a.drill.durationMs, detail: a.drill.detail }
      : { part: PART_OF_KIND[a.kind] ?? a.kind, artifact: a.name, restored: false, detail: `checksum ${a.kind === 'database' ? 'and archive checks' : 'checked'}; no stage of this pipeline drills format "${a.format}"` },
  );
  const present = new Set(parts.map((p) => p.part));
  const missing = INSTANCE_PARTS.filter((p) => !present.has(p));
  const totalMs = parts.reduce((n, p) => n + (p.durationMs ?? 0), 0);
  return { parts, missing, totalMs, complete: missing.length === 0 && parts.every((p) => p.restored) };
}

export default async function verify(command: Command, id: string, flags: StageOptionFlags & { from?: string; pipeline?: string; restoreTest?: boolean; restoreInto?: string }): Promise<number> {
  if (flags.restoreInto && !flags.restoreTest) throw new PipelineError('USAGE', '--restore-into says where --restore-test restores: give both');
  const session = await openSession(command);
  const pipeline = session.runner.pipeline(flags.pipeline);
  return withSignals(async (signal) => {
    const result = await session.runner.verifyStored(
      pipeline.name,
      { set: id, from: flags.from, restoreTest: flags.restoreTest },
      { signal, stageOptions: stageOptionsFrom(flags), observe: progressReporter({ quiet: session.options.quiet || session.options.json }) },
    );
    const where = `${result.setId} in ${result.from}`;
    const artifacts = result.artifacts.map((a) => ({ artifact: a.name, verification: a.meta.verification as Verification | undefined, drill: drillOf(a) }));
    const drill = flags.restoreTest ? drillReport(result.artifacts.map((a) => ({ name: a.name, kind: a.kind, format: a.format, drill: drillOf(a) }))) : undefined;
    if (session.options.json) {
      output.json({ ok: true, set: where, artifacts, ...(drill ? { drill } : {}) });
    } else if (!session.options.quiet) {
      output.stdout(`${green('ok')} ${where}: every sha256 matches the manifest${result.verifiers === 0 ? ' (the pipeline has no verify stage: checksums and decryption only)' : ''}\n`);
      for (const { artifact, verification: v } of artifacts) {
        // Another stage's verification (a media tree's sample…) has no table counts: say it was verified.
        const detail = v && typeof v.tableData !== 'number' ? 'verified' : v
          ? `archive readable, ${v.tableData} tables with data${v.restoreTest ? `, restore drill: ${v.restoreTest.tables} tables / ${v.restoreTest.rows} rows match the snapshot${drillWhere(v.restoreTest)}` : ''}`
          : 'checksum ok';
        output.stdout(`  ${artifact}: ${detail}\n`);
      }
      if (drill) {
        output.stdout(`\nRestore drill of ${result.setId}, part by part (could this instance be rebuilt from this set?):\n`);
        const rows = drill.parts.map((p) => [
          `  ${p.part}`,
          p.restored ? 'restores' : 'NOT DRILLED',
          p.bytes === undefined ? '' : formatBytes(p.bytes),
          p.durationMs === undefined ? '' : `in ${formatDuration(p.durationMs)}`,
          `${p.artifact}: ${p.detail}`,
        ]);
        output.stdout(table(rows));
        for (const part of drill.missing) output.stdout(`  ${part}: NOT IN THIS SET\n`);
        output.stdout(`  time to restore the drilled parts here: ${formatDuration(drill.totalMs)}${drill.complete ? '' : ' (incomplete: see the parts above)'}\n`);
      }
    }
    return 0;
  }, session.options);
}
