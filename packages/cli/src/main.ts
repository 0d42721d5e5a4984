/**
 * The `pipeline` command: argument parsing and output only. Everything it does goes through the
 * core's public API, as a community tool would.
 */
import { Command, CommanderError, Option } from 'commander';
import { CLI_PACKAGE } from './builtins.js';
import { EXIT_CODES_HELP, reportError } from './output.js';

export interface GlobalOptions {
  config?: string;
  logLevel: string;
  logFormat?: 'json' | 'pretty';
  json?: boolean;
  quiet?: boolean;
}

type Action = (program: Command, ...args: never[]) => Promise<number>;

/** Commands are loaded only when used, so `--help` stays fast. */
function lazy(load: () => Promise<{ default: Action }>) {
  return async (...args: unknown[]) => {
    const command = args[args.length - 1] as Command;
    const { default: action } = await load();
    command.setOptionValue("__exit", await action(command, ...(args.slice(0, -1) as never[])));
  };
}

export function buildProgram(): Command {
  const program = new Command('pipeline')
    .description('Config-driven, verified, encrypted backups of Mastodon (and any PostgreSQL database).')
    .version(CLI_PACKAGE.version, '-V, --version')
    .option('-c, --config <file>', 'config file (default: pipeline.config.{yaml,yml,json,js,mjs,ts}, .pipelinerc*, package.json#pipeline, searched upwards)')
    .addOption(new Option('--log-level <level>', 'log level').choices(['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent']).default('info'))
    .addOption(new Option('--log-format <format>', 'log format (default: pretty on a TTY, json otherwise)').choices(['json', 'pretty']))
    .option('--json', 'print machine-readable JSON results on stdout')
    .option('-q, --quiet', 'print no summary and no progress, only errors')
    .addHelpText('after', `\n${EXIT_CODES_HELP}`)
    .showHelpAfterError('(run with --help for usage)');

  program
    .command('run')
    .description('run a pipeline: credentials, dump, verify, encrypt, ship, retention')
    .argument('[name]', 'pipeline to run (optional when the config has only one)')
    .option('-n, --dry-run', 'validate, run preflight checks and print the plan; touch no data')
    .addHelpText('after', `\n${EXIT_CODES_HELP}`)
    .action(lazy(() => import('./commands/run.js')));

  program
    .command('validate')
    .description('check the config file and every plugin option; print every problem with its path')
    .action(lazy(() => import('./commands/validate.js')));

  program
    .command('plugins')
    .description('list the plugins (built-in and configured), their options and the hooks they tap')
    .action(lazy(() => import('./commands/plugins.js')));

  return program;
}

export async function main(argv: string[]): Promise<number> {
  const program = buildProgram();
  program.exitOverride();
  for (const command of program.commands) command.exitOverride();
  try {
    await program.parseAsync(argv);
  } catch (error) {
    if (error instanceof CommanderError) {
      if (error.code === 'commander.helpDisplayed' || error.code === 'commander.version' || error.code === 'commander.help') return 0;
      return 2;
    }
    return reportError(error, program.opts<GlobalOptions>());
  }
  const ran = program.commands.find((c) => c.getOptionValue('__exit') !== undefined);
  if (!ran && program.args.length === 0) {
    program.outputHelp();
    return 2;
  }
  return (ran?.getOptionValue('__exit') as number | undefined) ?? 0;
}
