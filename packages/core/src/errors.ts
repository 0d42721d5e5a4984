/**
 * The one error type of backup-pipeline. Every failure a user can see carries a stable `code`,
 * a one-line `message` saying what went wrong and where, and a `hint` saying how to fix it.
 * The runner tags errors thrown inside a hook tap with the plugin and hook that raised them.
 */

/** Process exit codes, documented in the README and in `pipeline --help`. */
export const EXIT = Object.freeze({
  ok: 0,
  failed: 1,
  usage: 2,
  locked: 75,
  sigint: 130,
  sigterm: 143,
});

interface CodeDefinition {
  /** Exit code of the `pipeline` command when this error ends it. */
  exit: number;
  /** Default hint, used when the thrower gives none. */
  hint: string;
}

/** The registry of the core's error codes. Plugins may use their own codes (with their own hints). */
export const ERROR_CODES = {
  CONFIG_NOT_FOUND: { exit: EXIT.usage, hint: 'Create pipeline.config.yaml (see `pipeline init`) or pass --config FILE.' },
  CONFIG_INVALID: { exit: EXIT.usage, hint: 'Fix each listed problem; `pipeline validate` checks the file without running anything.' },
  CONFIG_UNREADABLE: { exit: EXIT.usage, hint: 'Check the file exists, is readable and is valid YAML, JSON or JavaScript.' },
  USAGE: { exit: EXIT.usage, hint: 'Run `pipeline --help` for the commands and their options.' },
  PLUGIN_NOT_FOUND: { exit: EXIT.usage, hint: 'Install it where the CLI is installed (npm install --prefix /opt/backup-pipeline NAME: one prefix for the CLI and every plugin), or fix the name.' },
  PLUGIN_INVALID: { exit: EXIT.usage, hint: 'A plugin module must default-export definePlugin({ name, options, apply }).' },
  PLUGIN_FAILED: { exit: EXIT.failed, hint: 'See the message above; the plugin that threw is named in it.' },
  STAGE_TIMEOUT: { exit: EXIT.failed, hint: 'Raise `stageTimeoutMinutes` in the pipeline, or find why the stage hangs.' },
  STAGE_NEVER_SETTLED: { exit: EXIT.failed, hint: 'A plugin returned a promise that can never settle; report it to the plugin author.' },
  LOCKED: { exit: EXIT.locked, hint: 'Another run of this pipeline is in progress; wait for it, or remove the lock file if its process is gone.' },
  ABORTED: { exit: EXIT.failed, hint: 'The run was interrupted; nothing partial was kept. Run it again.' },
  EXEC_FAILED: { exit: EXIT.failed, hint: 'The command failed; its last lines of stderr are shown above.' },
  EXEC_NOT_FOUND: { exit: EXIT.failed, hint: 'Install the missing program (see the README for the Debian packages).' },
  NO_SPACE: { exit: EXIT.failed, hint: 'Free space on the file system holding the named path (or point workDir / the destination at a bigger one), then run again. Nothing partial was kept.' },
  ACCESS_DENIED: { exit: EXIT.failed, hint: 'The named path is not writable by this user (permissions, or a read-only file system); fix its owner or mode, then run again.' },
  NO_ARTIFACTS: { exit: EXIT.failed, hint: 'Add a stage that produces a backup (pg-dump, rake, command or files).' },
  DESTINATION_UNKNOWN: { exit: EXIT.usage, hint: 'Declare the destination under `destinations:` or fix its name.' },
  DESTINATION_FAILED: { exit: EXIT.failed, hint: 'Check the destination is reachable and writable; other destinations were still shipped.' },
  CHECKSUM_MISMATCH: { exit: EXIT.failed, hint: 'The stored file differs from what was written; do not trust this set, use an older one.' },
  SET_NOT_FOUND: { exit: EXIT.failed, hint: 'Run `pipeline list` to see the sets each destination holds.' },
  SET_INCOMPLETE: { exit: EXIT.failed, hint: 'This set has no valid manifest (an interrupted run); use a complete set.' },
  MANIFEST_INVALID: { exit: EXIT.failed, hint: 'The manifest is corrupt; the set cannot be trusted. Use another set.' },
  NAME_INVALID: { exit: EXIT.failed, hint: 'Names of backup files are one path segment of plain characters; a name from a manifest or listing that is not was tampered with.' },
  SETS_DAMAGED: { exit: EXIT.failed, hint: 'Retention keeps damaged sets for a person to inspect: check the named files, then delete the set by hand or with `pipeline prune --delete-damaged SET`.' },
  RESTORE_NEEDS_PLUGIN: { exit: EXIT.failed, hint: 'The set is not damaged: add the stage that wrote it (its encryption, its format) to the pipeline, with its restore-time options.' },
  RESTORE_TARGET_REFUSED: { exit: EXIT.usage, hint: 'Restore into a database of its own, never postgres, template0 or template1.' },
  RESTORE_TARGET_NOT_EMPTY: { exit: EXIT.failed, hint: 'Restore into a new database name, or pass --clean to restore into a fresh database and swap it in.' },
  RESTORE_TARGET_UNAVAILABLE: { exit: EXIT.failed, hint: 'Create the database first (createdb -T template0) or grant CREATEDB to the restoring role.' },
  RESTORE_SWAP_FAILED: { exit: EXIT.failed, hint: 'The live database is unchanged: stop what is connected to it, then run the restore again.' },
  RESTORE_MISMATCH: { exit: EXIT.failed, hint: 'The restored row counts differ from the dump\'s snapshot; the database this restore created was dropped.' },
  RESTORE_FAILED: { exit: EXIT.failed, hint: 'The restore stopped; a database it created was dropped. See the message for the tool that failed.' },
  SET_NOT_RESTORABLE: { exit: EXIT.failed, hint: 'The set does not hold what was asked for; `pipeline list --json` shows its artifacts.' },
  SCRATCH_CLUSTER_FAILED: { exit: EXIT.failed, hint: 'The throwaway PostgreSQL cluster of a drill could not start; the message has the server\'s own words. Nothing of it was left behind.' },
  ENV_FILE_INVALID: { exit: EXIT.usage, hint: 'Fix the named line of the env file.' },
} as const satisfies Record<string, CodeDefinition>;

export type CoreErrorCode = keyof typeof ERROR_CODES;

export interface PipelineErrorOptions {
  hint?: string;
  cause?: unknown;
  exitCode?: number;
  plugin?: string;
  hook?: string;
  /** Extra facts for --json output and logs. Never put secrets here. */
  details?: Record<string, unknown>;
}

const BRAND = Symbol.for('backup-pipeline.PipelineError');

export class PipelineError extends Error {
  override name = 'PipelineError';
  readonly code: string;
  hint: string;
  exitCode: number;
  plugin?: string;
  hook?: string;
  details?: Record<string, unknown>;

  constructor(code: CoreErrorCode | (string & {}), message: string, options: PipelineErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    const known = (ERROR_CODES as Record<string, CodeDefinition>)[code];
    this.code = code;
    this.hint = options.hint ?? known?.hint ?? '';
    this.exitCode = options.exitCode ?? known?.exit ?? EXIT.failed;
    this.plugin = options.plugin;
    this.hook = options.hook;
    this.details = options.details;
    Object.defineProperty(this, BRAND, { value: true });
  }

  /** `[plugin → hook] CODE: message` — the one line printed for a failed run. */
  describe(): string {
    const where = this.plugin ? `[${this.plugin}${this.hook ? ` → ${this.hook}` : ''}] ` : '';
    return `${where}${this.code}: ${this.message}`;
  }
}

/** Works across copies of this package (a community plugin may bundle its own). */
export function isPipelineError(error: unknown): error is PipelineError {
  return typeof error === 'object' && error !== null && (error as Record<symbol, unknown>)[BRAND] === true;
}

/** Wraps anything thrown into a PipelineError, keeping PipelineErrors as they are. */
export function toPipelineError(error: unknown, code: string = 'PLUGIN_FAILED'): PipelineError {
  if (isPipelineError(error)) return error;
  const message = error instanceof Error ? error.message : String(error);
  return new PipelineError(code, message, { cause: error });
}

/**
 * The error maker of a plugin's own codes, from the same code → hint record it declares as
 * definePlugin's `errors` (which the config reference documents): every error it makes carries its
 * code's hint, so a hint is written once, beside its code. `const ageError = declaredErrors(AGE_ERRORS)`.
 */
export function declaredErrors<C extends string>(hints: Readonly<Record<C, string>>) {
  return (code: C, message: string, options: Omit<PipelineErrorOptions, 'hint'> = {}): PipelineError => new PipelineError(code, message, { hint: hints[code], ...options });
}
