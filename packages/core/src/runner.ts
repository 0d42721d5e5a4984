/**
 * The runner: builds a run's context, applies the configured plugins to a fresh set of hooks,
 * and drives the lifecycle in the order declared in hooks.ts. It owns concurrency (one p-queue),
 * the lock, the staging folder, the manifest, shipping to destinations, and cleanup.
 */
import { readFileSync } from 'node:fs';
import { link, mkdir, rm, stat } from 'node:fs/promises';
import { hostname } from 'node:os';
import { join } from 'node:path';
import PQueue from 'p-queue';
import { HookMap } from 'tapable';
import type { Logger } from 'pino';
import { recordStream, runArtifactStream, unchangedSinceStream, type StreamConsumer, type StreamRecord, type TransformFilter } from './artifact-stream.js';
import { syncDir, writeFileAtomic, DIR_MODE } from './atomic-file.js';
import type { ConfiguredDestination, ResolvedConfig, ResolvedPipeline } from './config.js';
import type { Artifact, Plan, RetainReport, RunContext, RunSummary, ShipReport, StageEvent } from './context.js';
import { MANIFEST_NAME, type NamedDestination, type PutSource } from './destination.js';
import { assertFileName } from './names.js';
import { PipelineError, isPipelineError, toPipelineError } from './errors.js';
import { exec } from './exec.js';
import { createHooks, EVENT_HOOKS, ADVISORY_HOOKS, KEYED_HOOKS, type HookName, type KeyedHookName, type PipelineHooks, type TapOnlyHooks } from './hooks.js';
import { LocalFolderDestination } from './local-folder.js';
import { acquireLock, type Lock } from './lock.js';
import { createRunScratch } from './run-scratch.js';
import { MANIFEST_FORMAT, makeSetId, serializeManifest, type Manifest } from './manifest.js';
import { makePathResolver, tapOnlyHooks, type PluginApi } from './plugin.js';
import { shipTree, type TreeShipResult } from './tree-ship.js';
import { locateSet, restoreStoredSet, verifyStoredSet, type RestoreCapabilities, type RestoreRequestOptions, type RestoreResult } from './restore.js';
import type { RestoreContext, RestoreRequest } from './restore-context.js';
import { drillOf } from './restore-drill.js';
import { pickLatestForDataDir, pickSetForRecovery, restoreIntoDataDir, type DataDirFormats, type DataDirRequestOptions } from './physical-restore.js';
import type { DataDirFormat } from './plugin.js';
import type { SecretRegistry } from './secrets.js';

export const FRAMEWORK_VERSION: string = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;

export interface RunOptions {
  dryRun?: boolean;
  signal?: AbortSignal;
  /** The clock (tests set it to simulate time). */
  now?: () => Date;
  /**
   * Options given on the command line for this command only (restore-time settings such as a
   * key file): `key` applies to every stage whose options declare `key`, `plugin.key` to that
   * plugin's stages. Each changed stage is validated again with its plugin's schema.
   */
  stageOptions?: Record<string, unknown>;
  /** Taps the run's hooks from outside (the CLI's progress display, tests). */
  observe?: (hooks: TapOnlyHooks) => void;
}

export interface RunResult {
  summary: RunSummary;
  plan?: Plan;
  manifest?: Manifest;
}

function pluginApi(config: ResolvedConfig, log: Logger, name: string): PluginApi {
  return { name, log: log.child({ plugin: name }), secrets: config.secrets, configDir: config.dir, resolvePath: makePathResolver(config.dir) };
}

export async function createDestination(config: ResolvedConfig, configured: ConfiguredDestination, log: Logger): Promise<NamedDestination> {
  const { plugin, options, name } = configured;
  const destination = await plugin.destination!.create(options, pluginApi(config, log, plugin.name));
  return { name, plugin: plugin.name, destination };
}

/** The work dir as a destination: sets completed there are backups like any other. */
export function workDestination(config: ResolvedConfig): NamedDestination {
  return { name: 'work', plugin: 'core', destination: new LocalFolderDestination(config.workDir) };
}

/** The dry-run plan; a step without a plugin name belongs to the plugin whose tap is running. */
function makePlan(currentPlugin: () => string | undefined): Plan {
  const steps: Plan['steps'] = [];
  return {
    steps,
    add: (step) => steps.push({ plugin: step.plugin ?? currentPlugin() ?? 'core', hook: step.hook ?? 'plan', description: step.description, command: step.command }),
  };
}

async function retrying<T>(fn: () => Promise<T>, signal: AbortSignal, attempts = 3): Promise<T> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await fn();
    } catch (error) {
      const code = isPipelineError(error) ? error.code : '';
      if (attempt >= attempts || signal.aborted || code === 'ABORTED' || code === 'CHECKSUM_MISMATCH') throw error;
      await new Promise((r) => setTimeout(r, 250 * 4 ** (attempt - 1)));
    }
  }
}

/**
 * `PutSource.link` for a staging-only work dir: each staged file goes by hard link to the first
 * destination that asks (and can: same file system); every later ask, and a failed link, is false.
 * When another destination then fails, the work dir keeps the set, and its files share their
 * inodes with the linked destination's until retention removes one of the two names.
 */
function offerLinks(): (path: string) => PutSource['link'] {
  const taken = new Set<string>();
  return (path) => async (to) => {
    if (taken.has(path)) return false;
    taken.add(path);
    try {
      await link(path, to);
      return true;
    } catch {
      // EXDEV (another file system), EPERM (links not allowed there), …: that destination copies,
      // and a later one may still take the link.
      taken.delete(path);
      return false;
    }
  };
}

/** A destination that cannot be reached or written fails the run before any data moves. */
async function checkDestination(d: NamedDestination, signal: AbortSignal): Promise<void> {
  try {
    await retrying(() => d.destination.check?.({ signal }) ?? Promise.resolve(), signal);
  } catch (caught) {
    const error = toPipelineError(caught, 'DESTINATION_FAILED');
    throw new PipelineError('DESTINATION_FAILED', `destination "${d.name}" (${d.destination.describe()}) is not usable: ${error.message}`, {
      cause: caught,
      plugin: d.plugin,
      hook: 'preflight',
      hint: error.code === 'DESTINATION_FAILED' || error.code === 'PLUGIN_FAILED' ? undefined : error.hint,
    });
  }
}

interface OpenRun {
  hooks: PipelineHooks;
  ctx: RunContext;
  stages: StageEvent[];
  now: () => Date;
  controller: AbortController;
  current(): StageEvent | undefined;
  /** Whether the artifact's file is still the one `ctx.streamArtifact` wrote and hashed. */
  hashedAsWritten(artifact: Artifact): Promise<boolean>;
  close(): Promise<void>;
}

/** A stage's options with the command line's `stageOptions` applied (validated again), or as configured. */
export function withStageOptions(stage: ResolvedPipeline['stages'][number], given: Record<string, unknown> | undefined): unknown {
  if (!given || !stage.plugin.options) return stage.options;
  const shape = (stage.plugin.options as { shape?: Record<string, unknown> }).shape ?? {};
  const changes: Record<string, unknown> = {};
  for (const [key, value] of Object.entries(given)) {
    const dot = key.indexOf('.');
    const [plugin, option] = dot > 0 ? [key.slice(0, dot), key.slice(dot + 1)] : [undefined, key];
    if (plugin !== undefined && plugin !== stage.plugin.name) continue;
    if (option in shape) changes[option] = value;
    else if (plugin !== undefined) throw new PipelineError('USAGE', `${stage.plugin.name} has no option "${option}"`, { hint: `Its options: ${Object.keys(shape).join(', ')}.` });
  }
  if (Object.keys(changes).length === 0) return stage.options;
  const parsed = stage.plugin.options.safeParse({ ...(stage.options as object), ...changes });
  if (!parsed.success) {
    throw new PipelineError('USAGE', `${stage.plugin.name}: ${parsed.error.issues.map((i) => `${i.path.join('.') || '(options)'}: ${i.message}`).join('; ')}`, {
      hint: 'Fix the value given on the command line (--option key=value).',
    });
  }
  return parsed.data;
}

/** No loaded plugin handles this: a fact about the set, not damage. */
export function needsPlugin(hook: 'decrypt' | 'decompress' | 'restore', artifact: Pick<Artifact, 'name'>, what: string): PipelineError {
  return new PipelineError('RESTORE_NEEDS_PLUGIN', `${artifact.name} needs a plugin that taps ${hook} for ${what}, and none of this pipeline's stages does`, {
    hint: `The set is not damaged. Add the plugin that wrote it (the stage that ${hook === 'decrypt' ? 'encrypted' : hook === 'decompress' ? 'compressed' : 'produced'} it) to the pipeline's stages, with its restore-time options (e.g. a key file), and run again.`,
    details: { artifact: artifact.name, hook, what },
  });
}

export class Runner {
  constructor(
    readonly config: ResolvedConfig,
    readonly log: Logger,
  ) {}

  pipeline(name: string | undefined): ResolvedPipeline {
    const names = Object.keys(this.config.pipelines);
    const chosen = name ?? (names.length === 1 ? names[0] : undefined);
    const pipeline = chosen ? this.config.pipelines[chosen] : undefined;
    if (!pipeline) {
      throw new PipelineError('USAGE', name ? `no pipeline named "${name}" in ${this.config.file}` : `${this.config.file} has several pipelines; name one`, {
        hint: `Pipelines: ${names.join(', ')}.`,
      });
    }
    return pipeline;
  }

  /**
   * Builds what every command works with: fresh hooks with the pipeline's plugins applied (and
   * instrumented), its destinations, and a context. `close()` runs the deferred cleanups.
   */
  private async open(pipeline: ResolvedPipeline, options: RunOptions, setIdFor: (startedAt: Date) => Promise<string>, extra: object = {}): Promise<OpenRun> {
    const { config } = this;
    const secrets: SecretRegistry = config.secrets;
    const now = options.now ?? (() => new Date());
    const startedAt = now();
    const controller = new AbortController();
    const signal = options.signal ? AbortSignal.any([options.signal, controller.signal]) : controller.signal;
    const log = this.log.child({ pipeline: pipeline.name });
    const hooks = createHooks();
    const stages: StageEvent[] = [];
    const deferred: Array<() => unknown> = [];
    const timeoutMs = pipeline.stageTimeoutMinutes * 60_000;
    let current: StageEvent | undefined;
    let rejectCurrent: ((e: Error) => void) | undefined;
    // What `ctx.streamArtifact` did, by artifact name: the `verify` and `transform` taps it served.
    const streamed = new Map<string, StreamRecord>();

    this.instrument(
      hooks,
      timeoutMs,
      stages,
      (ev, reject) => {
        current = ev;
        rejectCurrent = reject;
      },
      () => ({ ev: current, reject: rejectCurrent }),
      async (hookName, plugin, args) => {
        const artifact = args[0] as Artifact | undefined;
        const record = artifact && streamed.get(artifact.name);
        if (!record || !artifact) return undefined;
        if (hookName === 'transform' && record.transformedBy.has(plugin)) return { value: artifact };
        if (hookName === 'verify' && record.verifiedBy.has(plugin)) {
          if (await unchangedSinceStream(artifact, record)) return { value: undefined };
          log.warn({ artifact: artifact.name, plugin }, `${artifact.name} changed after ${plugin} verified its stream: verifying the file again`);
        }
        return undefined;
      },
      // Notifications and other advisory taps never change the outcome of a run.
      (error) => log.warn({ plugin: error.plugin, hook: error.hook, code: error.code }, `${error.describe()} (ignored: advisory hook)`),
    );

    const destinations = await Promise.all(
      pipeline.destinations.map((d) => {
        const configured = config.destinations[d];
        if (!configured) throw new PipelineError('DESTINATION_UNKNOWN', `destination "${d}" is not declared`);
        return createDestination(config, configured, log);
      }),
    );
    const work = workDestination(config);
    for (const stage of pipeline.stages) {
      const stageOptions = withStageOptions(stage, options.stageOptions);
      stage.plugin.apply!(tapOnlyHooks(hooks, stage.plugin.name), stageOptions as never, pluginApi(config, log, stage.plugin.name));
    }

    options.observe?.(tapOnlyHooks(hooks, 'observer'));

    const setId = await setIdFor(startedAt);
    const setDir = join(config.workDir, setId);
    // The run's private scratch (password file, temp files), where the next run finds it after a crash.
    const scratch = await createRunScratch(config.workDir, { dryRun: options.dryRun, log, pipeline: pipeline.name });
    const tmpDir = scratch.dir;
    const artifacts: Artifact[] = [];
    const queue = new PQueue({ concurrency: config.concurrency });

    const ctx: RunContext = {
      pipeline: pipeline.name,
      setId,
      source: pipeline.source,
      dryRun: options.dryRun === true,
      startedAt,
      timezone: config.timezone,
      workDir: config.workDir,
      setDir,
      tmpDir,
      signal,
      log,
      secrets,
      artifacts,
      destinations,
      work,
      facts: {},
      tools: {},
      exec: (file, args, opts) => exec(file, args, { signal, secrets, ...opts }),
      streamArtifact: async (request) => {
        const artifact = { ...request.artifact, streamCompression: request.artifact.streamCompression ?? 'none' };
        assertFileName(artifact.name);
        const tapName = () => current?.plugin ?? 'unknown';
        const consumers: Array<{ plugin: string; consumer: StreamConsumer }> = [];
        const claimed = new Set<string>();
        await hooks.verifyStream.promise({ artifact, attach: (consumer) => void consumers.push({ plugin: tapName(), consumer }), claim: () => void claimed.add(tapName()) }, ctx);
        const unclaimed = [...new Set(hooks.verify.taps.map((t) => t.name))].filter((p) => !claimed.has(p));
        const transformers = hooks.transform.taps.map((t) => t.name);
        const filters: Array<{ plugin: string; filter: TransformFilter }> = [];
        if (unclaimed.length === 0 && transformers.length > 0) {
          const offers: Array<{ plugin: string; filter: TransformFilter }> = [];
          await hooks.transformFilter.promise({ artifact, offer: (filter) => void offers.push({ plugin: tapName(), filter }) }, ctx);
          // In stage order, up to the first transform that offers no filter: the order of transforms is kept.
          for (const plugin of transformers) {
            const i = offers.findIndex((o) => o.plugin === plugin);
            if (i < 0) break;
            filters.push(offers.splice(i, 1)[0]!);
          }
        }
        const rest = transformers.slice(filters.length);
        if (rest.length > 0) {
          const why = unclaimed.length > 0 ? ` (${unclaimed.join(', ')} verifies the staged file, so nothing is transformed before it has)` : '';
          log.info({ artifact: artifact.name, plugins: rest }, `${rest.join(', ')} will transform ${artifact.name} from the staged file after the stream (for a transform that reads it, a second pass over the data)${why}`);
        }
        const result = await runArtifactStream(request, { consumers, filters }, ctx);
        streamed.set(result.artifact.name, await recordStream(result.artifact, claimed, filters.map((f) => f.plugin)));
        return result;
      },
      addArtifact: (artifact) => {
        assertFileName(artifact.name);
        if (artifacts.some((a) => a.name === artifact.name)) {
          throw new PipelineError('ARTIFACT_DUPLICATE', `two artifacts are named ${artifact.name}`, { hint: 'Give the stages distinct output names.' });
        }
        artifacts.push(artifact);
      },
      progress: (event) => hooks.progress.call({ ...event, plugin: event.plugin ?? current?.plugin ?? 'core' }),
      defer: (cleanup) => void deferred.push(cleanup),
      queue,
      retention: [],
      restore: async (artifact, target) => {
        const report = await hooks.restore.get(artifact.format)?.promise(artifact, target, ctx);
        if (!report) throw needsPlugin('restore', artifact, `format "${artifact.format}"`);
        return report;
      },
      decompress: async (artifact) => {
        if (artifact.compression === 'none') return artifact;
        const plain = await hooks.decompress.get(artifact.compression)?.promise(artifact, ctx);
        if (!plain) throw needsPlugin('decompress', artifact, `compression "${artifact.compression}"`);
        return plain;
      },
      ...extra,
    };

    // A tap whose promise can never settle empties the event loop: fail loudly instead of exiting 0.
    const onBeforeExit = () => rejectCurrent?.(new PipelineError('STAGE_NEVER_SETTLED', `${current?.plugin ?? 'a plugin'} never finished its ${current?.hook ?? ''} step (its promise can never settle)`));
    process.on('beforeExit', onBeforeExit);

    return {
      hooks,
      ctx,
      stages,
      now,
      controller,
      current: () => current,
      hashedAsWritten: async (artifact) => {
        const record = streamed.get(artifact.name);
        return record !== undefined && (await unchangedSinceStream(artifact, record));
      },
      close: async () => {
        process.off('beforeExit', onBeforeExit);
        controller.abort();
        for (const cleanup of deferred.reverse()) {
          try {
            await cleanup();
          } catch (error) {
            log.warn({ err: (error as Error).message }, 'cleanup step failed');
          }
        }
        await scratch.remove();
      },
    };
  }

  /**
   * What the stages of the config (every pipeline, or one) can read back: the keys they tap on
   * `decrypt`, `decompress` and `restore`. Applies the plugins to fresh hooks and runs nothing.
   */
  restoreCapabilities(name?: string): RestoreCapabilities {
    const pipelines = name ? [this.pipeline(name)] : Object.values(this.config.pipelines);
    const hooks = createHooks();
    const seen: Record<KeyedHookName, Array<{ key: string; hook: { taps: unknown[] } }>> = { decrypt: [], decryptFilter: [], decompress: [], restore: [], restoreStream: [] };
    for (const hookName of KEYED_HOOKS) {
      (hooks[hookName] as unknown as HookMap<{ taps: unknown[] }>).intercept({ factory: (key, hook) => (seen[hookName].push({ key: String(key), hook }), hook) });
    }
    for (const pipeline of pipelines) {
      for (const stage of pipeline.stages) {
        try {
          stage.plugin.apply!(tapOnlyHooks(hooks, stage.plugin.name), stage.options as never, pluginApi(this.config, this.log, stage.plugin.name));
        } catch {
          // A plugin whose apply throws cannot run at all; `pipeline run` reports it, the listing goes on.
        }
      }
    }
    const keys = (h: KeyedHookName) => [...new Set(seen[h].filter((s) => s.hook.taps.length > 0).map((s) => s.key))];
    // A stream decrypter (decryptFilter) reads the set as well as a file one.
    return { decrypt: [...new Set([...keys('decrypt'), ...keys('decryptFilter')])], decompress: keys('decompress'), restore: keys('restore') };
  }

  /** The formats the stages of a pipeline restore into a data dir (`dataDirFormats`), first declaration wins. */
  dataDirFormats(name?: string): DataDirFormats {
    const formats = new Map<string, DataDirFormat>();
    for (const stage of this.pipeline(name).stages) {
      for (const [format, declared] of Object.entries(stage.plugin.dataDirFormats ?? {})) if (!formats.has(format)) formats.set(format, declared);
    }
    return formats;
  }

  /**
   * The work dir and the pipeline's destinations, or only the one named `from` — which may be any
   * destination the config declares (`list` shows them all; a set can be fetched from any of them).
   */
  private async sources(ctx: RunContext, from: string | undefined): Promise<NamedDestination[]> {
    const all = [ctx.work, ...ctx.destinations];
    if (!from) return all;
    const chosen = all.filter((d) => d.name === from);
    if (chosen.length > 0) return chosen;
    const declared = this.config.destinations[from];
    if (!declared) {
      throw new PipelineError('DESTINATION_UNKNOWN', `destination "${from}" is not declared in ${this.config.file}`, {
        hint: `Destinations: ${['work', ...Object.keys(this.config.destinations)].join(', ')}.`,
      });
    }
    return [await createDestination(this.config, declared, ctx.log)];
  }

  /** Opens a context for a stored set (restore, verifyStored): connect, then locate. */
  private async openStored(pipeline: ResolvedPipeline, options: RunOptions, request: RestoreRequest, from: string | undefined, connect = true) {
    const opened = await this.open(pipeline, { ...options, dryRun: false }, async (startedAt) => makeSetId(startedAt, pipeline.source), {
      stored: { id: request.set, manifest: undefined, from: '' },
      request,
    });
    const ctx = opened.ctx as RestoreContext;
    return { opened, ctx, locate: async (choose?: (sources: NamedDestination[]) => Promise<string>) => {
      // Files alone (the env file, first thing on a new server) need no database connection.
      if (connect) await opened.hooks.connect.promise(ctx);
      const sources = await this.sources(ctx, from);
      const located = await locateSet(sources, choose ? await choose(sources) : request.set, ctx);
      Object.assign(ctx, { setId: located.id, setDir: ctx.tmpDir, stored: { id: located.id, manifest: located.manifest, from: located.holders[0]!.name, destination: located.holders[0]!.destination } });
      return located;
    } };
  }

  /**
   * Restores a stored set: locate (`latest` = newest complete set in the work dir or any
   * destination) → fetch, checking every sha256 (a bad copy: the next destination holding it)
   * → decrypt → restore. Nothing is written to the work dir and no lock is taken.
   */
  async restore(name: string | undefined, request: RestoreRequestOptions & DataDirRequestOptions & { from?: string }, options: RunOptions = {}): Promise<RestoreResult> {
    const pipeline = this.pipeline(name);
    if (request.recoveryTarget && !request.dataDir) {
      throw new PipelineError('USAGE', 'a recovery target (--to-time, --to-lsn) needs a data dir to restore a physical backup into (--data-dir DIR)', {
        hint: 'A dump restores into a database only as it was when it was taken; point-in-time recovery writes a data directory (docs/physical.md).',
      });
    }
    if (request.dataDir && (request.database || request.globals || request.filesTo)) {
      throw new PipelineError('USAGE', '--data-dir restores a physical backup alone: leave out --to, --globals and --files-to');
    }
    const formats = this.dataDirFormats(pipeline.name);
    const { opened, ctx, locate } = await this.openStored(pipeline, options, { command: 'restore', set: request.set }, request.from, !!(request.database || request.globals));
    const started = Date.now();
    try {
      // A recovery target without a set: the newest set whose backup ended before the target.
      const target = request.recoveryTarget;
      const latest = request.set === 'latest' && request.dataDir !== undefined;
      const located = await locate(
        latest ? (sources) => (target ? pickSetForRecovery(sources, target, formats, ctx) : pickLatestForDataDir(sources, formats, ctx)) : undefined,
      );
      const result = request.dataDir ? await restoreIntoDataDir(opened.hooks, located, request, formats, ctx) : await restoreStoredSet(opened.hooks, located, request, ctx);
      await opened.hooks.restored.promise({ pipeline: pipeline.name, setId: result.setId, from: result.from, ok: true, reports: result.reports, durationMs: result.durationMs }, ctx);
      return result;
    } catch (caught) {
      const error = this.failure(caught, ctx);
      await opened.hooks.restored
        .promise({ pipeline: pipeline.name, setId: ctx.setId, from: ctx.stored.from, ok: false, reports: [], durationMs: Date.now() - started, error: { code: error.code, message: error.message } }, ctx)
        .catch(() => {});
      throw error;
    } finally {
      await opened.close();
    }
  }

  /**
   * Re-verifies a stored set: fetch one copy, check every sha256, decrypt (checking the plaintext),
   * then run the `verify` hook on each artifact — the same checks as during a run. With
   * `restoreTest`, the verify stage also restores into a scratch database.
   */
  async verifyStored(name: string | undefined, request: { set: string; from?: string; restoreTest?: boolean }, options: RunOptions = {}): Promise<{ setId: string; from: string; artifacts: Artifact[]; verifiers: number }> {
    const pipeline = this.pipeline(name);
    const { opened, ctx, locate } = await this.openStored(pipeline, options, { command: 'verify', set: request.set, restoreTest: request.restoreTest }, request.from);
    const started = Date.now();
    try {
      const verifiers = opened.hooks.verify.taps.length;
      if (request.restoreTest && verifiers === 0) {
        throw new PipelineError('USAGE', `pipeline "${pipeline.name}" has no stage that verifies artifacts, so there is nothing to run a restore test with`, { hint: 'Add `- use: verify` to the pipeline.' });
      }
      const located = await locate();
      const result = await verifyStoredSet(opened.hooks, located, ctx);
      const artifacts = result.artifacts.map((a) => ({ name: a.name, kind: a.kind, format: a.format, verification: a.meta.verification, drill: drillOf(a) }));
      await opened.hooks.verified.promise({ pipeline: pipeline.name, setId: result.setId, from: result.from, ok: true, artifacts, durationMs: Date.now() - started }, ctx);
      return { ...result, verifiers };
    } catch (caught) {
      const error = this.failure(caught, ctx);
      await opened.hooks.verified
        .promise({ pipeline: pipeline.name, setId: ctx.setId, from: ctx.stored.from, ok: false, artifacts: [], durationMs: Date.now() - started, error: { code: error.code, message: error.message } }, ctx)
        .catch(() => {});
      throw error;
    } finally {
      await opened.close();
    }
  }

  /**
   * Retention alone: the `retain` hook, under the pipeline's lock (so it never races a run).
   * Returns what each retain tap reported, and the error the hook ended with, if any (damaged sets
   * kept, deletions that failed), so the caller can show the decisions before failing.
   */
  async prune(
    name: string | undefined,
    request: { dryRun?: boolean; deleteDamaged?: readonly string[] } = {},
    options: RunOptions = {},
  ): Promise<{ retention: RetainReport[]; error?: PipelineError }> {
    const pipeline = this.pipeline(name);
    const { config } = this;
    const opened = await this.open(pipeline, { ...options, dryRun: request.dryRun === true }, async (startedAt) => makeSetId(startedAt, pipeline.source), {
      prune: { deleteDamaged: request.deleteDamaged ?? [] },
    });
    const { ctx, hooks } = opened;
    let lock: { release(): Promise<void> } | undefined;
    try {
      if (hooks.retain.taps.length === 0) {
        throw new PipelineError('USAGE', `pipeline "${pipeline.name}" has no retention stage`, { hint: 'Add `- use: retention` with a keep policy to the pipeline.' });
      }
      await mkdir(config.workDir, { recursive: true, mode: DIR_MODE });
      lock = await this.lock(pipeline.name, ctx);
      await hooks.connect.promise(ctx);
      try {
        await hooks.retain.promise(ctx);
      } catch (caught) {
        if (ctx.retention.length === 0 || ctx.signal.aborted) throw caught;
        return { retention: [...ctx.retention], error: this.failure(caught, ctx) };
      }
      return { retention: [...ctx.retention] };
    } catch (caught) {
      throw this.failure(caught, ctx);
    } finally {
      await opened.close();
      await lock?.release();
    }
  }

  /** Takes the pipeline's lock, recording the run's scratch folder with it; a stale lock taken over is logged with its dead owner. */
  private async lock(pipeline: string, ctx: RunContext): Promise<Lock> {
    const lock = await acquireLock(join(this.config.workDir, '.locks', `${pipeline}.lock`), { runDir: ctx.tmpDir });
    const dead = lock.takenOver;
    if (dead) {
      ctx.log.warn({ lock: lock.path, deadPid: dead.pid, startedAt: dead.startedAt }, `took over the lock ${lock.path} left by pid ${dead.pid} (started ${dead.startedAt}), which is no longer running`);
    }
    return lock;
  }

  private failure(caught: unknown, ctx: RunContext): PipelineError {
    const error = ctx.signal.aborted && !isPipelineError(caught) ? new PipelineError('ABORTED', 'interrupted') : toPipelineError(caught);
    error.message = this.config.secrets.mask(error.message);
    return error;
  }

  async run(name: string | undefined, options: RunOptions = {}): Promise<RunResult> {
    const pipeline = this.pipeline(name);
    const { config } = this;
    const secrets: SecretRegistry = config.secrets;
    // Ids have one-second resolution and must sort in time order: a second run within the same
    // second takes the next free second rather than a differently shaped id.
    const opened = await this.open(pipeline, options, async (startedAt) => {
      let setId = makeSetId(startedAt, pipeline.source);
      for (let bump = 1; await stat(join(config.workDir, setId)).catch(() => undefined); bump++) {
        setId = makeSetId(new Date(startedAt.getTime() + bump * 1000), pipeline.source);
      }
      return setId;
    });
    const { hooks, ctx, stages, now } = opened;
    const { setId, setDir, startedAt, signal, log, destinations } = ctx;
    const artifacts = ctx.artifacts as Artifact[];
    const queue = ctx.queue;
    const current = opened.current;

    const reports: ShipReport[] = [];
    let manifest: Manifest | undefined;
    let madeSetDir = false;
    let lock: { release(): Promise<void> } | undefined;
    const summary = (error?: PipelineError): RunSummary => ({
      pipeline: pipeline.name,
      setId,
      ok: !error,
      startedAt: startedAt.toISOString(),
      durationMs: now().getTime() - startedAt.getTime(),
      artifacts: artifacts.map((a) => ({ name: a.name, bytes: a.bytes, sha256: a.sha256, kind: a.kind, format: a.format, compression: a.compression, encrypted: !!a.encryption })),
      destinations: reports,
      stages: [...stages],
      error: error && { code: error.code, message: error.message, hint: error.hint, plugin: error.plugin, hook: error.hook },
    });

    try {
      if (ctx.dryRun) {
        await hooks.connect.promise(ctx);
        await hooks.preflight.promise(ctx);
        await Promise.all(destinations.map((d) => checkDestination(d, signal)));
        const plan = makePlan(() => current()?.plugin);
        for (const d of destinations) plan.add({ plugin: d.plugin, hook: 'ship', description: `ship to "${d.name}": ${d.destination.describe()}` });
        plan.add({
          plugin: 'core',
          hook: 'ship',
          description: config.keepInWorkDir === false ? `stage the set in the work dir ${config.workDir} and remove it there once every destination has it` : `keep the set in the work dir ${config.workDir}`,
        });
        await hooks.plan.promise(plan, ctx);
        return { summary: summary(), plan };
      }

      await mkdir(config.workDir, { recursive: true, mode: DIR_MODE });
      lock = await this.lock(pipeline.name, ctx);
      // Not recursive: the id is this run's only if it makes the folder (a folder of that name is another run's).
      await mkdir(setDir, { mode: DIR_MODE });
      madeSetDir = true;
      await hooks.started.promise(ctx);
      await hooks.connect.promise(ctx);
      await hooks.preflight.promise(ctx);
      await Promise.all(destinations.map((d) => checkDestination(d, signal)));
      await hooks.produce.promise(ctx);
      if (artifacts.length === 0) throw new PipelineError('NO_ARTIFACTS', `pipeline "${pipeline.name}" produced no artifact`);
      for (const artifact of artifacts) await hooks.verify.promise(artifact, ctx);
      for (const [i, artifact] of artifacts.entries()) artifacts[i] = await hooks.transform.promise(artifact, ctx);
      signal.throwIfAborted();

      manifest = {
        format: MANIFEST_FORMAT,
        id: setId,
        pipeline: pipeline.name,
        source: pipeline.source,
        createdAt: startedAt.toISOString(),
        completedAt: now().toISOString(),
        framework: { name: 'backup-pipeline', version: FRAMEWORK_VERSION, node: process.version },
        host: hostname(),
        artifacts: artifacts.map((a) => ({
          name: a.name,
          kind: a.kind,
          format: a.format,
          compression: a.compression,
          ...(a.encryption ? { encryption: a.encryption } : {}),
          bytes: a.bytes,
          sha256: a.sha256,
          ...(a.plain ? { plain: a.plain } : {}),
          meta: a.meta,
          ...(a.tree ? { tree: { name: a.tree.name, files: a.tree.files, bytes: a.tree.bytes, listSha256: a.tree.listSha256 } } : {}),
        })),
        stages: stages.filter((s) => s.result).map((s) => ({ plugin: s.plugin, hook: s.hook, durationMs: s.durationMs ?? 0, result: s.result! })),
        facts: ctx.facts,
        tools: ctx.tools,
        verified: hooks.verify.taps.length > 0,
      };
      // The manifest is data: validated as readers will read it, and never masked (masking is for display).
      const manifestText = serializeManifest(manifest, { isSecret: (v) => secrets.isSecret(v) });
      const manifestPath = join(setDir, MANIFEST_NAME);
      const manifestDigest = await writeFileAtomic(manifestPath, manifestText);
      log.info({ setId, artifacts: artifacts.length }, `set ${setId} is complete in the work dir`);

      // Every destination reads the one staged file, concurrently; files the core hashed as it wrote them are marked so.
      const sealed = new Set<string>();
      for (const a of artifacts) if (await opened.hashedAsWritten(a)) sealed.add(a.name);
      const staging = config.keepInWorkDir === false;
      const linkOffer = staging ? offerLinks() : undefined;
      await Promise.all(destinations.map((d) => queue.add(() => this.ship(ctx, d, { path: manifestPath, ...manifestDigest, hashedAsWritten: true }, reports, sealed, linkOffer))));
      for (const report of reports) await hooks.shipped.promise(report, ctx);
      const failedShips = reports.filter((r) => !r.ok);
      if (failedShips.length > 0) {
        throw new PipelineError('DESTINATION_FAILED', `shipping failed to ${failedShips.map((r) => `"${r.destination}" (${r.error})`).join(', ')}`, {
          hint: `The set is complete in ${reports.filter((r) => r.ok).map((r) => r.destination).concat('work').join(', ')}. Retention did not run.`,
        });
      }
      if (staging) {
        // Every destination has the set: the work dir only staged it (keepInWorkDir: false).
        await rm(setDir, { recursive: true, force: true });
        await syncDir(config.workDir);
        log.info({ setId }, `set ${setId} left the work dir (keepInWorkDir: false); every destination has it`);
      }
      await hooks.retain.promise(ctx);
      const result = summary();
      await hooks.succeeded.promise(result, ctx);
      return { summary: result, manifest };
    } catch (caught) {
      const error = signal.aborted && !isPipelineError(caught) ? new PipelineError('ABORTED', 'the run was interrupted') : toPipelineError(caught);
      if (signal.aborted && error.code !== 'ABORTED' && options.signal?.aborted) {
        error.details = { ...error.details, aborted: true };
      }
      error.message = secrets.mask(error.message);
      // Only the folder this run made, and only while it holds no manifest: never another run's set.
      if (!manifest && madeSetDir) await rm(setDir, { recursive: true, force: true });
      if (!ctx.dryRun && error.code !== 'LOCKED') {
        await hooks.failed.promise(error, summary(error), ctx).catch(() => {});
      }
      throw error;
    } finally {
      await opened.close();
      await lock?.release();
    }
  }

  /** Uploads every artifact, then the manifest, to one destination. Never throws: reports. */
  private async ship(
    ctx: RunContext,
    d: NamedDestination,
    manifest: PutSource,
    reports: ShipReport[],
    sealed: ReadonlySet<string> = new Set(),
    linkOffer?: (path: string) => PutSource['link'],
  ): Promise<void> {
    const started = Date.now();
    let bytes = 0;
    const trees: TreeShipResult[] = [];
    const totalBytes = ctx.artifacts.reduce((n, a) => n + a.bytes, 0);
    try {
      for (const artifact of ctx.artifacts) {
        // A tree artifact: its files first (the destination's putTree), then its index like any file.
        if (artifact.tree) trees.push(await shipTree(ctx, d, artifact, retrying));
        await retrying(
          () =>
            d.destination.put(ctx.setId, artifact.name, { path: artifact.path, bytes: artifact.bytes, sha256: artifact.sha256, ...(sealed.has(artifact.name) ? { hashedAsWritten: true, link: linkOffer?.(artifact.path) } : {}) }, {
              signal: ctx.signal,
              onBytes: (b) => ctx.progress({ plugin: d.plugin, task: `upload:${d.name}`, bytes: bytes + b, totalBytes, message: artifact.name }),
            }),
          ctx.signal,
        );
        bytes += artifact.bytes;
      }
      await retrying(() => d.destination.put(ctx.setId, MANIFEST_NAME, { ...manifest, link: linkOffer?.(manifest.path) }, { signal: ctx.signal }), ctx.signal);
      reports.push({ destination: d.name, ok: true, files: ctx.artifacts.length + 1, bytes: bytes + manifest.bytes, durationMs: Date.now() - started, ...(trees.length > 0 ? { trees } : {}) });
      ctx.log.info({ destination: d.name, bytes }, `shipped to ${d.name}`);
    } catch (caught) {
      const error = toPipelineError(caught, 'DESTINATION_FAILED');
      const message = ctx.secrets.mask(error.message);
      reports.push({ destination: d.name, ok: false, files: 0, bytes, durationMs: Date.now() - started, error: message });
      ctx.log.error({ destination: d.name, code: error.code }, `shipping to ${d.name} failed: ${message}`);
      // The set there has no manifest, so it is incomplete; remove what was uploaded when possible.
      await d.destination.delete(ctx.setId).catch(() => {});
      if (ctx.signal.aborted) throw caught;
    }
  }

  /** Wraps every tap: stage events, error tagging with plugin and hook, stage timeout. */
  private instrument(
    hooks: PipelineHooks,
    timeoutMs: number,
    stages: StageEvent[],
    setCurrent: (ev: StageEvent | undefined, reject?: (e: Error) => void) => void,
    getCurrent: () => { ev: StageEvent | undefined; reject: ((e: Error) => void) | undefined },
    /** A tap that already did its work on the stream (`ctx.streamArtifact`) is not called again: its result instead. */
    skip: (hookName: HookName, plugin: string, args: unknown[]) => Promise<{ value: unknown } | undefined>,
    onAdvisoryError: (error: PipelineError) => void,
  ): void {
    const instrumentOne = (hookName: HookName, hook: object) => {
      const advisory = ADVISORY_HOOKS.includes(hookName);
      (hook as { intercept(i: object): void }).intercept({
        register: (tap: { name: string; type: 'sync' | 'async' | 'promise'; fn: (...args: unknown[]) => unknown }) => {
          const original = tap.fn;
          const plugin = tap.name;
          const runTap = async (call: () => Promise<unknown>) => {
            // A tap may run inside another's (verifyStream inside produce): the outer one is current again after it.
            const outer = getCurrent();
            const ev: StageEvent = { plugin, hook: hookName, startedAt: Date.now() };
            stages.push(ev);
            hooks.stageStart.call(ev);
            let timer: NodeJS.Timeout | undefined;
            try {
              const result = await new Promise((resolve, reject) => {
                setCurrent(ev, reject);
                timer = setTimeout(() => reject(new PipelineError('STAGE_TIMEOUT', `${plugin} did not finish ${hookName} within ${Math.round(timeoutMs / 60_000)} minute(s)`)), timeoutMs);
                timer.unref();
                call().then(resolve, reject);
              });
              ev.result = 'ok';
              return result;
            } catch (caught) {
              const error = toPipelineError(caught);
              error.plugin ??= plugin;
              error.hook ??= hookName;
              ev.result = 'failed';
              ev.error = error.code;
              if (advisory) {
                onAdvisoryError(error);
                return undefined;
              }
              throw error;
            } finally {
              clearTimeout(timer);
              setCurrent(outer.ev, outer.reject);
              ev.durationMs = Date.now() - ev.startedAt;
              hooks.stageFinish.call(ev);
            }
          };
          const skippable = hookName === 'verify' || hookName === 'transform';
          const served = async (args: unknown[]) => (skippable ? skip(hookName, plugin, args) : undefined);
          if (tap.type === 'promise') {
            tap.fn = async (...args: unknown[]) => {
              const done = await served(args);
              return done ? done.value : runTap(async () => original(...args));
            };
          }
          else if (tap.type === 'sync') {
            tap.fn = (...args: unknown[]) => {
              try {
                return original(...args);
              } catch (caught) {
                const error = toPipelineError(caught);
                error.plugin ??= plugin;
                error.hook ??= hookName;
                if (advisory) return onAdvisoryError(error);
                throw error;
              }
            };
          } else {
            tap.fn = (...args: unknown[]) => {
              const callback = args.pop() as (e: unknown, r?: unknown) => void;
              served(args)
                .then((done) => (done ? done.value : runTap(() => new Promise((res, rej) => original(...args, (e: unknown, r: unknown) => (e ? rej(e) : res(r)))))))
                .then((r) => callback(null, r), callback);
            };
          }
          return tap;
        },
      });
    };
    for (const [hookName, hook] of Object.entries(hooks) as Array<[HookName, PipelineHooks[HookName]]>) {
      if (EVENT_HOOKS.includes(hookName)) continue;
      // A keyed hook: instrument each hook of the map as it is created.
      if (hook instanceof HookMap) (hook as HookMap<object>).intercept({ factory: (_key, created) => (instrumentOne(hookName, created), created) });
      else instrumentOne(hookName, hook);
    }
  }
}
