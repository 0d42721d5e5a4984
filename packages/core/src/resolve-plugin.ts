/**
 * Plugin resolution: built-in short names (`pg-dump` → `@backup-pipeline/plugin-pg-dump`), npm
 * package names (looked up from the config file's folder, then the working directory, then the
 * CLI's own install), and relative or absolute paths to a module.
 */
import { createRequire } from 'node:module';
import { isAbsolute, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
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

export async function resolvePlugin(spec: string, searchDirs: readonly string[], configDir: string): Promise<ResolvedPlugin> {
  let file: string | undefined;
  if (spec.startsWith('.') || isAbsolute(spec)) {
    file = isAbsolute(spec) ? spec : resolve(configDir, spec);
  } else {
    outer: for (const dir of searchDirs) {
      const require = createRequire(join(dir, 'noop.js'));
      for (const name of candidateNames(spec)) {
        try {
          file = require.resolve(name);
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
      details: { searched: searchDirs },
    });
  }
  let module: Record<string, unknown>;
  try {
    module = (await import(pathToFileURL(file).href)) as Record<string, unknown>;
  } catch (error) {
    const notFound = (error as NodeJS.ErrnoException).code === 'ERR_MODULE_NOT_FOUND' && !spec.includes('node_modules');
    throw new PipelineError(notFound ? 'PLUGIN_NOT_FOUND' : 'PLUGIN_INVALID', `plugin "${spec}" failed to load from ${file}: ${(error as Error).message}`, {
      cause: error,
    });
  }
  const candidate = module.default ?? module.plugin;
  if (!isPlugin(candidate)) {
    throw new PipelineError('PLUGIN_INVALID', `"${spec}" (${file}) is not a backup-pipeline plugin: its default export was not made with definePlugin()`);
  }
  return { plugin: candidate, file };
}
