import type { Command } from 'commander';
import { EXIT, type RunSummary } from '@backup-pipeline/core';
import { formatBytes, formatDuration, green, table } from '../output.js';
import { openSession } from '../session.js';
import { withSignals } from '../signals.js';
import { progressReporter } from '../progress.js';

export function printSummary(summary: RunSummary): void {
  process.stdout.write(`${green('ok')} ${summary.pipeline}: set ${summary.setId} in ${formatDuration(summary.durationMs)}\n`);
  const rows = [['artifact', 'size', 'encrypted', 'sha256']];
  for (const a of summary.artifacts) rows.push([a.name, formatBytes(a.bytes), a.encrypted ? 'yes' : 'no', a.sha256.slice(0, 16)]);
  process.stdout.write(table(rows));
  for (const d of summary.destinations) {
    process.stdout.write(`  → ${d.destination}: ${d.ok ? 'complete' : `FAILED (${d.error})`}, ${formatBytes(d.bytes)} in ${formatDuration(d.durationMs)}\n`);
  }
}

export default async function run(command: Command, name: string | undefined, opts: { dryRun?: boolean }): Promise<number> {
  const session = await openSession(command);
  const { options, runner } = session;
  return withSignals(async (signal) => {
    const result = await runner.run(name, { dryRun: opts.dryRun, signal, observe: progressReporter({ quiet: options.quiet || options.json }) });
    if (options.json) {
      process.stdout.write(JSON.stringify(result.plan ? { ok: true, plan: result.plan.steps } : { ...result.summary }, null, 2) + '\n');
    } else if (result.plan) {
      process.stdout.write(`dry run of ${result.summary.pipeline}: nothing was touched. The plan:\n`);
      for (const step of result.plan.steps) {
        process.stdout.write(`  [${step.plugin} → ${step.hook}] ${step.description}\n`);
        if (step.command) process.stdout.write(`      $ ${step.command}\n`);
      }
    } else if (!options.quiet) {
      printSummary(result.summary);
    }
    return EXIT.ok;
  }, options);
}
