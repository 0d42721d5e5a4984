/**
 * The `pipeline` command: argument parsing and output only. Everything it does goes through the
 * core's public API, as a community tool would.
 */
import { Command, CommanderError, Option } from 'commander';
import { CLI_PACKAGE } from './builtins.js';
import { collect } from './stage-options.js';
import { EXIT_CODES_HELP } from './help-text.js';
import { captureWarnings } from './warnings.js';

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
    .option('-c, --config <file>', 'config file (default: pipeline.config.{yaml,yml,json,js,mjs,ts}, .pipelinerc* or package.json#pipeline in this folder or a parent, else in $XDG_CONFIG_HOME/backup-pipeline/ (~/.config), else in /etc/backup-pipeline/)')
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

  program
    .command('list')
    .description('list the backup sets of every destination (and the work dir): complete or not, size, encryption')
    .argument('[pipeline]', 'pipeline whose destinations to list (default: all)')
    .option('-d, --destination <name>', 'only this destination ("work" is the work dir)')
    .action(lazy(() => import('./commands/list.js')));

  program
    .command('restore')
    .description('fetch a set, check every sha256, decrypt, and pg_restore it into a new database')
    .argument('[set]', 'set id, or "latest" (with --to-time/--to-lsn: leave it out to pick the newest set that ended before the target)')
    .option('--to <database>', 'database to restore into (created when missing; refused when not empty unless --clean); give --to, --files-to, --globals or --data-dir')
    .option('--data-dir <dir>', "restore the set's physical backup into this PostgreSQL data directory (missing or empty; never a running server's)")
    .option('--to-time <time>', "point-in-time recovery: replay archived WAL up to this time, with its offset ('2026-12-01 14:03:00+00'); needs --data-dir")
    .option('--to-lsn <lsn>', 'recovery up to this WAL position (X/Y); needs --data-dir')
    .option('--delta', 'the data dir is not empty (a stopped cluster): reuse and overwrite what is there')
    .option('--from <destination>', 'destination to fetch from (default: the work dir, then each destination in order)')
    .option('-p, --pipeline <name>', 'pipeline whose credentials and destinations to use')
    .option('-j, --jobs <n>', 'parallel restore jobs: pg_restore -j (default 2), or pgBackRest --process-max with --data-dir (default: every core)', (v) => Number.parseInt(v, 10))
    .option('--clean', 'the database has tables: restore into a fresh one, check it, then swap names (the old one is kept as NAME_before_SET)')
    .option('--globals', 'also restore roles and tablespaces from the globals artifact')
    .option('--files-to <dir>', "also unpack the set's other artifacts (the .env.production secrets, media) into DIR; existing files are never overwritten")
    .option('-o, --option <key=value>', 'restore-time option of the stages (e.g. identityFile=~/age.key, gpg.gnupgHome=DIR); repeatable', collect)
    .option('--gnupg-home <dir>', 'short for -o gnupgHome=DIR: GNUPGHOME holding the private key for decryption')
    .option('--passphrase-file <file>', 'short for -o passphraseFile=FILE: passphrase file for symmetrically encrypted sets')
    .action(lazy(() => import('./commands/restore.js')));

  program
    .command('verify')
    .description('re-verify a stored set: checksums, archive contents, optionally a full restore drill')
    .argument('<set>', 'set id, or "latest"')
    .option('--from <destination>', 'destination to fetch from (default: the work dir, then each destination in order)')
    .option('-p, --pipeline <name>', 'pipeline whose credentials and destinations to use')
    .option('--restore-test', 'restore it (a drill) and compare row counts, then remove what was restored')
    .option('--full', 'read back every file of a tree artifact (media) by content, not a sample: short for -o verifyAll=true')
    .option('--restore-into <where>', "where --restore-test restores a database: scratch-cluster (a throwaway PostgreSQL cluster of the dump's major; no CREATEDB, no load on the server), server (a scratch database on the source server; needs CREATEDB), or auto (default: the cluster when the server binaries are installed); short for -o restoreInto=WHERE")
    .option('-o, --option <key=value>', 'restore-time option of the stages (e.g. identityFile=~/age.key); repeatable', collect)
    .option('--gnupg-home <dir>', 'short for -o gnupgHome=DIR: GNUPGHOME holding the private key for decryption')
    .option('--passphrase-file <file>', 'short for -o passphraseFile=FILE: passphrase file for symmetrically encrypted sets')
    .action(lazy(() => import('./commands/verify.js')));

  program
    .command('prune')
    .description('apply the retention policy of a pipeline on its own, with the same rules as in a run')
    .argument('[pipeline]', 'pipeline whose retention stage to apply')
    .option('-n, --dry-run', 'list what would be deleted and why; delete nothing')
    .option('--delete-damaged <set...>', 'also delete these damaged sets (retention never deletes a damaged set by itself)')
    .action(lazy(() => import('./commands/prune.js')));

  program
    .command('demo')
    .description('back up a throwaway Mastodon-shaped database end to end, restore it and compare (touches nothing else)')
    .option('--dir <dir>', 'folder for the demo config and backups', './demo-backups')
    .option('--keep', 'keep the throwaway PostgreSQL running for exploring (prints how to reach it)')
    .option('--scale <scale>', 'data size: tiny, small or medium', 'small')
    .action(lazy(() => import('./commands/demo.js')));

  program
    .command('init')
    .description("write a commented config for this host from Mastodon's .env.production (no password copied)")
    .option('--mastodon-dir <dir>', 'Mastodon folder holding .env.production', '~/live')
    .option('-o, --output <file>', 'config file to write', 'pipeline.config.yaml')
    .option('--force', 'overwrite an existing file')
    .option('--physical', 'also a pipeline of physical backups with pgBackRest (WAL archiving, point-in-time recovery); prints the PostgreSQL settings to apply')
    .option('--pg-data-dir <dir>', 'with --physical: the PostgreSQL data directory', '/var/lib/postgresql/15/main')
    .option('--repo-path <dir>', 'with --physical: the pgBackRest repository folder', '/var/lib/pgbackrest')
    .option('--stanza <name>', 'with --physical: the pgBackRest stanza', 'mastodon')
    .action(lazy(() => import('./commands/init.js')));

  program
    .command('schedule')
    .description('print (or install) a systemd service and timer, or a cron line, that runs a pipeline')
    .argument('<kind>', 'systemd or cron')
    .argument('[pipeline]', 'pipeline to run')
    .option('--on-calendar <spec>', 'systemd OnCalendar= (or a cron schedule for cron)', 'daily')
    .option('--user <user>', 'Unix user that runs the backup (default: the current user)')
    .option('--install', 'write the units to /etc/systemd/system (or the line to /etc/cron.d) instead of printing them')
    .action(lazy(() => import('./commands/schedule.js')));

  return program;
}

export async function main(argv: string[]): Promise<number> {
  captureWarnings();
  const program = buildProgram();
  program.exitOverride();
  for (const command of program.commands) command.exitOverride();
  try {
    await program.parseAsync(argv);
  } catch (error) {
    if (error instanceof CommanderError) {
      if (error.code === 'commander.helpDisplayed' || error.code === 'commander.version') return 0;
      // No command given: commander has printed the help on stderr; nothing ran (as npm and git: 1).
      if (error.code === 'commander.help') return 1;
      return 2;
    }
    // Loaded only on failure: output.js pulls in the core, which `--help` does not need.
    const { reportError } = await import('./output.js');
    return reportError(error, program.opts<GlobalOptions>());
  }
  const ran = program.commands.find((c) => c.getOptionValue('__exit') !== undefined);
  if (!ran && program.args.length === 0) {
    program.outputHelp({ error: true });
    return 1;
  }
  return (ran?.getOptionValue('__exit') as number | undefined) ?? 0;
}
