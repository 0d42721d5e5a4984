/** The built-in plugins: the `@backup-pipeline/plugin-*` packages the CLI depends on. */
import { readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';

/** Folder of the CLI package: built-in plugins resolve from here. */
export const CLI_DIR = dirname(dirname(fileURLToPath(import.meta.url)));

export const CLI_PACKAGE = JSON.parse(readFileSync(`${CLI_DIR}/package.json`, 'utf8')) as { version: string; dependencies: Record<string, string> };

export const BUILTIN_PLUGINS: readonly string[] = Object.keys(CLI_PACKAGE.dependencies)
  .filter((name) => name.startsWith('@backup-pipeline/plugin-'))
  .map((name) => name.slice('@backup-pipeline/plugin-'.length))
  .sort();
