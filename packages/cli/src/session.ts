/** Loading the config and a logger the same way for every command. */
import { createDestination, createLogger, loadConfig, PipelineError, Runner, SecretRegistry, workDestination, type Logger, type NamedDestination, type ResolvedConfig } from '@backup-pipeline/core';
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

/** The work dir and the configured destinations (of one pipeline, or all), opened. */
export async function openDestinations(session: Session, pipeline?: string, only?: string): Promise<NamedDestination[]> {
  const { config, log } = session;
  const names = pipeline ? session.runner.pipeline(pipeline).destinations : Object.keys(config.destinations);
  if (only && only !== 'work' && !(only in config.destinations)) {
    throw new PipelineError('DESTINATION_UNKNOWN', `destination "${only}" is not declared in ${config.file}`, {
      hint: `Destinations: work, ${Object.keys(config.destinations).join(', ')}.`,
    });
  }
  const out: NamedDestination[] = [];
  if (!only || only === 'work') out.push(workDestination(config));
  for (const name of names) {
    if (only && only !== name) continue;
    out.push(await createDestination(config, config.destinations[name]!, log));
  }
  return out;
}
