/** Loading the config and a logger the same way for every command. */
import { createDestination, createLogger, defaultLogFormat, loadConfig, PipelineError, Runner, SecretRegistry, workDestination, type Logger, type NamedDestination, type ResolvedConfig } from '@backup-pipeline/core';
import type { Command } from 'commander';
import { CLI_DIR } from './builtins.js';
import type { GlobalOptions } from './main.js';
import { output } from './output.js';
import { routeWarnings } from './warnings.js';

export interface Session {
  options: GlobalOptions;
  config: ResolvedConfig;
  log: Logger;
  runner: Runner;
}

export function globalOptions(command: Command): GlobalOptions {
  return command.optsWithGlobals<GlobalOptions>();
}

/**
 * A logger whose lines go through the output layer (masked, status line cleared and redrawn).
 * JSON lines, `--quiet` and `--json` mean no status line: progress goes out as log records.
 */
export async function openLogger(options: GlobalOptions, secrets: SecretRegistry = new SecretRegistry()): Promise<Logger> {
  output.useSecrets(secrets);
  const format = options.logFormat ?? defaultLogFormat();
  if (format === 'json' || options.quiet || options.json) output.disableStatusLine();
  const log = await createLogger({
    level: (options.quiet && options.logLevel === 'info' ? 'warn' : options.logLevel) as never,
    format,
    secrets,
    write: (line) => output.stderr(line),
  });
  output.useNotices((text) => log.warn(text));
  routeWarnings(log);
  return log;
}

export async function openSession(command: Command): Promise<Session> {
  const options = globalOptions(command);
  const config = await loadConfig({ file: options.config, pluginSearchDirs: [CLI_DIR] });
  const log = await openLogger(options, config.secrets);
  log.info({ config: config.file, found: config.found }, `config ${config.file}${config.found === 'option' ? '' : ` (found: ${config.found})`}`);
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
