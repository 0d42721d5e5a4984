/**
 * The whole lifecycle, both halves, declared once. The runner calls them in this order:
 *
 *   backup (`run`):   started → connect → preflight → (dry-run: plan, then stop) → produce
 *                     (a streamed artifact: verifyStream → transformFilter, one pass) → verify (each
 *                     artifact, except what the stream verified) → transform (each, except what the
 *                     stream transformed) → manifest written
 *                     → destinations (concurrently) → shipped (each) → retain → succeeded | failed
 *   restore:          connect → locate (core) → fetch (core, a stream where the destination can) →
 *                     decryptFilter[method] spliced into the stream (else fetched → decrypt[method] on files)
 *                     → restoreStream[format] from the stream (else restore[format] from a file;
 *                     may ask decompress[compression]) → restored
 *   verifyStored:     connect → locate → fetch → decryptFilter | fetched → decrypt[method] → verify (each) → verified
 *   prune:            (lock) → connect → retain
 *
 * Keyed hooks (`HookMap` of `AsyncSeriesBailHook`) are "first plugin that answers wins": the core
 * asks `hooks.decrypt.get(method)`; no tap, or every tap returning undefined, means "needs a plugin
 * that is not loaded" — a fact to report, never a reason to call a set corrupt.
 *
 * Every hook takes one context object last, so it can grow without breaking taps.
 */
import { AsyncSeriesBailHook, AsyncSeriesHook, AsyncSeriesWaterfallHook, HookMap, SyncHook } from 'tapable';
import type { PipelineError } from './errors.js';
import type { TransformFilterRequest, VerifyStreamRequest } from './artifact-stream.js';
import type { Artifact, Plan, ProgressEvent, RunContext, RunSummary, ShipReport, StageEvent } from './context.js';
import type { RestoreContext, RestoreReport, RestoreSummary, RestoreTarget, VerifySummary } from './restore-context.js';
import type { RestoreInput, StreamFilter } from './restore-stream.js';

const keyed = <H>(factory: (key: string) => H) => new HookMap<H>(factory);

export const createHooks = () =>
  Object.freeze({
    // ── backup ────────────────────────────────────────────────────────────────────────────────
    /** The run began (lock held, set id chosen). Notifications of a start go here. */
    started: new AsyncSeriesHook<[RunContext]>(['ctx']),
    /** Resolve credentials and describe the source: set `ctx.pg`. Touches no data. Runs for every command. */
    connect: new AsyncSeriesHook<[RunContext]>(['ctx']),
    /** Check everything before data moves: server reachable, tool versions, keys, destinations. */
    preflight: new AsyncSeriesHook<[RunContext]>(['ctx']),
    /** Dry-run only: describe what each stage would do. */
    plan: new AsyncSeriesHook<[Plan, RunContext]>(['plan', 'ctx']),
    /** Make the artifacts: dumps, archives (`ctx.addArtifact`). */
    produce: new AsyncSeriesHook<[RunContext]>(['ctx']),
    /**
     * Prove each artifact is usable; throwing stops the run before anything is shipped. Also run by
     * `verifyStored` on artifacts fetched back (decrypted): then `ctx` is a `RestoreContext`.
     */
    verify: new AsyncSeriesHook<[Artifact, RunContext]>(['artifact', 'ctx']),
    /** Replace each artifact by a transformed one (encryption): return the new artifact. */
    transform: new AsyncSeriesWaterfallHook<[Artifact, RunContext]>(['artifact', 'ctx']),
    /**
     * A producer is about to stream an artifact (`ctx.streamArtifact`, during `produce`): verifiers
     * `attach` an OS process that reads the producer's plain bytes through a tee while they are made
     * (no byte through Node.js), and `claim` the artifact when that covers their `verify` (which is
     * then not called for it). A consumer's failure stops the whole chain; nothing is shipped.
     */
    verifyStream: new AsyncSeriesHook<[VerifyStreamRequest, RunContext]>(['request', 'ctx']),
    /**
     * Right after `verifyStream`: transforms `offer` a program (command, args, env; secrets in files
     * or env, never in argv) that reads stdin and writes stdout; the core splices the offers of the
     * pipeline's `transform` taps, in stage order, up to the first that offers none, after the
     * compressor (their `transform` is then not called for the artifact). The rest run as `transform`
     * on the file: a second pass, said in the log. Only when every verifier claimed the artifact.
     */
    transformFilter: new AsyncSeriesHook<[TransformFilterRequest, RunContext]>(['request', 'ctx']),
    /** A destination finished receiving the set (or failed to). */
    shipped: new AsyncSeriesHook<[ShipReport, RunContext]>(['report', 'ctx']),
    /** Apply retention. In a run, only when everything before it succeeded; `prune` runs it alone, under the lock. */
    retain: new AsyncSeriesHook<[RunContext]>(['ctx']),
    /** The run succeeded. Errors thrown here are logged as warnings, never fail the run. */
    succeeded: new AsyncSeriesHook<[RunSummary, RunContext]>(['summary', 'ctx']),
    /** The run failed. Errors thrown here are logged as warnings, never hide the failure. */
    failed: new AsyncSeriesHook<[PipelineError, RunSummary, RunContext]>(['error', 'summary', 'ctx']),

    // ── restore ───────────────────────────────────────────────────────────────────────────────
    /**
     * An artifact was fetched and its size and sha256 match the manifest (checked by the core).
     * Extra checks of the stored copy go here; throwing rejects this copy, and the core tries the
     * same set from the next destination that holds it. In a one-pass restore (the destination
     * streams) it runs as the copy starts streaming: `artifact.path` is empty and the core's
     * checksums end the stream.
     */
    fetched: new AsyncSeriesHook<[Artifact, RestoreContext]>(['artifact', 'ctx']),
    /**
     * Keyed by `artifact.encryption.method`. The first tap that answers writes the plaintext into
     * `ctx.tmpDir` and returns it as an artifact (`name`, `path`, `bytes`, `sha256` of the
     * plaintext, no `encryption`); the core checks it against `artifact.plain`.
     */
    decrypt: keyed(() => new AsyncSeriesBailHook<[Artifact, RestoreContext], Artifact | undefined>(['artifact', 'ctx'])),
    /**
     * Keyed by `artifact.encryption.method`. The program that decrypts a stream: the first tap that
     * answers returns a `StreamFilter` (command, args, env — secrets in files or env, never in argv)
     * that reads the ciphertext on stdin and writes the plaintext on stdout. The core splices it
     * between the fetch and the restore and checks both sha256 on the way: no ciphertext file.
     * `artifact.path` is empty (the bytes are in the stream). Without an answer the core falls
     * back to `decrypt` on files (a second pass over the data).
     */
    decryptFilter: keyed(() => new AsyncSeriesBailHook<[Artifact, RestoreContext], StreamFilter | undefined>(['artifact', 'ctx'])),
    /**
     * Keyed by `artifact.compression`. Writes the content with that compression undone into
     * `ctx.tmpDir` and returns it (`compression: 'none'`). Called through `ctx.decompress(artifact)`
     * by restore taps that need plain bytes, and by the core for artifacts written to a folder.
     */
    decompress: keyed(() => new AsyncSeriesBailHook<[Artifact, RunContext], Artifact | undefined>(['artifact', 'ctx'])),
    /**
     * Keyed by `artifact.format`. Restores a (decrypted) artifact into `target` — a database, or
     * a folder — and reports what it restored. Called by `restore`, and through `ctx.restore()` by
     * a restore test during a run (then `ctx` is the run's context).
     */
    restore: keyed(() => new AsyncSeriesBailHook<[Artifact, RestoreTarget, RunContext], RestoreReport | undefined>(['artifact', 'target', 'ctx'])),
    /**
     * Keyed by `artifact.format`. Restores a database artifact from `input.stream` (decrypted, its
     * own compression still on; `artifact.path` is empty), read once: straight into the restoring
     * program when `input.targetDisposable`, else into one file that is restored from once
     * `input.checked` resolves. Must await `input.checked` before reporting, and prefer its
     * failure to its own (the real cause). Return undefined without reading the stream to decline:
     * the core then writes it to a file and asks `restore`.
     */
    restoreStream: keyed(() => new AsyncSeriesBailHook<[Artifact, RestoreTarget, RestoreInput, RestoreContext], RestoreReport | undefined>(['artifact', 'target', 'input', 'ctx'])),
    /** A restore finished (or failed: `summary.ok`). Advisory, for notify and metrics. */
    restored: new AsyncSeriesHook<[RestoreSummary, RestoreContext]>(['summary', 'ctx']),
    /** A stored set was re-verified (or failed to: `summary.ok`). Advisory, for notify and metrics. */
    verified: new AsyncSeriesHook<[VerifySummary, RestoreContext]>(['summary', 'ctx']),

    // ── events ────────────────────────────────────────────────────────────────────────────────
    /** A tap of a lifecycle hook started / finished (for progress and metrics). */
    stageStart: new SyncHook<[StageEvent]>(['event']),
    stageFinish: new SyncHook<[StageEvent]>(['event']),
    /** Progress of a long task: bytes written, tables done… */
    progress: new SyncHook<[ProgressEvent]>(['event']),
  });

export type PipelineHooks = ReturnType<typeof createHooks>;
export type HookName = keyof PipelineHooks;
/** The keyed hooks (a `HookMap` each). */
export type KeyedHookName = 'decrypt' | 'decryptFilter' | 'decompress' | 'restore' | 'restoreStream';
export const KEYED_HOOKS: readonly KeyedHookName[] = ['decrypt', 'decryptFilter', 'decompress', 'restore', 'restoreStream'];

/** Hooks that report on other hooks; they are not stages themselves. */
export const EVENT_HOOKS: readonly HookName[] = ['stageStart', 'stageFinish', 'progress'];
/** Hooks whose failure is only a warning. */
export const ADVISORY_HOOKS: readonly HookName[] = ['started', 'shipped', 'succeeded', 'failed', 'restored', 'verified'];

/**
 * What each hook is, for docs/plugins.md (generated) and `pipeline plugins`: the half of the
 * lifecycle, the tapable kind, the key of a keyed hook, whether it runs in `--dry-run`, and what
 * comes before and after it.
 */
export interface HookDescription {
  half: 'backup' | 'restore' | 'both' | 'event';
  kind: string;
  args: string;
  keyedBy?: string;
  dryRun: 'no' | 'yes' | 'only';
  advisory: boolean;
  after: string;
  before: string;
}

export const HOOK_DESCRIPTIONS: Readonly<Record<HookName, HookDescription>> = Object.freeze({
  started: { half: 'backup', kind: 'AsyncSeriesHook', args: '(ctx)', dryRun: 'no', advisory: true, after: 'lock taken, set id chosen', before: '`connect`' },
  connect: { half: 'both', kind: 'AsyncSeriesHook', args: '(ctx)', dryRun: 'yes', advisory: false, after: '`started` (run); start of `restore`, `verify`, `prune`', before: '`preflight` (run); locating the set (restore, verify); `retain` (prune)' },
  preflight: { half: 'backup', kind: 'AsyncSeriesHook', args: '(ctx)', dryRun: 'yes', advisory: false, after: '`connect`', before: 'destination checks, then `plan` (dry run) or `produce`' },
  plan: { half: 'backup', kind: 'AsyncSeriesHook', args: '(plan, ctx)', dryRun: 'only', advisory: false, after: '`preflight` and the destination checks', before: 'end of the dry run' },
  produce: { half: 'backup', kind: 'AsyncSeriesHook', args: '(ctx)', dryRun: 'no', advisory: false, after: 'destination checks', before: '`verify`' },
  verify: { half: 'both', kind: 'AsyncSeriesHook', args: '(artifact, ctx)', dryRun: 'no', advisory: false, after: '`produce` (run); `decrypt` (verifyStored)', before: '`transform` (run); `verified` (verifyStored)' },
  transform: { half: 'backup', kind: 'AsyncSeriesWaterfallHook', args: '(artifact, ctx) → artifact', dryRun: 'no', advisory: false, after: '`verify`', before: 'manifest written, shipping' },
  verifyStream: { half: 'backup', kind: 'AsyncSeriesHook', args: '(request, ctx)', dryRun: 'no', advisory: false, after: 'a `produce` tap called `ctx.streamArtifact()`', before: '`transformFilter`, then the stream runs (verifiers read it as it is made)' },
  transformFilter: { half: 'backup', kind: 'AsyncSeriesHook', args: '(request, ctx)', dryRun: 'no', advisory: false, after: '`verifyStream`', before: 'the stream runs with the offered filters spliced in; `verify` and `transform` then skip what the stream did' },
  shipped: { half: 'backup', kind: 'AsyncSeriesHook', args: '(report, ctx)', dryRun: 'no', advisory: true, after: 'every destination finished', before: '`retain`' },
  retain: { half: 'backup', kind: 'AsyncSeriesHook', args: '(ctx)', dryRun: 'no', advisory: false, after: '`shipped` (run); `connect` under the lock (prune)', before: '`succeeded`' },
  succeeded: { half: 'backup', kind: 'AsyncSeriesHook', args: '(summary, ctx)', dryRun: 'no', advisory: true, after: '`retain`', before: 'end' },
  failed: { half: 'backup', kind: 'AsyncSeriesHook', args: '(error, summary, ctx)', dryRun: 'no', advisory: true, after: 'any failing step', before: 'end' },
  fetched: { half: 'restore', kind: 'AsyncSeriesHook', args: '(artifact, restoreCtx)', dryRun: 'no', advisory: false, after: 'the core fetched the artifact and checked its sha256 (one pass: as it starts streaming, `path` empty)', before: '`decrypt` (one pass: `decryptFilter`)' },
  decrypt: { half: 'restore', kind: 'HookMap<AsyncSeriesBailHook>', args: '(artifact, restoreCtx) → artifact | undefined', keyedBy: '`artifact.encryption.method`', dryRun: 'no', advisory: false, after: '`fetched`', before: 'the core checks the plaintext sha256, then `restore` or `verify`' },
  decryptFilter: { half: 'restore', kind: 'HookMap<AsyncSeriesBailHook>', args: '(artifact, restoreCtx) → streamFilter | undefined', keyedBy: '`artifact.encryption.method`', dryRun: 'no', advisory: false, after: 'the core opened the stored copy as a stream', before: 'the core checks both sha256 at the end of the stream; `restoreStream` or a plaintext file' },
  decompress: { half: 'both', kind: 'HookMap<AsyncSeriesBailHook>', args: '(artifact, ctx) → artifact | undefined', keyedBy: '`artifact.compression`', dryRun: 'no', advisory: false, after: '`decrypt`; called by `ctx.decompress()`', before: 'whatever asked for it' },
  restore: { half: 'both', kind: 'HookMap<AsyncSeriesBailHook>', args: '(artifact, target, ctx) → report | undefined', keyedBy: '`artifact.format`', dryRun: 'no', advisory: false, after: '`decrypt` (restore); `ctx.restore()` in a restore test (run, verifyStored)', before: '`restored`' },
  restoreStream: { half: 'restore', kind: 'HookMap<AsyncSeriesBailHook>', args: '(artifact, target, input, restoreCtx) → report | undefined', keyedBy: '`artifact.format`', dryRun: 'no', advisory: false, after: '`decryptFilter` (the stream is the plaintext)', before: '`restored`; declined: the stream into a file, then `restore`' },
  restored: { half: 'restore', kind: 'AsyncSeriesHook', args: '(summary, restoreCtx)', dryRun: 'no', advisory: true, after: '`restore` of every artifact (or a failure)', before: 'end' },
  verified: { half: 'restore', kind: 'AsyncSeriesHook', args: '(summary, restoreCtx)', dryRun: 'no', advisory: true, after: '`verify` of every fetched artifact (or a failure)', before: 'end' },
  stageStart: { half: 'event', kind: 'SyncHook', args: '(event)', dryRun: 'yes', advisory: false, after: '—', before: 'every promise/callback tap of a lifecycle hook' },
  stageFinish: { half: 'event', kind: 'SyncHook', args: '(event)', dryRun: 'yes', advisory: false, after: 'every promise/callback tap of a lifecycle hook', before: '—' },
  progress: { half: 'event', kind: 'SyncHook', args: '(event)', dryRun: 'no', advisory: false, after: '—', before: '— (`ctx.progress()` from any tap)' },
});

/** What a plugin may do with a hook: tap it. Only the core calls hooks. */
type TapMethods<H> = Pick<H, Extract<keyof H, 'tap' | 'tapAsync' | 'tapPromise'>>;
/** A keyed hook, tap-only: `hooks.decrypt.for('age').tapPromise(…)`. */
export interface TapOnlyHookMap<H> {
  for(key: string): TapMethods<H>;
}
export type TapOnlyHooks = {
  readonly [K in HookName]: PipelineHooks[K] extends HookMap<infer H> ? TapOnlyHookMap<H> : TapMethods<PipelineHooks[K]>;
};
