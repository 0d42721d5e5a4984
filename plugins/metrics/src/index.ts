/**
 * The `metrics` stage: after every run, successful or not, writes node_exporter's textfile
 * collector file (`*.prom`) atomically: when the pipeline last ran, when it last succeeded, whether
 * the last run worked, how long each stage took, how big the artifacts were, and how many complete
 * and damaged sets each destination holds. Every sample carries a `pipeline` label; samples of other pipelines
 * already in the file are kept, so several pipelines may share one file.
 */
import { readFile } from 'node:fs/promises';
import { dirname } from 'node:path';
import { definePlugin, listSets, PipelineError, writeFileAtomic, z, type RunContext, type RunSummary } from '@backup-pipeline/core';
import { parseTextfile, renderTextfile, type MetricFamily, type Sample } from './textfile.js';

export * from './textfile.js';

export const optionsSchema = z
  .object({
    path: z
      .string()
      .min(1)
      .regex(/\.prom$/, 'node_exporter reads only files ending in .prom')
      .describe("File to write, in node_exporter's --collector.textfile.directory (e.g. /var/lib/prometheus/node-exporter/backup_pipeline.prom). Written atomically, mode 0644."),
    countSets: z
      .boolean()
      .default(true)
      .describe('After every run, count the complete (after a success) and damaged sets of each destination and the work dir (reads every manifest; turn off for slow remote destinations).'),
  })
  .strict();

export type MetricsOptions = z.output<typeof optionsSchema>;

export const FAMILIES: readonly MetricFamily[] = [
  { name: 'backup_pipeline_last_run_timestamp_seconds', type: 'gauge', help: 'Unix time the last run of the pipeline ended.' },
  { name: 'backup_pipeline_last_success_timestamp_seconds', type: 'gauge', help: 'Unix time the last successful run of the pipeline ended.' },
  { name: 'backup_pipeline_last_run_status', type: 'gauge', help: 'Outcome of the last run: 1 succeeded, 0 failed.' },
  { name: 'backup_pipeline_last_run_duration_seconds', type: 'gauge', help: 'Duration of the last run.' },
  { name: 'backup_pipeline_stage_duration_seconds', type: 'gauge', help: 'Time each plugin spent in each hook during the last run.' },
  { name: 'backup_pipeline_artifact_bytes', type: 'gauge', help: 'Size of each artifact of the last successful run, as shipped.' },
  { name: 'backup_pipeline_sets', type: 'gauge', help: 'Complete backup sets each destination holds, counted after the last successful run.' },
  { name: 'backup_pipeline_damaged_sets', type: 'gauge', help: 'Damaged backup sets each destination holds (kept for a person to inspect; alert when above 0), counted after every run.' },
  { name: 'backup_pipeline_last_verify_timestamp_seconds', type: 'gauge', help: 'Unix time `pipeline verify` last re-verified a stored set of the pipeline (the drill).' },
  { name: 'backup_pipeline_last_verify_status', type: 'gauge', help: 'Outcome of the last `pipeline verify`: 1 every check passed, 0 it failed.' },
  { name: 'backup_pipeline_last_restore_timestamp_seconds', type: 'gauge', help: 'Unix time `pipeline restore` last ended for the pipeline.' },
  { name: 'backup_pipeline_last_restore_status', type: 'gauge', help: 'Outcome of the last `pipeline restore`: 1 restored and checked, 0 it failed.' },
  { name: 'backup_pipeline_source_fact', type: 'gauge', help: 'Numeric facts the stages recorded about the source during the last run, failed or not (`fact` label: `group.name`, e.g. pgbackrest.archiveLagSeconds, pgbackrest.archiveFailing).' },
];

const FAMILY_NAMES = new Set(FAMILIES.map((f) => f.name));
/** Families that describe the last success: kept from the old file when a run fails. */
const SUCCESS_FAMILIES = new Set(['backup_pipeline_last_success_timestamp_seconds', 'backup_pipeline_artifact_bytes', 'backup_pipeline_sets']);
/** Families written by the restore half (`verified`, `restored`): a run keeps them as they are. */
const CHECK_FAMILIES = new Set(['backup_pipeline_last_verify_timestamp_seconds', 'backup_pipeline_last_verify_status', 'backup_pipeline_last_restore_timestamp_seconds', 'backup_pipeline_last_restore_status']);

export interface RenderInput {
  pipeline: string;
  summary: RunSummary;
  /** When the run ended. */
  endedAt: Date;
  /** Complete sets per destination name (success only). */
  sets?: Record<string, number>;
  /** Damaged sets per destination name (any outcome). */
  damaged?: Record<string, number>;
  /** The file as it was before, if any. */
  previous?: string;
  /** The run's facts (`ctx.facts`): every finite number, top level or one object down, becomes a `backup_pipeline_source_fact`. */
  facts?: Record<string, unknown>;
}

/** `{ pgbackrest: { archiveLagSeconds: 3 } }` → `[['pgbackrest.archiveLagSeconds', 3]]` (finite numbers and booleans as 0/1). */
export function numericFacts(facts: Record<string, unknown> = {}): Array<[string, number]> {
  const out: Array<[string, number]> = [];
  const add = (key: string, v: unknown) => {
    if (typeof v === 'number' && Number.isFinite(v)) out.push([key, v]);
    else if (typeof v === 'boolean') out.push([key, v ? 1 : 0]);
  };
  for (const [k, v] of Object.entries(facts)) {
    if (v !== null && typeof v === 'object' && !Array.isArray(v)) for (const [k2, v2] of Object.entries(v)) add(`${k}.${k2}`, v2);
    else add(k, v);
  }
  return out;
}

/** The new file content: this run's samples, plus what is kept from `previous`. */
export function renderMetrics(input: RenderInput): string {
  const { pipeline, summary } = input;
  const ok = summary.ok;
  const now = input.endedAt.getTime() / 1000;
  const old = parseTextfile(input.previous ?? '').filter((s) => FAMILY_NAMES.has(s.name));
  const samples: Sample[] = old.filter((s) => s.labels.pipeline !== pipeline || CHECK_FAMILIES.has(s.name));
  const mine = (name: string, value: number, labels: Record<string, string> = {}) => samples.push({ name, labels: { pipeline, ...labels }, value });

  mine('backup_pipeline_last_run_timestamp_seconds', now);
  mine('backup_pipeline_last_run_status', ok ? 1 : 0);
  mine('backup_pipeline_last_run_duration_seconds', summary.durationMs / 1000);
  const stages = new Map<string, { plugin: string; hook: string; ms: number }>();
  for (const s of summary.stages) {
    if (s.durationMs === undefined) continue;
    const key = `${s.plugin}\u0000${s.hook}`;
    const entry = stages.get(key) ?? { plugin: s.plugin, hook: s.hook, ms: 0 };
    entry.ms += s.durationMs;
    stages.set(key, entry);
  }
  for (const s of stages.values()) mine('backup_pipeline_stage_duration_seconds', s.ms / 1000, { plugin: s.plugin, hook: s.hook });

  for (const [destination, count] of Object.entries(input.damaged ?? {})) mine('backup_pipeline_damaged_sets', count, { destination });
  for (const [fact, value] of numericFacts(input.facts)) mine('backup_pipeline_source_fact', value, { fact });
  if (ok) {
    mine('backup_pipeline_last_success_timestamp_seconds', now);
    for (const a of summary.artifacts) mine('backup_pipeline_artifact_bytes', a.bytes, { artifact: a.name });
    for (const [destination, count] of Object.entries(input.sets ?? {})) mine('backup_pipeline_sets', count, { destination });
  } else {
    samples.push(...old.filter((s) => s.labels.pipeline === pipeline && SUCCESS_FAMILIES.has(s.name)));
  }
  return renderTextfile(FAMILIES, samples);
}

/** The file after a `pipeline verify` or `pipeline restore`: its two samples replaced, everything else kept. */
export function renderCheck(input: { pipeline: string; kind: 'verify' | 'restore'; ok: boolean; endedAt: Date; previous?: string }): string {
  const timestamp = `backup_pipeline_last_${input.kind}_timestamp_seconds`;
  const status = `backup_pipeline_last_${input.kind}_status`;
  const old = parseTextfile(input.previous ?? '').filter((s) => FAMILY_NAMES.has(s.name));
  const samples = old.filter((s) => !(s.labels.pipeline === input.pipeline && (s.name === timestamp || s.name === status)));
  samples.push({ name: timestamp, labels: { pipeline: input.pipeline }, value: input.endedAt.getTime() / 1000 }, { name: status, labels: { pipeline: input.pipeline }, value: input.ok ? 1 : 0 });
  return renderTextfile(FAMILIES, samples);
}

async function countSets(ctx: RunContext, warn: (msg: string) => void): Promise<{ complete: Record<string, number>; damaged: Record<string, number> }> {
  const out = { complete: {} as Record<string, number>, damaged: {} as Record<string, number> };
  for (const d of [...ctx.destinations, ctx.work]) {
    try {
      const sets = await listSets(d.destination, { scratchDir: ctx.tmpDir });
      out.complete[d.name] = sets.filter((s) => s.state === 'complete').length;
      out.damaged[d.name] = sets.filter((s) => s.state === 'damaged').length;
    } catch (error) {
      warn(`cannot count the sets of "${d.name}": ${(error as Error).message}`);
    }
  }
  return out;
}

export default definePlugin({
  name: 'metrics',
  description: "Writes node_exporter textfile-collector metrics (last run, last success, status, stage durations, sizes, sets) after every run.",
  options: optionsSchema,
  // The textfile is replaced atomically: its folder must be writable.
  writablePaths: (options, api) => [dirname(api.resolvePath(options.path))],
  apply(hooks, options, api) {
    const path = api.resolvePath(options.path);

    const write = async (summary: RunSummary | { check: 'verify' | 'restore'; ok: boolean }, ctx: RunContext): Promise<void> => {
      try {
        const counted = !('check' in summary) && options.countSets ? await countSets(ctx, (m) => api.log.warn(m)) : undefined;
        const previous = await readFile(path, 'utf8').catch((error: NodeJS.ErrnoException) => {
          if (error.code === 'ENOENT') return undefined;
          throw error;
        });
        const text =
          'check' in summary
            ? renderCheck({ pipeline: ctx.pipeline, kind: summary.check, ok: summary.ok, endedAt: new Date(), previous })
            : renderMetrics({ pipeline: ctx.pipeline, summary, endedAt: new Date(), sets: summary.ok ? counted?.complete : undefined, damaged: counted?.damaged, previous, facts: ctx.facts });
        // Metrics hold no secrets, and node_exporter usually runs as another user: 0644.
        await writeFileAtomic(path, text, { mode: 0o644 });
        api.log.debug({ path }, `metrics written to ${path}`);
      } catch (caught) {
        const error = new PipelineError('METRICS_WRITE_FAILED', `cannot write the metrics file ${path}: ${(caught as Error).message}`, {
          hint: "Create the textfile collector's folder and let the backup user write to it.",
          cause: caught,
        });
        // The run's outcome stands: this is a warning (the core would say so too).
        api.log.warn({ code: error.code, hint: error.hint }, error.message);
      }
    };

    hooks.plan.tapPromise('metrics', async (plan) => plan.add({ plugin: 'metrics', hook: 'succeeded', description: `write node_exporter metrics to ${path} after the run` }));
    hooks.succeeded.tapPromise('metrics', (summary, ctx) => write(summary, ctx));
    hooks.failed.tapPromise('metrics', (_error, summary, ctx) => write(summary, ctx));
    // The restore half: the drill (`pipeline verify`) and restores are worth an alert too.
    hooks.verified.tapPromise('metrics', (summary, ctx) => write({ check: 'verify', ok: summary.ok }, ctx));
    hooks.restored.tapPromise('metrics', (summary, ctx) => write({ check: 'restore', ok: summary.ok }, ctx));
  },
});
