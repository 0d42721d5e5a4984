/** Loading the config and a logger the same way for every command. */
import { createLogger, loadConfig, Runner, SecretRegistry, type Logger, type ResolvedConfig } from '@backup-pipeline/core';
import type { Command } from 'commander';
import { CLI_DIR } from './builtins.js';
import type { GlobalOptions } from './main.js';

export interface Session {
  options: GlobalOptions;
  config: ResolvedConfig;
  log: Logger;
  runner: Runner;
}

export function globalOptions(command: Command): GlobalOptions {
  return command.optsWithGlobals<GlobalOptions>();
}

export async function openLogger(options: GlobalOptions, secrets: SecretRegistry = new SecretRegistry()): Promise<Logger> {
  return createLogger({ level: (options.quiet && options.logLevel === 'info' ? 'warn' : options.logLevel) as never, format: options.logFormat, secrets });
}

export async function openSession(command: Command): Promise<Session> {
  const options = globalOptions(command);
  const config = await loadConfig({ file: options.config, pluginSearchDirs: [CLI_DIR] });
  const log = await openLogger(options, config.secrets);
  return { options, config, log, runner: new Runner(config, log) };
}
