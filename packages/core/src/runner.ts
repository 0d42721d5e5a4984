/**
 * The runner: builds a run's context, applies the configured plugins to a fresh set of hooks,
 * and drives the lifecycle in the order declared in hooks.ts. It owns concurrency (one p-queue),
 * the lock, the staging folder, the manifest, shipping to destinations, and cleanup.
 */
import { readFileSync } from 'node:fs';
import { mkdir, mkdtemp, rm, stat } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import PQueue from 'p-queue';
import type { Logger } from 'pino';
import { writeFileAtomic, DIR_MODE } from './atomic-file.js';
import type { ConfiguredDestination, ResolvedConfig, ResolvedPipeline } from './config.js';
import type { Artifact, Plan, RunContext, RunSummary, ShipReport, StageEvent } from './context.js';
import { MANIFEST_NAME, type NamedDestination } from './destination.js';
import { PipelineError, isPipelineError, toPipelineError } from './errors.js';
import { exec } from './exec.js';
import { createHooks, EVENT_HOOKS, ADVISORY_HOOKS, type HookName, type PipelineHooks, type TapOnlyHooks } from './hooks.js';
import { LocalFolderDestination } from './local-folder.js';
import { acquireLock } from './lock.js';
import { MANIFEST_FORMAT, makeSetId, type Manifest } from './manifest.js';
import { makePathResolver, tapOnlyHooks, type PluginApi } from './plugin.js';
import type { SecretRegistry } from './secrets.js';

export const FRAMEWORK_VERSION: string = (JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version: string }).version;

export interface RunOptions {
  dryRun?: boolean;
  signal?: AbortSignal;
  /** The clock (tests set it to simulate time). */
  now?: () => Date;
  /**
   * Work with the pipeline's source instead of backing it up: only the `connect` hook runs (so
   * `ctx.pg` holds the pipeline's credentials), then `session(ctx)`, then the usual cleanup.
   * `restore` and `verify --restore-test` use it. Implies nothing is written to the work dir.
   */
  session?: (ctx: RunContext) => Promise<void>;
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

  async run(name: string | undefined, options: RunOptions = {}): Promise<RunResult> {
    const pipeline = this.pipeline(name);
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

    this.instrument(
      hooks,
      timeoutMs,
      stages,
      (ev, reject) => {
        current = ev;
        rejectCurrent = reject;
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
      stage.plugin.apply!(tapOnlyHooks(hooks, stage.plugin.name), stage.options as never, pluginApi(config, log, stage.plugin.name));
    }

    options.observe?.(tapOnlyHooks(hooks, 'observer'));

    // Ids have one-second resolution and must sort in time order: a second run within the same
    // second takes the next free second rather than a differently shaped id.
    let setId = makeSetId(startedAt, pipeline.source);
    for (let bump = 1; await stat(join(config.workDir, setId)).catch(() => undefined); bump++) {
      setId = makeSetId(new Date(startedAt.getTime() + bump * 1000), pipeline.source);
    }
    const setDir = join(config.workDir, setId);
    const tmpDir = await mkdtemp(join(tmpdir(), 'backup-pipeline-'));
    const artifacts: Artifact[] = [];
    const queue = new PQueue({ concurrency: config.concurrency });

    if (options.session) options = { ...options, dryRun: true };
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
      addArtifact: (artifact) => {
        if (artifacts.some((a) => a.name === artifact.name)) {
          throw new PipelineError('ARTIFACT_DUPLICATE', `two artifacts are named ${artifact.name}`, { hint: 'Give the stages distinct output names.' });
        }
        artifacts.push(artifact);
      },
      progress: (event) => hooks.progress.call({ ...event, plugin: event.plugin ?? current?.plugin ?? 'core' }),
      defer: (cleanup) => void deferred.push(cleanup),
      queue,
    };

    // A tap whose promise can never settle empties the event loop: fail loudly instead of exiting 0.
    const onBeforeExit = () => rejectCurrent?.(new PipelineError('STAGE_NEVER_SETTLED', `${current?.plugin ?? 'a plugin'} never finished its ${current?.hook ?? ''} step (its promise can never settle)`));
    process.on('beforeExit', onBeforeExit);

    const reports: ShipReport[] = [];
    let manifest: Manifest | undefined;
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
      if (options.session) {
        await hooks.connect.promise(ctx);
        await options.session(ctx);
        return { summary: summary() };
      }
      if (ctx.dryRun) {
        await hooks.connect.promise(ctx);
        await hooks.preflight.promise(ctx);
        await Promise.all(destinations.map((d) => checkDestination(d, signal)));
        const plan = makePlan(() => current?.plugin);
        for (const d of destinations) plan.add({ plugin: d.plugin, hook: 'ship', description: `ship to "${d.name}": ${d.destination.describe()}` });
        plan.add({ plugin: 'core', hook: 'ship', description: `keep the set in the work dir ${config.workDir}` });
        await hooks.plan.promise(plan, ctx);
        return { summary: summary(), plan };
      }

      await mkdir(config.workDir, { recursive: true, mode: DIR_MODE });
      lock = await acquireLock(join(config.workDir, '.locks', `${pipeline.name}.lock`));
      await mkdir(setDir, { mode: DIR_MODE });
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
        artifacts: artifacts.map(({ path: _path, ...rest }) => rest),
        stages: stages.filter((s) => s.result).map((s) => ({ plugin: s.plugin, hook: s.hook, durationMs: s.durationMs ?? 0, result: s.result! })),
        facts: ctx.facts,
        tools: ctx.tools,
        verified: hooks.verify.taps.length > 0,
      };
      manifest = secrets.maskDeep(manifest);
      const manifestPath = join(setDir, MANIFEST_NAME);
      const manifestDigest = await writeFileAtomic(manifestPath, JSON.stringify(manifest, null, 2) + '\n');
      log.info({ setId, artifacts: artifacts.length }, `set ${setId} is complete in the work dir`);

      await Promise.all(destinations.map((d) => queue.add(() => this.ship(ctx, d, { path: manifestPath, ...manifestDigest }, reports))));
      for (const report of reports) await hooks.shipped.promise(report, ctx);
      const failedShips = reports.filter((r) => !r.ok);
      if (failedShips.length > 0) {
        throw new PipelineError('DESTINATION_FAILED', `shipping failed to ${failedShips.map((r) => `"${r.destination}" (${r.error})`).join(', ')}`, {
          hint: `The set is complete in ${reports.filter((r) => r.ok).map((r) => r.destination).concat('work').join(', ')}. Retention did not run.`,
        });
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
      if (!manifest) await rm(setDir, { recursive: true, force: true });
      if (!ctx.dryRun && error.code !== 'LOCKED') {
        await hooks.failed.promise(error, summary(error), ctx).catch(() => {});
      }
      throw error;
    } finally {
      process.off('beforeExit', onBeforeExit);
      controller.abort();
      for (const cleanup of deferred.reverse()) {
        try {
          await cleanup();
        } catch (error) {
          log.warn({ err: (error as Error).message }, 'cleanup step failed');
        }
      }
      await rm(tmpDir, { recursive: true, force: true });
      await lock?.release();
    }
  }

  /** Uploads every artifact, then the manifest, to one destination. Never throws: reports. */
  private async ship(ctx: RunContext, d: NamedDestination, manifest: { path: string; bytes: number; sha256: string }, reports: ShipReport[]): Promise<void> {
    const started = Date.now();
    let bytes = 0;
    const totalBytes = ctx.artifacts.reduce((n, a) => n + a.bytes, 0);
    try {
      for (const artifact of ctx.artifacts) {
        await retrying(
          () =>
            d.destination.put(ctx.setId, artifact.name, artifact, {
              signal: ctx.signal,
              onBytes: (b) => ctx.progress({ plugin: d.plugin, task: `upload:${d.name}`, bytes: bytes + b, totalBytes, message: artifact.name }),
            }),
          ctx.signal,
        );
        bytes += artifact.bytes;
      }
      await retrying(() => d.destination.put(ctx.setId, MANIFEST_NAME, manifest, { signal: ctx.signal }), ctx.signal);
      reports.push({ destination: d.name, ok: true, files: ctx.artifacts.length + 1, bytes: bytes + manifest.bytes, durationMs: Date.now() - started });
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
    onAdvisoryError: (error: PipelineError) => void,
  ): void {
    for (const [hookName, hook] of Object.entries(hooks) as Array<[HookName, PipelineHooks[HookName]]>) {
      if (EVENT_HOOKS.includes(hookName)) continue;
      const advisory = ADVISORY_HOOKS.includes(hookName);
      (hook as { intercept(i: object): void }).intercept({
        register: (tap: { name: string; type: 'sync' | 'async' | 'promise'; fn: (...args: unknown[]) => unknown }) => {
          const original = tap.fn;
          const plugin = tap.name;
          const runTap = async (call: () => Promise<unknown>) => {
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
              setCurrent(undefined);
              ev.durationMs = Date.now() - ev.startedAt;
              hooks.stageFinish.call(ev);
            }
          };
          if (tap.type === 'promise') tap.fn = (...args: unknown[]) => runTap(async () => original(...args));
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
              runTap(() => new Promise((res, rej) => original(...args, (e: unknown, r: unknown) => (e ? rej(e) : res(r))))).then((r) => callback(null, r), callback);
            };
          }
          return tap;
        },
      });
    }
  }
}
