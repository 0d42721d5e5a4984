/**
 * Configuration: found with cosmiconfig, `${ENV}` and `${file:PATH}` references filled in, the
 * whole file validated with zod — including every plugin's own options — before anything runs.
 * All problems are reported at once, each with its exact path.
 */
import { closeSync, openSync, readSync } from 'node:fs';
import { stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { dirname, join, resolve, sep } from 'node:path';
import { cosmiconfig, defaultLoaders, type Loader } from 'cosmiconfig';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { isPipelineError, PipelineError } from './errors.js';
import { makePathResolver, type Plugin } from './plugin.js';
import { resolvePlugin } from './resolve-plugin.js';
import { SecretRegistry } from './secrets.js';

const Name = z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_-]*$/, 'use letters, digits, "-" and "_" (starting with a letter or digit)');

const PluginRef = z
  .object({ use: z.string().min(1).describe('Plugin: a built-in short name, an npm package name, or a path to a module.') })
  .catchall(z.unknown());

export const PipelineSchema = z
  .object({
    description: z.string().optional().describe('What this pipeline is for.'),
    source: Name.optional().describe('Name of the source in set ids (default: the pipeline name).'),
    stages: z.array(PluginRef).min(1).describe('Stage plugins in order; each entry is `use:` plus the plugin\'s options.'),
    destinations: z.array(Name).default([]).describe('Names of destinations (declared under `destinations:`) the set is shipped to, concurrently.'),
    stageTimeoutMinutes: z.number().positive().default(720).describe('A stage still running after this long fails the run with STAGE_TIMEOUT.'),
  })
  .strict();

export const ConfigSchema = z
  .object({
    $schema: z.string().optional(),
    workDir: z.string().default('./backups').describe('Staging folder; completed sets are kept there too (retention applies) unless `keepInWorkDir` is false. Relative to the config file.'),
    keepInWorkDir: z
      .boolean()
      .default(true)
      .describe(
        'Whether a completed set stays in the work dir as one more copy. false: the work dir only stages (a small disk on the database host); a set leaves it once every destination has it, and stays when shipping failed. A local destination on the same file system then takes the staged file by hard link instead of a copy. Every pipeline needs a destination. Leave it true for pipelines with a `media` stage: the work dir\'s previous tree is what lets a run hash and copy only the files that changed.',
      ),
    timezone: z
      .string()
      .default('UTC')
      .refine((tz) => {
        try {
          new Intl.DateTimeFormat('en', { timeZone: tz });
          return true;
        } catch {
          return false;
        }
      }, 'not a known IANA time zone')
      .describe('Time zone for retention calendar buckets (IANA name, e.g. Europe/Berlin).'),
    concurrency: z.number().int().min(1).max(32).default(4).describe('How many uploads and other queued tasks run at once.'),
    destinations: z.record(Name, PluginRef).default({}).describe('Named destinations: `use:` a destination plugin plus its options.'),
    pipelines: z
      .record(Name, PipelineSchema)
      .refine((p) => Object.keys(p).length > 0, 'declare at least one pipeline')
      .describe('Named pipelines; `pipeline run NAME` runs one.'),
  })
  .strict();

export type ConfigInput = z.input<typeof ConfigSchema>;
type Config = z.output<typeof ConfigSchema>;

export interface ConfiguredStage {
  plugin: Plugin;
  options: unknown;
  /** Config path of this stage, for messages: `pipelines.nightly.stages[2]`. */
  path: string;
}

export interface ConfiguredDestination {
  name: string;
  plugin: Plugin;
  options: unknown;
}

export interface ResolvedPipeline {
  name: string;
  source: string;
  stages: ConfiguredStage[];
  destinations: string[];
  stageTimeoutMinutes: number;
}

export interface ResolvedConfig {
  file: string;
  dir: string;
  workDir: string;
  /** false: the work dir only stages (see the schema); absent means true. */
  keepInWorkDir?: boolean;
  timezone: string;
  concurrency: number;
  pipelines: Record<string, ResolvedPipeline>;
  destinations: Record<string, ConfiguredDestination>;
  /** Values read through `${file:…}` references or secret-looking variables. */
  secrets: SecretRegistry;
  raw: Config;
  /** How the file was chosen (set by `loadConfig`): `--config`, the working directory or a parent, the user's or the system's config folder. */
  found?: ConfigSource;
}

export interface Problem {
  path: string;
  message: string;
}

/** `pipelines.nightly.stages[3].recipients` */
export function formatPath(path: ReadonlyArray<PropertyKey>): string {
  let out = '';
  for (const seg of path) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else out += out ? `.${String(seg)}` : String(seg);
  }
  return out || '(root)';
}

function zodProblems(error: z.ZodError, prefix: ReadonlyArray<PropertyKey> = []): Problem[] {
  return error.issues.map((issue) => {
    // A bad record key (a pipeline or destination name): say what is wrong with the name itself.
    const nested = issue.code === 'invalid_key' ? (issue as { issues?: Array<{ message: string }> }).issues?.[0]?.message : undefined;
    return { path: formatPath([...prefix, ...issue.path]), message: nested ? `invalid name: ${nested}` : issue.message };
  });
}

const SECRET_NAME = /PASS|SECRET|TOKEN|KEY|CREDENTIAL/i;

/** A `${file:…}` value is a password or a key: more than this is refused (and /dev/zero cannot fill the heap). */
export const FILE_REFERENCE_MAX_BYTES = 64 * 1024;

function readReference(file: string): string {
  const fd = openSync(file, 'r');
  try {
    const buffer = Buffer.alloc(FILE_REFERENCE_MAX_BYTES + 1);
    let length = 0;
    while (length < buffer.length) {
      const n = readSync(fd, buffer, length, buffer.length - length, null);
      if (n === 0) break;
      length += n;
    }
    if (length > FILE_REFERENCE_MAX_BYTES) throw new Error(`larger than ${FILE_REFERENCE_MAX_BYTES} bytes`);
    return buffer.subarray(0, length).toString('utf8');
  } finally {
    closeSync(fd);
  }
}

/** Fills `${NAME}` from the environment and `${file:PATH}` from a file (trailing newline dropped). `$${` escapes. */
export function interpolate(value: unknown, env: NodeJS.ProcessEnv, dir: string, secrets: SecretRegistry, problems: Problem[], path: PropertyKey[] = []): unknown {
  if (typeof value === 'string') {
    return value.replace(/\$?\$\{([^}]*)\}/g, (match, ref: string) => {
      if (match.startsWith('$$')) return match.slice(1);
      if (ref.startsWith('file:')) {
        const file = resolve(dir, ref.slice(5).replace(/^~(?=\/)/, env.HOME ?? '~'));
        try {
          const text = readReference(file).replace(/\r?\n$/, '');
          secrets.add(text);
          return text;
        } catch (error) {
          problems.push({ path: formatPath(path), message: `cannot read ${file}: ${(error as NodeJS.ErrnoException).code ?? (error as Error).message}` });
          return '';
        }
      }
      const [name, fallback] = ref.split(':-', 2) as [string, string | undefined];
      const v = env[name];
      if (v === undefined || v === '') {
        if (fallback !== undefined) return fallback;
        problems.push({ path: formatPath(path), message: `environment variable ${name} is not set` });
        return '';
      }
      if (SECRET_NAME.test(name)) secrets.add(v);
      return v;
    });
  }
  if (Array.isArray(value)) return value.map((v, i) => interpolate(v, env, dir, secrets, problems, [...path, i]));
  if (value && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, interpolate(v, env, dir, secrets, problems, [...path, k])]));
  }
  return value;
}

export const CONFIG_SEARCH_PLACES = [
  'pipeline.config.yaml',
  'pipeline.config.yml',
  'pipeline.config.json',
  'pipeline.config.js',
  'pipeline.config.mjs',
  'pipeline.config.ts',
  '.pipelinerc',
  '.pipelinerc.yaml',
  '.pipelinerc.yml',
  '.pipelinerc.json',
  'package.json',
];

/** A config file larger than this is refused before it is parsed (a config is a few KiB). */
export const CONFIG_MAX_BYTES = 1024 * 1024;
/**
 * YAML aliases a config may resolve (the `yaml` library counts expanded nodes): enough for a few
 * `<<: *defaults`, far too few for a "billion laughs" bomb that would exhaust the heap.
 */
export const CONFIG_MAX_ALIASES = 100;
/** Overrides the system-wide config folder (default /etc/backup-pipeline), for tests and packagers. */
export const SYSTEM_CONFIG_DIR_ENV = 'BACKUP_PIPELINE_SYSTEM_CONFIG_DIR';

/** How the config file was chosen. */
export type ConfigSource = 'option' | 'cwd' | 'user' | 'system';

export interface LoadConfigOptions {
  /** An explicit config file (`--config`). */
  file?: string;
  cwd?: string;
  env?: NodeJS.ProcessEnv;
  /** Extra folders to resolve plugins from (the CLI passes its own, where built-ins live). */
  pluginSearchDirs?: string[];
}

function tooLarge(file: string, bytes: number): PipelineError {
  return new PipelineError('CONFIG_INVALID', `${file} is ${bytes} bytes; a config file may be at most ${CONFIG_MAX_BYTES} bytes (1 MiB)`, {
    hint: 'A config is a few KiB: check this is the file you meant.',
    details: { file, problems: [{ path: '(root)', message: `file larger than ${CONFIG_MAX_BYTES} bytes` }] },
  });
}

/** Wraps a text loader: refuses files over the size limit before parsing them. */
const bounded =
  (load: Loader): Loader =>
  (file, content) => {
    const bytes = Buffer.byteLength(content);
    if (bytes > CONFIG_MAX_BYTES) throw tooLarge(file, bytes);
    return load(file, content);
  };

/**
 * YAML through the `yaml` library with alias expansion bounded. (cosmiconfig's own YAML loader,
 * js-yaml, shares aliased nodes while parsing but has no limit, so a 400-byte alias bomb expanded
 * later, while `${…}` references are filled in, until the heap ran out.)
 */
const loadYaml: Loader = (file, content) => {
  try {
    return parseYaml(content, { maxAliasCount: CONFIG_MAX_ALIASES, merge: true, prettyErrors: true });
  } catch (error) {
    if (error instanceof ReferenceError && /alias/i.test(error.message)) {
      throw new PipelineError('CONFIG_INVALID', `${file} expands YAML aliases (*name) more than ${CONFIG_MAX_ALIASES} times; refusing to load it`, {
        hint: 'A config needs few aliases: write the repeated parts out, or use fewer nested aliases.',
        details: { file, problems: [{ path: '(root)', message: `more than ${CONFIG_MAX_ALIASES} YAML alias expansions` }] },
      });
    }
    (error as Error).message = `YAML Error in ${file}:\n${(error as Error).message}`;
    throw error;
  }
};

const LOADERS = {
  '.yaml': bounded(loadYaml),
  '.yml': bounded(loadYaml),
  noExt: bounded(loadYaml),
  '.json': bounded(defaultLoaders['.json']),
};

/** The per-user and system-wide folders searched after the working directory and its parents. */
export function configDirs(env: NodeJS.ProcessEnv = process.env): Array<{ dir: string; found: ConfigSource }> {
  const xdg = env.XDG_CONFIG_HOME && env.XDG_CONFIG_HOME.startsWith('/') ? env.XDG_CONFIG_HOME : join(env.HOME || homedir(), '.config');
  return [
    { dir: join(xdg, 'backup-pipeline'), found: 'user' },
    { dir: env[SYSTEM_CONFIG_DIR_ENV] || '/etc/backup-pipeline', found: 'system' },
  ];
}

/**
 * Finds and reads the config file: `--config`, else the working directory and its parents (up to
 * the folder holding a package.json), else `$XDG_CONFIG_HOME/backup-pipeline/` (default
 * `~/.config/backup-pipeline/`), else `/etc/backup-pipeline/`.
 */
export async function findConfig(options: LoadConfigOptions = {}): Promise<{ file: string; content: unknown; found: ConfigSource }> {
  const cwd = options.cwd ?? process.cwd();
  const explorer = (searchStrategy: 'project' | 'none', searchPlaces = CONFIG_SEARCH_PLACES) => cosmiconfig('pipeline', { searchPlaces, searchStrategy, cache: false, loaders: LOADERS });
  const dirs = configDirs(options.env ?? process.env);
  let result;
  let found: ConfigSource = options.file ? 'option' : 'cwd';
  try {
    if (options.file) {
      const file = resolve(cwd, options.file);
      const info = await stat(file);
      if (info.isFile() && info.size > CONFIG_MAX_BYTES) throw tooLarge(file, info.size);
      result = await explorer('none').load(file);
    } else {
      result = await explorer('project').search(cwd);
      for (const place of dirs) {
        if (result && !result.isEmpty) break;
        found = place.found;
        // package.json is a project's file: not looked for in the configuration folders.
        result = await explorer('none', CONFIG_SEARCH_PLACES.filter((p) => p !== 'package.json')).search(place.dir);
      }
    }
  } catch (error) {
    if (isPipelineError(error)) throw error;
    const e = error as NodeJS.ErrnoException;
    if (e.code === 'ENOENT') throw new PipelineError('CONFIG_NOT_FOUND', `config file ${options.file} does not exist`);
    throw new PipelineError('CONFIG_UNREADABLE', `cannot read config ${options.file ?? ''}: ${e.message.split('\n')[0]}`, { cause: error });
  }
  if (!result || result.isEmpty) {
    if (options.file) throw new PipelineError('CONFIG_INVALID', `config file ${options.file} is empty`);
    throw new PipelineError(
      'CONFIG_NOT_FOUND',
      `no config found from ${cwd} upwards (${CONFIG_SEARCH_PLACES.slice(0, 6).join(', ')}, .pipelinerc*, package.json#pipeline), nor in ${dirs.map((d) => d.dir + '/').join(' or ')}`,
    );
  }
  return { file: result.filepath, content: result.config, found };
}

/** Whether two absolute paths are the same folder or one lies inside the other. */
function overlaps(a: string, b: string): boolean {
  const within = (x: string, y: string) => x === y || x.startsWith(y.endsWith(sep) ? y : y + sep);
  return within(a, b) || within(b, a);
}

/** Validates config content and every plugin's options. Throws CONFIG_INVALID listing all problems. */
export async function resolveConfig(file: string, content: unknown, options: LoadConfigOptions = {}): Promise<ResolvedConfig> {
  const dir = dirname(file);
  const secrets = new SecretRegistry();
  const problems: Problem[] = [];
  const interpolated = interpolate(content, options.env ?? process.env, dir, secrets, problems);
  const parsed = ConfigSchema.safeParse(interpolated);
  if (!parsed.success) problems.push(...zodProblems(parsed.error));

  // Validate plugins even when the top level has problems, so every problem shows at once.
  const raw = (interpolated ?? {}) as Partial<Record<'pipelines' | 'destinations', Record<string, unknown>>> & { keepInWorkDir?: unknown };
  const searchDirs = [dir, options.cwd ?? process.cwd(), ...(options.pluginSearchDirs ?? [])];
  const seen = new Map<string, Plugin>();
  const load = async (use: unknown, path: PropertyKey[]): Promise<Plugin | undefined> => {
    if (typeof use !== 'string' || !use) return undefined;
    try {
      const { plugin, file: pluginFile } = await resolvePlugin(use, searchDirs, dir);
      const other = seen.get(plugin.name);
      if (other && other !== plugin) {
        problems.push({ path: formatPath([...path, 'use']), message: `plugin name "${plugin.name}" (${pluginFile}) is already taken by another plugin module` });
      }
      seen.set(plugin.name, plugin);
      return plugin;
    } catch (error) {
      problems.push({ path: formatPath([...path, 'use']), message: (error as Error).message });
      return undefined;
    }
  };
  const validate = (schema: z.ZodType | undefined, entry: Record<string, unknown>, path: PropertyKey[]): unknown => {
    const { use: _use, ...rest } = entry;
    if (!schema) {
      for (const key of Object.keys(rest)) problems.push({ path: formatPath([...path, key]), message: 'this plugin takes no options' });
      return {};
    }
    const result = schema.safeParse(rest);
    if (!result.success) {
      problems.push(...zodProblems(result.error, path));
      return undefined;
    }
    return result.data;
  };

  const destinations: Record<string, ConfiguredDestination> = {};
  for (const [name, entry] of Object.entries(raw.destinations ?? {})) {
    if (!entry || typeof entry !== 'object') continue;
    const path = ['destinations', name];
    const plugin = await load((entry as Record<string, unknown>).use, path);
    if (!plugin) continue;
    if (!plugin.destination) {
      problems.push({ path: formatPath([...path, 'use']), message: `plugin "${plugin.name}" is not a destination type` });
      continue;
    }
    const opts = validate(plugin.destination.options, entry as Record<string, unknown>, path);
    if (opts !== undefined) destinations[name] = { name, plugin, options: opts };
  }

  const pipelines: Record<string, ResolvedPipeline> = {};
  for (const [name, p] of Object.entries(raw.pipelines ?? {})) {
    if (!p || typeof p !== 'object') continue;
    const pipe = p as Record<string, unknown>;
    const stages: ConfiguredStage[] = [];
    const stageList = Array.isArray(pipe.stages) ? pipe.stages : [];
    for (const [i, entry] of stageList.entries()) {
      if (!entry || typeof entry !== 'object') continue;
      const path = ['pipelines', name, 'stages', i];
      const plugin = await load((entry as Record<string, unknown>).use, path);
      if (!plugin) continue;
      if (!plugin.apply) {
        problems.push({ path: formatPath([...path, 'use']), message: `plugin "${plugin.name}" is a destination type, not a stage; declare it under destinations:` });
        continue;
      }
      const opts = validate(plugin.options, entry as Record<string, unknown>, path);
      if (opts !== undefined) stages.push({ plugin, options: opts, path: formatPath(path) });
    }
    const destNames = Array.isArray(pipe.destinations) ? (pipe.destinations as unknown[]) : [];
    destNames.forEach((d, i) => {
      if (typeof d === 'string' && !(raw.destinations && d in raw.destinations)) {
        problems.push({ path: formatPath(['pipelines', name, 'destinations', i]), message: `destination "${d}" is not declared under destinations:` });
      }
    });
    if (raw.keepInWorkDir === false && destNames.length === 0) {
      problems.push({ path: formatPath(['pipelines', name, 'destinations']), message: 'keepInWorkDir is false, so a pipeline without destinations would keep its sets nowhere: name at least one destination' });
    }
    if (parsed.success) {
      const pp = parsed.data.pipelines[name]!;
      pipelines[name] = { name, source: pp.source ?? name, stages, destinations: pp.destinations, stageTimeoutMinutes: pp.stageTimeoutMinutes };
    }
  }

  if (problems.length > 0 || !parsed.success) {
    throw configProblems(file, problems);
  }
  const config = parsed.data;
  const resolvePath = makePathResolver(dir, options.env?.HOME);
  const workDir = resolvePath(config.workDir);
  if (config.keepInWorkDir === false) {
    // A staging work dir removes each set once shipped: a destination writing into it (or holding it)
    // would lose its copy with it.
    const api = { configDir: dir, resolvePath };
    for (const d of Object.values(destinations)) {
      for (const path of d.plugin.destination?.writablePaths?.(d.options as never, api) ?? []) {
        const p = resolve(path);
        if (overlaps(p, workDir)) {
          problems.push({ path: formatPath(['destinations', d.name]), message: `writes to ${p}, which overlaps workDir ${workDir}; with keepInWorkDir: false a set is removed from the work dir once shipped, so a destination there would lose it: use another folder` });
        }
      }
    }
    if (problems.length > 0) throw configProblems(file, problems);
  }
  return {
    file,
    dir,
    workDir,
    keepInWorkDir: config.keepInWorkDir,
    timezone: config.timezone,
    concurrency: config.concurrency,
    pipelines,
    destinations,
    secrets,
    raw: config,
  };
}

export function configProblems(file: string, problems: Problem[]): PipelineError {
  const lines = problems.map((p) => `  ${p.path}: ${p.message}`);
  return new PipelineError('CONFIG_INVALID', `${file} has ${problems.length} problem${problems.length === 1 ? '' : 's'}:\n${lines.join('\n')}`, {
    details: { file, problems },
  });
}

export async function loadConfig(options: LoadConfigOptions = {}): Promise<ResolvedConfig> {
  const { file, content, found } = await findConfig(options);
  return { ...(await resolveConfig(file, content, options)), found };
}
