/**
 * The `retention` stage: after a run has shipped, deletes the sets its policy no longer keeps
 * from each destination and from the work dir, logging each deletion with its reason.
 * `planRetention` / `applyRetention` are exported for `pipeline prune [--dry-run]`.
 */
import { definePlugin, listSets, parseSetId, PipelineError, z, type Destination, type Logger, type NamedDestination, type SetInfo, type SetState } from '@backup-pipeline/core';
import { decideRetention, policyKeepsAnything, type RetentionDecision, type RetentionPolicy } from './retention-policy.js';

export * from './retention-policy.js';

export interface PlanRetentionOptions {
  /** The clock: sets after it are "in the future" and kept; incomplete sets age against it. */
  now: Date;
  /** IANA time zone of the calendar buckets (default UTC). */
  timezone?: string;
  /** Set ids never deleted (the current run's set). */
  protect?: readonly string[];
  /** Only consider sets of this source (others are left alone). Default: every source, each judged on its own. */
  source?: string;
  /** Where manifests are downloaded to be checked (default: the OS temp dir). */
  scratchDir?: string;
}

export interface PlannedSet extends RetentionDecision {
  source: string;
  state: SetState;
  complete: boolean;
  verified: boolean;
  /** Why an incomplete set is incomplete. */
  problem?: string;
}

export interface RetentionPlan {
  /** The destination's config name (`work` for the work dir), or its description. */
  destination: string;
  /** One entry per set considered, oldest first. */
  sets: PlannedSet[];
  keep: PlannedSet[];
  delete: PlannedSet[];
  /** Damaged sets: kept, and reported so a person looks (see `damagedSetsError`). */
  damaged: PlannedSet[];
}

export interface ApplyRetentionOptions extends PlanRetentionOptions {
  /** Only plan and log; delete nothing. */
  dryRun?: boolean;
  /** Damaged sets a person looked at and chose to delete (`pipeline prune --delete-damaged ID`). */
  deleteDamaged?: readonly string[];
  log?: Pick<Logger, 'info' | 'warn'>;
  signal?: AbortSignal;
}

export interface RetentionResult extends RetentionPlan {
  deleted: string[];
  failed: Array<{ id: string; error: string }>;
}

type Target = NamedDestination | Destination;
const named = (target: Target): NamedDestination =>
  'destination' in target ? target : { name: target.describe(), plugin: 'unknown', destination: target };

/** What the policy keeps and deletes in one destination, and why. Changes nothing. */
export async function planRetention(target: Target, policy: RetentionPolicy, options: PlanRetentionOptions): Promise<RetentionPlan> {
  const { name, destination } = named(target);
  let all: SetInfo[];
  try {
    all = await listSets(destination, { scratchDir: options.scratchDir });
  } catch (error) {
    throw new PipelineError('RETENTION_FAILED', `cannot list the sets of "${name}": ${(error as Error).message}`, {
      hint: 'Check the destination is reachable; nothing was deleted from it.',
      cause: error,
    });
  }
  const bySource = new Map<string, SetInfo[]>();
  for (const s of all) {
    if (options.source !== undefined && s.source !== options.source) continue;
    bySource.set(s.source, [...(bySource.get(s.source) ?? []), s]);
  }
  const sets: PlannedSet[] = [];
  for (const [source, group] of bySource) {
    const infos = new Map(group.map((s) => [s.id, s]));
    const decisions = decideRetention(
      group.map((s) => ({ id: s.id, time: s.time, complete: s.state === 'complete', damaged: s.state === 'damaged', verified: s.manifest?.verified === true, modifiedAt: s.modifiedAt })),
      policy,
      { now: options.now, timezone: options.timezone, protect: options.protect },
    );
    for (const d of decisions) {
      const info = infos.get(d.id)!;
      sets.push({ ...d, source, state: info.state, complete: info.state === 'complete', verified: info.manifest?.verified === true, ...(info.problem ? { problem: info.problem } : {}) });
    }
  }
  sets.sort((a, b) => a.time.getTime() - b.time.getTime() || a.id.localeCompare(b.id));
  return {
    destination: name,
    sets,
    keep: sets.filter((s) => s.action === 'keep'),
    delete: sets.filter((s) => s.action === 'delete'),
    damaged: sets.filter((s) => s.state === 'damaged'),
  };
}

/** SETS_DAMAGED naming every damaged set of `results`, or undefined when there is none. */
export function damagedSetsError(results: readonly RetentionPlan[]): PipelineError | undefined {
  const damaged = results.flatMap((r) => r.damaged.map((s) => `${r.destination}/${s.id} (${s.problem ?? 'damaged'})`));
  if (damaged.length === 0) return undefined;
  return new PipelineError('SETS_DAMAGED', `${damaged.length} damaged set(s) kept for a person to inspect: ${damaged.join('; ')}`, {
    details: { damaged },
  });
}

/** Plans, then deletes what the plan says (unless `dryRun`). A failed deletion is reported, not thrown. */
export async function applyRetention(target: Target, policy: RetentionPolicy, options: ApplyRetentionOptions): Promise<RetentionResult> {
  const { destination } = named(target);
  const planned = await planRetention(target, policy, options);
  const chosen = new Set(options.deleteDamaged ?? []);
  const byPerson = planned.damaged.filter((s) => chosen.has(s.id)).map((s) => ({ ...s, action: 'delete' as const, reasons: ['damaged, deleted on request'] }));
  const plan = byPerson.length === 0 ? planned : {
    ...planned,
    keep: planned.keep.filter((s) => !chosen.has(s.id)),
    delete: [...planned.delete, ...byPerson],
    damaged: planned.damaged.filter((s) => !chosen.has(s.id)),
  };
  const deleted: string[] = [];
  const failed: RetentionResult['failed'] = [];
  for (const set of plan.delete) {
    options.signal?.throwIfAborted();
    const reason = set.reasons.join('; ');
    if (options.dryRun) {
      options.log?.info({ destination: plan.destination, setId: set.id, reason, dryRun: true }, `would delete ${set.id} from ${plan.destination}: ${reason}`);
      continue;
    }
    try {
      await destination.delete(set.id, { signal: options.signal });
      deleted.push(set.id);
      options.log?.info({ destination: plan.destination, setId: set.id, reason }, `deleted ${set.id} from ${plan.destination}: ${reason}`);
    } catch (error) {
      failed.push({ id: set.id, error: (error as Error).message });
      options.log?.warn({ destination: plan.destination, setId: set.id }, `could not delete ${set.id} from ${plan.destination}: ${(error as Error).message}`);
    }
  }
  return { ...plan, deleted, failed };
}

const count = (what: string) => z.number().int().min(0).optional().describe(what);

export const RetentionOptions = z
  .object({
    keepLast: count('Keep the N newest complete sets.'),
    keepDaily: count('Keep the newest set of each of the N most recent days that hold a set (days in the config `timezone`).'),
    keepWeekly: count('Keep the newest set of each of the N most recent ISO weeks (Monday–Sunday) that hold a set.'),
    keepMonthly: count('Keep the newest set of each of the N most recent calendar months that hold a set.'),
    keepYearly: count('Keep the newest set of each of the N most recent calendar years that hold a set.'),
    incompleteGraceHours: z
      .number()
      .min(0)
      .default(24)
      .describe('Partial sets (no manifest: interrupted runs) older than this many hours are deleted; younger ones may still be being written. Damaged sets (a manifest that cannot be read, a missing or wrong-sized file) are never deleted automatically.'),
    destinations: z
      .array(z.string().min(1))
      .min(1)
      .optional()
      .describe('Names of the destinations to prune (`work` is the work dir). Default: every destination of the pipeline and the work dir.'),
    allSources: z
      .boolean()
      .default(false)
      .describe("Also prune sets of other sources found in the same destinations (each source judged on its own). Default: only this pipeline's source."),
    dryRun: z.boolean().default(false).describe('Log what would be deleted and why, delete nothing.'),
  })
  .strict()
  .refine(policyKeepsAnything, { message: 'set at least one of keepLast, keepDaily, keepWeekly, keepMonthly, keepYearly to a number above 0' });

export type RetentionOptions = z.output<typeof RetentionOptions>;

export default definePlugin({
  name: 'retention',
  description: 'Deletes old backup sets by a keep-last/daily/weekly/monthly/yearly policy, in every destination and the work dir.',
  options: RetentionOptions,
  apply(hooks, options, { log }) {
    const targets = (ctx: { destinations: readonly NamedDestination[]; work: NamedDestination }) => {
      const all = [...ctx.destinations, ctx.work];
      return options.destinations ? all.filter((d) => options.destinations!.includes(d.name)) : all;
    };

    hooks.preflight.tapPromise('retention', async (ctx) => {
      const known = [...ctx.destinations.map((d) => d.name), 'work'];
      const unknown = (options.destinations ?? []).filter((d) => !known.includes(d));
      if (unknown.length > 0) {
        throw new PipelineError('RETENTION_UNKNOWN_DESTINATION', `retention names destination(s) ${unknown.map((d) => `"${d}"`).join(', ')} that this pipeline does not ship to`, {
          hint: `Use names from the pipeline's destinations (${known.join(', ')}).`,
        });
      }
    });

    hooks.plan.tapPromise('retention', async (plan, ctx) => {
      const rules = (['keepLast', 'keepDaily', 'keepWeekly', 'keepMonthly', 'keepYearly'] as const).filter((k) => options[k]).map((k) => `${k} ${options[k]}`);
      plan.add({ description: `after shipping, prune ${targets(ctx).map((d) => d.name).join(', ')} (${rules.join(', ')}; time zone ${ctx.timezone})${options.dryRun ? ' — dry run' : ''}` });
    });

    hooks.retain.tapPromise('retention', async (ctx) => {
      const failures: string[] = [];
      const results: RetentionResult[] = [];
      for (const target of targets(ctx)) {
        try {
          const result = await applyRetention(target, options, {
            // The runner's clock: the run's own start, or its set id's time when that was moved
            // forward (runs within one second take the next free second). Later sets are "future".
            now: new Date(Math.max(ctx.startedAt.getTime(), parseSetId(ctx.setId)?.time.getTime() ?? 0)),
            timezone: ctx.timezone,
            protect: [ctx.setId],
            source: options.allSources ? undefined : ctx.source,
            scratchDir: ctx.tmpDir,
            // `pipeline prune --dry-run` runs this hook with a dry-run context.
            dryRun: options.dryRun || ctx.dryRun,
            deleteDamaged: ctx.prune?.deleteDamaged,
            log,
            signal: ctx.signal,
          });
          ctx.retention.push({
            destination: target.name,
            dryRun: options.dryRun || ctx.dryRun,
            keep: result.keep.map((s) => ({ id: s.id, reasons: s.reasons })),
            delete: result.delete.map((s) => ({ id: s.id, reasons: s.reasons })),
            deleted: result.deleted,
            failed: result.failed,
          });
          log.info(
            { destination: target.name, kept: result.keep.length, deleted: result.deleted.length, failed: result.failed.length },
            `retention in ${target.name}: ${result.keep.length} kept, ${options.dryRun || ctx.dryRun ? `${result.delete.length} would be deleted` : `${result.deleted.length} deleted`}`,
          );
          results.push(result);
          for (const set of result.damaged) {
            log.error({ destination: target.name, setId: set.id, problem: set.problem }, `${set.id} in ${target.name} is damaged (${set.problem}): kept, look at it`);
          }
          failures.push(...result.failed.map((f) => `${target.name}/${f.id}: ${f.error}`));
        } catch (error) {
          if (ctx.signal.aborted) throw error;
          failures.push(`${target.name}: ${(error as Error).message}`);
        }
      }
      if (failures.length > 0) {
        throw new PipelineError('RETENTION_FAILED', `retention could not finish: ${failures.join('; ')}`, {
          hint: 'The backup itself succeeded. Old sets may remain; check the destination, or run `pipeline prune` later.',
        });
      }
      const damaged = damagedSetsError(results);
      if (damaged) {
        damaged.hint = `The backup ${ctx.setId} itself succeeded and was shipped. ${damaged.hint}`;
        throw damaged;
      }
    });
  },
});
