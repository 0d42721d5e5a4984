/** `pipeline prune`: the pipeline's `retain` hook on its own, under the pipeline's lock, with the same rules as in a run. */
import type { Command } from 'commander';
import type { RetainReport } from '@backup-pipeline/core';
import { output } from '../output.js';
import { openSession } from '../session.js';

export default async function prune(command: Command, name: string | undefined, opts: { dryRun?: boolean; deleteDamaged?: string[] }): Promise<number> {
  const session = await openSession(command);
  const pipeline = session.runner.pipeline(name);
  const { retention, error } = await session.runner.prune(pipeline.name, { dryRun: opts.dryRun, deleteDamaged: opts.deleteDamaged });
  print(retention, session.options.json === true);
  // Damaged sets were kept; a person must look at them, so prune does not end as if all were well.
  if (error) throw error;
  return retention.some((r) => r.failed.length > 0) ? 1 : 0;
}

function print(results: RetainReport[], json: boolean): void {
  if (json) {
    output.json({ dryRun: results.some((r) => r.dryRun), destinations: results });
    return;
  }
  for (const r of results) {
    output.stdout(`${r.destination}: keep ${r.keep.length}, ${r.dryRun ? 'would delete' : 'deleted'} ${r.dryRun ? r.delete.length : r.deleted.length}\n`);
    for (const s of r.delete) output.stdout(`  ${r.dryRun ? 'would delete' : 'deleted'} ${s.id}: ${s.reasons.join('; ')}\n`);
    for (const s of r.keep) output.stdout(`  keep ${s.id}: ${s.reasons.join('; ')}\n`);
  }
}

