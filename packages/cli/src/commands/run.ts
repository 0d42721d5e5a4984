import type { Command } from 'commander';
import { EXIT, type RunSummary } from '@backup-pipeline/core';
import { formatBytes, formatDuration, green, output, table } from '../output.js';
import { openSession } from '../session.js';
import { withSignals } from '../signals.js';
import { progressReporter } from '../progress.js';

export function printSummary(summary: RunSummary): void {
  output.stdout(`${green('ok')} ${summary.pipeline}: set ${summary.setId} in ${formatDuration(summary.durationMs)}\n`);
  const rows = [['artifact', 'size', 'encrypted', 'sha256']];
  for (const a of summary.artifacts) rows.push([a.name, formatBytes(a.bytes), a.encrypted ? 'yes' : 'no', a.sha256.slice(0, 16)]);
  output.stdout(table(rows));
  for (const d of summary.destinations) {
    output.stdout(`  → ${d.destination}: ${d.ok ? 'complete' : `FAILED (${d.error})`}, ${formatBytes(d.bytes)} in ${formatDuration(d.durationMs)}\n`);
  }
}

export default async function run(command: Command, name: string | undefined, opts: { dryRun?: boolean }): Promise<number> {
  const session = await openSession(command);
  const { options, runner, log } = session;
  return withSignals(async (signal) => {
    const result = await runner.run(name, { dryRun: opts.dryRun, signal, observe: progressReporter({ quiet: options.quiet || options.json, log }) });
    output.clearStatus();
    if (options.json) {
      output.json(result.plan ? { ok: true, plan: result.plan.steps } : { ...result.summary });
    } else if (result.plan) {
      output.stdout(`dry run of ${result.summary.pipeline}: nothing was touched. The plan:\n`);
      for (const step of result.plan.steps) {
        output.stdout(`  [${step.plugin} → ${step.hook}] ${step.description}\n`);
        if (step.command) output.stdout(`      $ ${step.command}\n`);
      }
    } else if (!options.quiet) {
      printSummary(result.summary);
    }
    return EXIT.ok;
  }, options);
}
