/**
 * The whole lifecycle of a run, declared once. The runner calls them in this order:
 *
 *   started → connect → preflight → (dry-run: plan, then stop) → produce → verify (each artifact)
 *   → transform (each artifact) → manifest written → destinations (concurrently) → shipped (each)
 *   → retain → succeeded | failed
 *
 * Every hook takes one context object last, so it can grow without breaking taps.
 */
import { AsyncSeriesHook, AsyncSeriesWaterfallHook, SyncHook } from 'tapable';
import type { PipelineError } from './errors.js';
import type { Artifact, Plan, ProgressEvent, RunContext, RunSummary, ShipReport, StageEvent } from './context.js';

export const createHooks = () =>
  Object.freeze({
    /** The run began (lock held, set id chosen). Notifications of a start go here. */
    started: new AsyncSeriesHook<[RunContext]>(['ctx']),
    /** Resolve credentials and describe the source: set `ctx.pg`. Touches no data. */
    connect: new AsyncSeriesHook<[RunContext]>(['ctx']),
    /** Check everything before data moves: server reachable, tool versions, keys, destinations. */
    preflight: new AsyncSeriesHook<[RunContext]>(['ctx']),
    /** Dry-run only: describe what each stage would do. */
    plan: new AsyncSeriesHook<[Plan, RunContext]>(['plan', 'ctx']),
    /** Make the artifacts: dumps, archives (`ctx.addArtifact`). */
    produce: new AsyncSeriesHook<[RunContext]>(['ctx']),
    /** Prove each artifact is usable; throwing stops the run before anything is shipped. */
    verify: new AsyncSeriesHook<[Artifact, RunContext]>(['artifact', 'ctx']),
    /** Replace each artifact by a transformed one (encryption): return the new artifact. */
    transform: new AsyncSeriesWaterfallHook<[Artifact, RunContext]>(['artifact', 'ctx']),
    /** A destination finished receiving the set (or failed to). */
    shipped: new AsyncSeriesHook<[ShipReport, RunContext]>(['report', 'ctx']),
    /** Apply retention. Runs only when everything before it succeeded. */
    retain: new AsyncSeriesHook<[RunContext]>(['ctx']),
    /** The run succeeded. Errors thrown here are logged as warnings, never fail the run. */
    succeeded: new AsyncSeriesHook<[RunSummary, RunContext]>(['summary', 'ctx']),
    /** The run failed. Errors thrown here are logged as warnings, never hide the failure. */
    failed: new AsyncSeriesHook<[PipelineError, RunSummary, RunContext]>(['error', 'summary', 'ctx']),
    /** A tap of a lifecycle hook started / finished (for progress and metrics). */
    stageStart: new SyncHook<[StageEvent]>(['event']),
    stageFinish: new SyncHook<[StageEvent]>(['event']),
    /** Progress of a long task: bytes written, tables done… */
    progress: new SyncHook<[ProgressEvent]>(['event']),
  });

export type PipelineHooks = ReturnType<typeof createHooks>;
export type HookName = keyof PipelineHooks;

/** Hooks that report on other hooks; they are not stages themselves. */
export const EVENT_HOOKS: readonly HookName[] = ['stageStart', 'stageFinish', 'progress'];
/** Hooks whose failure is only a warning. */
export const ADVISORY_HOOKS: readonly HookName[] = ['started', 'shipped', 'succeeded', 'failed'];

/** What a plugin may do with a hook: tap it. Only the core calls hooks. */
type TapMethods<H> = Pick<H, Extract<keyof H, 'tap' | 'tapAsync' | 'tapPromise'>>;
export type TapOnlyHooks = { readonly [K in HookName]: TapMethods<PipelineHooks[K]> };
