/**
 * Plugin resolution: built-in short names (`pg-dump` → `@backup-pipeline/plugin-pg-dump`), npm
 * package names, and relative or absolute paths to a module.
 *
 * The one supported layout is a single prefix holding the CLI, the built-in plugins and any other
 * plugin together (`npm install --prefix /opt/backup-pipeline @backup-pipeline/cli NAME`): there a
 * plugin's `@backup-pipeline/core` peer is the core the CLI runs. So package names are looked up
 * first from where this core is installed, then from the caller's folders (the config file's
 * folder, the working directory, the CLI's own install); a package found anywhere must load this
 * same core, or it is refused with the command that installs it in the right place.
 */
import { realpathSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, isAbsolute, join, resolve, sep } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { PipelineError } from './errors.js';
import { isPlugin, type Plugin } from './plugin.js';

export interface ResolvedPlugin {
  plugin: Plugin;
  /** The module file it was loaded from. */
  file: string;
}

/** Package names tried for a spec, in order. */
export function candidateNames(spec: string): string[] {
  if (spec.startsWith('@') || spec.includes('/')) return [spec];
  return [`@backup-pipeline/plugin-${spec}`, spec, `backup-pipeline-plugin-${spec}`];
}

/** The folder of this core's package (`…/node_modules/@backup-pipeline/core`, or packages/core in a checkout). */
const CORE_DIR = dirname(dirname(fileURLToPath(import.meta.url)));
const CORE_PACKAGE = realpathSync(join(CORE_DIR, 'package.json'));

/** Where plugins go: the prefix this core is installed in (the folder holding its node_modules). */
export function pluginInstallPrefix(): string | undefined {
  const marker = `${sep}node_modules${sep}`;
  const at = CORE_DIR.indexOf(marker);
  return at > 0 ? CORE_DIR.slice(0, at) : undefined;
}

function installHint(name: string): string {
  const prefix = pluginInstallPrefix();
  return prefix
    ? `Install it where the CLI is installed, so it shares the CLI's @backup-pipeline/core: sudo npm install --prefix ${prefix} ${name}`
    : `Install it where the CLI is installed (one prefix for the CLI and every plugin, e.g. npm install --prefix /opt/backup-pipeline ${name}), or fix the name.`;
}

/** The `@backup-pipeline/core` a plugin module would import, or undefined when it cannot import one. */
function coreOf(file: string): string | undefined {
  try {
    return realpathSync(createRequire(file).resolve('@backup-pipeline/core/package.json'));
  } catch {
    return undefined;
  }
}

export async function resolvePlugin(spec: string, searchDirs: readonly string[], configDir: string): Promise<ResolvedPlugin> {
  let file: string | undefined;
  let byName: string | undefined;
  if (spec.startsWith('.') || isAbsolute(spec)) {
    file = isAbsolute(spec) ? spec : resolve(configDir, spec);
  } else {
    outer: for (const dir of [...new Set([CORE_DIR, ...searchDirs])]) {
      const require = createRequire(join(dir, 'noop.js'));
      for (const name of candidateNames(spec)) {
        try {
          file = require.resolve(name);
          byName = name;
          break outer;
        } catch (error) {
          const code = (error as NodeJS.ErrnoException).code;
          if (code !== 'MODULE_NOT_FOUND') {
            throw new PipelineError('PLUGIN_INVALID', `plugin "${spec}" (${name}) cannot be loaded: ${(error as Error).message}`, {
              hint: 'A plugin package must export its entry under "exports" with a "default" condition.',
            });
          }
        }
      }
    }
  }
  if (!file) {
    throw new PipelineError('PLUGIN_NOT_FOUND', `plugin "${spec}" is not installed (looked for ${candidateNames(spec).join(', ')})`, {
      hint: installHint(candidateNames(spec).at(-1)!),
      details: { searched: [CORE_DIR, ...searchDirs] },
    });
  }
  const core = byName ? coreOf(file) : undefined;
  if (byName && core && core !== CORE_PACKAGE) {
    throw new PipelineError('PLUGIN_INVALID', `plugin "${spec}" (${file}) would load another copy of @backup-pipeline/core (${dirname(core)}) than the pipeline command runs (${dirname(CORE_PACKAGE)}). ${installHint(byName)}`, {
      hint: installHint(byName),
    });
  }
  let module: Record<string, unknown>;
  try {
    module = (await import(pathToFileURL(file).href)) as Record<string, unknown>;
  } catch (error) {
    const notFound = (error as NodeJS.ErrnoException).code === 'ERR_MODULE_NOT_FOUND' && !spec.includes('node_modules');
    const noCore = notFound && (error as Error).message.includes("'@backup-pipeline/core'");
    throw new PipelineError(notFound ? 'PLUGIN_NOT_FOUND' : 'PLUGIN_INVALID', `plugin "${spec}" failed to load from ${file}: ${(error as Error).message}`, {
      cause: error,
      ...(noCore ? { hint: `A plugin module imports @backup-pipeline/core from the folders above it: make it a package and ${installHint(byName ?? 'PACKAGE').replace(/^Install/, 'install')}` } : {}),
    });
  }
  const candidate = module.default ?? module.plugin;
  if (!isPlugin(candidate)) {
    throw new PipelineError('PLUGIN_INVALID', `"${spec}" (${file}) is not a backup-pipeline plugin: its default export was not made with definePlugin()`);
  }
  return { plugin: candidate, file };
}
