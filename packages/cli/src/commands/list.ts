import type { Command } from 'commander';
import { listSets, missingPlugins, type RestoreCapabilities, type SetInfo } from '@backup-pipeline/core';
import { formatBytes, output, table } from '../output.js';
import { openDestinations, openSession } from '../session.js';

export function setRow(set: SetInfo, can?: RestoreCapabilities) {
  const artifacts = set.manifest?.artifacts ?? [];
  // A fact about this host's config, not about the set: it stays complete.
  const needs = can && set.complete ? missingPlugins(artifacts, can) : [];
  return {
    id: set.id,
    time: set.time.toISOString(),
    state: set.state,
    complete: set.complete,
    bytes: artifacts.reduce((n, a) => n + a.bytes, 0),
    artifacts: artifacts.length,
    encrypted: artifacts.length > 0 && artifacts.every((a) => a.encryption),
    verified: set.manifest?.verified ?? false,
    problem: set.problem,
    ...(needs.length > 0 ? { needs } : {}),
  };
}

const stateText = (s: ReturnType<typeof setRow>) => (s.state === 'complete' ? `complete${s.needs ? ` (needs a plugin for ${s.needs.join(', ')} to restore)` : ''}` : s.state === 'damaged' ? `DAMAGED: ${s.problem} (kept; look at it)` : `partial: ${s.problem}`);

export default async function list(command: Command, pipeline: string | undefined, opts: { destination?: string }): Promise<number> {
  const session = await openSession(command);
  const destinations = await openDestinations(session, pipeline, opts.destination);
  const can = session.runner.restoreCapabilities(pipeline);
  const result = [];
  for (const d of destinations) {
    result.push({ destination: d.name, where: d.destination.describe(), sets: (await listSets(d.destination)).map((s) => setRow(s, can)) });
  }
  if (session.options.json) {
    output.json(result);
    return 0;
  }
  for (const d of result) {
    output.stdout(`${d.destination} — ${d.where}\n`);
    if (d.sets.length === 0) {
      output.stdout('  (no sets)\n');
      continue;
    }
    const rows = [['  set', 'size', 'files', 'encrypted', 'verified', 'state']];
    for (const s of d.sets) {
      rows.push([`  ${s.id}`, s.complete ? formatBytes(s.bytes) : '-', String(s.artifacts), s.encrypted ? 'yes' : 'no', s.verified ? 'yes' : 'no', stateText(s)]);
    }
    output.stdout(table(rows));
  }
  return 0;
}
