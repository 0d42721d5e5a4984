/**
 * The plugin API. A plugin is a small static object: a name, a zod schema for its options, and
 * `apply` (taps lifecycle hooks) and/or `destination` (a destination type). The options schemas
 * are static, so the core validates every plugin before anything runs and generates the JSON
 * Schema and the config reference from them without running plugin code.
 */
import { homedir } from 'node:os';
import { isAbsolute, resolve } from 'node:path';
import type { Logger } from 'pino';
import { HookMap } from 'tapable';
import type { z } from 'zod';
import type { Destination } from './destination.js';
import type { HookName, PipelineHooks, TapOnlyHooks } from './hooks.js';
import type { ManifestArtifact } from './manifest.js';
import type { RecoveryTargetKind } from './restore-context.js';
import type { SecretRegistry } from './secrets.js';

/** What the core hands a plugin besides its hooks and options. */
export interface PluginApi {
  /** The plugin's name. */
  readonly name: string;
  /** A logger child tagged with the plugin's name; secrets are masked. */
  readonly log: Logger;
  /** The secrets registry: add every secret the plugin reads. */
  readonly secrets: SecretRegistry;
  /** Folder of the config file; relative paths in options are relative to it. */
  readonly configDir: string;
  /** Resolves `~/x` and paths relative to the config file. */
  resolvePath(path: string): string;
}

export interface DestinationType<S extends z.ZodType = z.ZodType> {
  /** Options of one configured destination of this type. */
  options: S;
  create(options: z.output<S>, api: PluginApi): Destination | Promise<Destination>;
  /** Local folders a destination with these options writes to (see `PluginDefinition.writablePaths`). */
  writablePaths?(options: z.output<S>, api: PathApi): string[];
}

/** What a plugin's static declarations get: path resolution only, no I/O. */
export type PathApi = Pick<PluginApi, 'configDir' | 'resolvePath'>;

export interface PluginDefinition<S extends z.ZodType = z.ZodType, D extends z.ZodType = z.ZodType> {
  /** Unique name, used in taps, errors and logs. */
  name: string;
  /** One line for `pipeline plugins` and the docs. */
  description: string;
  /** Options of the plugin as a pipeline stage. */
  options?: S;
  /** Taps lifecycle hooks. Called once per stage that uses the plugin. */
  apply?(hooks: TapOnlyHooks, options: z.output<S>, api: PluginApi): void;
  /** Makes this plugin a destination type. */
  destination?: DestinationType<D>;
  /**
   * The local folders a stage with these options writes to (absolute), declared without running
   * the plugin: `pipeline schedule` lets a hardened service write there (`ReadWritePaths=`).
   * Pure: no I/O. The work dir and the run's private temp dir are the core's; do not list them.
   */
  writablePaths?(options: z.output<S>, api: PathApi): string[];
  /**
   * Options read only by `restore` and `verify` (a secret key file): the restoring host sets them
   * in its config or with `-o key=value`; the backup host never needs them. Shown in the docs.
   */
  restoreOptions?: ReadonlyArray<Extract<keyof z.output<S>, string>>;
  /** The plugin's own error codes and their hints, generated into the config reference. */
  errors?: Readonly<Record<string, string>>;
  /**
   * Artifact formats this plugin's `restore` tap restores into a PostgreSQL data directory
   * (`pipeline restore --data-dir`), keyed by format, with the recovery targets each can stop at
   * (`--to-time`, `--to-lsn`). The core picks sets by it (never by a plugin's name), so declare it
   * statically. Formats not declared here are never given a data dir nor a recovery target.
   */
  dataDirFormats?: Readonly<Record<string, DataDirFormat>>;
}

/** A format restored into a data dir (see `PluginDefinition.dataDirFormats`). */
export interface DataDirFormat {
  /** Recovery targets a restore of this format can stop at (empty: only the backup's own end). */
  recoveryTargets: readonly RecoveryTargetKind[];
  /**
   * The first point a restore of this artifact reaches (the end of the backup), from its manifest
   * entry; a recovery target before it cannot be reached from this set. Pure: no I/O. Undefined
   * when the entry does not say (the core then uses the manifest's `completedAt` for times, and
   * skips the set for LSN targets).
   */
  consistentAt?(artifact: ManifestArtifact): { time?: string; lsn?: string } | undefined;
}

const BRAND = Symbol.for('backup-pipeline.plugin');

export type Plugin<S extends z.ZodType = z.ZodType, D extends z.ZodType = z.ZodType> = PluginDefinition<S, D> & { readonly [BRAND]: true };

export function definePlugin<S extends z.ZodType = z.ZodType, D extends z.ZodType = z.ZodType>(definition: PluginDefinition<S, D>): Plugin<S, D> {
  return Object.freeze(Object.assign({}, definition, { [BRAND]: true as const }));
}

/** Shape check (works across copies of the core): used when loading a module by name. */
export function isPlugin(value: unknown): value is Plugin {
  if (typeof value !== 'object' || value === null) return false;
  const p = value as Partial<PluginDefinition> & Record<symbol, unknown>;
  const isSchema = (s: unknown) => typeof s === 'object' && s !== null && typeof (s as z.ZodType).safeParse === 'function';
  return (
    p[BRAND] === true &&
    typeof p.name === 'string' &&
    p.name.length > 0 &&
    (p.options === undefined || isSchema(p.options)) &&
    (p.apply === undefined || typeof p.apply === 'function') &&
    (p.destination === undefined || (isSchema(p.destination.options) && typeof p.destination.create === 'function')) &&
    (p.writablePaths === undefined || typeof p.writablePaths === 'function') &&
    (p.restoreOptions === undefined || Array.isArray(p.restoreOptions)) &&
    (p.errors === undefined || (typeof p.errors === 'object' && p.errors !== null)) &&
    (p.dataDirFormats === undefined || (typeof p.dataDirFormats === 'object' && p.dataDirFormats !== null)) &&
    (p.apply !== undefined || p.destination !== undefined)
  );
}

/** A tap-only view of the hooks for one plugin: taps are always named after the plugin. */
export function tapOnlyHooks(hooks: PipelineHooks, pluginName: string): TapOnlyHooks {
  const named = (options: string | { name: string }) => (typeof options === 'string' ? { name: pluginName } : { ...options, name: pluginName });
  const tapView = (hook: object) => {
    const h = hook as Record<'tap' | 'tapAsync' | 'tapPromise', (o: unknown, fn: unknown) => void>;
    return Object.freeze({
      tap: (options: string | { name: string }, fn: unknown) => h.tap.call(hook, named(options), fn),
      tapAsync: (options: string | { name: string }, fn: unknown) => h.tapAsync.call(hook, named(options), fn),
      tapPromise: (options: string | { name: string }, fn: unknown) => h.tapPromise.call(hook, named(options), fn),
    });
  };
  const view: Record<string, unknown> = {};
  for (const [name, hook] of Object.entries(hooks) as Array<[HookName, PipelineHooks[HookName]]>) {
    if (hook instanceof HookMap) {
      const map = hook as HookMap<object>;
      view[name] = Object.freeze({ for: (key: string) => tapView(map.for(key)) });
    } else {
      view[name] = tapView(hook);
    }
  }
  return Object.freeze(view) as unknown as TapOnlyHooks;
}

/** Resolves a config path: `~` and `~/…` from `home` (this process's by default), relative ones from `configDir`. */
export function makePathResolver(configDir: string, home: string = homedir()): (path: string) => string {
  return (path: string) => {
    if (path === '~') return home;
    if (path.startsWith('~/')) return resolve(home, path.slice(2));
    return isAbsolute(path) ? path : resolve(configDir, path);
  };
}
