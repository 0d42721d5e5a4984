import type { Command } from 'commander';
import { PipelineError } from '@backup-pipeline/core';
import { applyRetention, damagedSetsError, type RetentionOptions } from '@backup-pipeline/plugin-retention';
import { output } from '../output.js';
import { openDestinations, openSession } from '../session.js';

/** Retention alone, with the same rules and code as the `retention` stage of a run. */
export default async function prune(command: Command, name: string | undefined, opts: { dryRun?: boolean; deleteDamaged?: string[] }): Promise<number> {
  const session = await openSession(command);
  const pipeline = session.runner.pipeline(name);
  const stage = pipeline.stages.find((s) => s.plugin.name === 'retention');
  if (!stage) {
    throw new PipelineError('USAGE', `pipeline "${pipeline.name}" has no retention stage`, { hint: 'Add `- use: retention` with a keep policy to the pipeline.' });
  }
  const options = stage.options as RetentionOptions;
  const dryRun = opts.dryRun || options.dryRun;
  const targets = (await openDestinations(session, pipeline.name)).filter((d) => !options.destinations || options.destinations.includes(d.name));
  const results = [];
  let failed = 0;
  for (const target of targets) {
    const result = await applyRetention(target, options, {
      now: new Date(),
      timezone: session.config.timezone,
      source: options.allSources ? undefined : pipeline.source,
      dryRun,
      deleteDamaged: opts.deleteDamaged,
      log: session.log,
    });
    failed += result.failed.length;
    results.push(result);
  }
  if (session.options.json) {
    output.json({ dryRun: !!dryRun, destinations: results });
  } else {
    for (const r of results) {
      output.stdout(`${r.destination}: keep ${r.keep.length}, ${dryRun ? 'would delete' : 'deleted'} ${dryRun ? r.delete.length : r.deleted.length}\n`);
      for (const s of r.delete) output.stdout(`  ${dryRun ? 'would delete' : 'deleted'} ${s.id}: ${s.reasons.join('; ')}\n`);
      for (const s of r.keep) output.stdout(`  keep ${s.id}: ${s.reasons.join('; ')}\n`);
    }
  }
  // Damaged sets were kept; a person must look at them, so prune does not end as if all were well.
  const damaged = damagedSetsError(results);
  if (damaged) throw damaged;
  return failed > 0 ? 1 : 0;
}
