/**
 * The `pgbackrest` stage: physical backups and WAL archiving driven through the `pgbackrest`
 * binary (never reimplemented).
 *
 *   preflight  pgbackrest version, the stanza exists (or stanza-create with createStanza), the
 *              server archives its WAL with pgbackrest archive-push and the archiver is not
 *              failing (pg_stat_archiver), then `pgbackrest check` (real runs)
 *   produce    `pgbackrest backup --type=…`, then `info --output=json` read bigint-safe; the set
 *              gets `pgbackrest-backup.json` (format `pgbackrest`, kind `physical`)
 *   verify     `pgbackrest verify`, then the restore drill (drill.ts)
 *   retain     expires the backups no kept set needs (retention.ts)
 *
 * Restore side (restore and point in time through the declared `restore` hook): restore.ts.
 */
import { join } from 'node:path';
import { definePlugin, findPgBinary, isPipelineError, PipelineError, psql, quoteLiteral, writeFileAtomic, type PluginApi, type RunContext, type TapOnlyHooks } from '@backup-pipeline/core';
import { backupTypeFor } from './backup-type.js';
import { preparePgbackrest, repositoryText, RETENTION_FULL_NEVER, serverSource, type Pgbackrest } from './command.js';
import { runDrill } from './drill.js';
import { parseInfo, STANZA_STATUS, type InfoStanza } from './info.js';
import { optionsSchema, WEEKDAYS, type PgbackrestOptions } from './options.js';
import { buildRecord, parseRecord, PGBACKREST_FORMAT, PHYSICAL_KIND, RECORD_NAME, type PhysicalBackupRecord } from './record.js';
import { expireUnreferenced } from './retention.js';
import { dataDirFormats, tapRestore } from './restore.js';
import { archiveFailing, archiverState, MASTODON_CORE_TABLES, rowCounts, type ArchiverState } from './server.js';

export { optionsSchema };
export * from './command.js';
export * from './info.js';
export * from './record.js';
export { archiveFailing, archiverState, MASTODON_CORE_TABLES, rowCounts, type ArchiverState } from './server.js';
export { backupTypeFor } from './backup-type.js';

export const ERRORS = {
  PGBACKREST_STANZA_MISSING: 'Run the `pgbackrest … stanza-create` command printed in the message as the PostgreSQL user, or set `createStanza: true`.',
  PGBACKREST_ARCHIVING_OFF: 'Run the `ALTER SYSTEM` lines printed in the message as a superuser, then restart PostgreSQL (archive_mode and wal_level take effect only after a restart).',
  PGBACKREST_ARCHIVE_FAILING: "Read the server log for archive_command's error (a full or unwritable repository, a wrong stanza), fix it, and watch pg_stat_archiver.last_archived_time move: WAL piles up in pg_wal until then.",
  PGBACKREST_ARCHIVE_LAG: 'WAL is being written but not archived; check the archiver (pg_stat_archiver) and the repository.',
  PGBACKREST_CHECK_FAILED: 'Run the printed `pgbackrest … check` by hand and fix what it says.',
  PGBACKREST_LOCKED: 'Another pgBackRest backup or expire of this stanza is running; wait for it (or find a stuck one with `pgbackrest info`).',
  PGBACKREST_BACKUP_FAILED: 'Read the message (pgBackRest\'s own error); nothing was added to the set. The next backup resumes or cleans the partial one.',
  PGBACKREST_VERIFY_FAILED: 'pgbackrest verify found invalid files in the repository: run `pgbackrest verify --verbose` and take a new full backup.',
  PGBACKREST_DRILL_FAILED: 'The backup was made but a copy restored from it did not start or did not answer as expected; read the message, and do not rely on this backup.',
  PGBACKREST_INFO_UNREADABLE: 'Run `pgbackrest info --output=json` by hand.',
  PGBACKREST_RECORD_INVALID: 'The set is damaged; use another set.',
  PGBACKREST_CIPHER_PASS_MISSING: 'Create repoCipherPassFile before the first backup and keep a copy away from the repository.',
  PGBACKREST_CONFIG_INVALID: 'Fix the stage options named in the message.',
  PGBACKREST_EXPIRE_FAILED: 'The backup succeeded; run `pipeline prune` later, or `pgbackrest expire --set=LABEL` by hand.',
} as const;

const DEFAULT_CONFIG = '/etc/pgbackrest/pgbackrest.conf';

/** The exact archive_command to set for these options (or undefined when it cannot hold the repository without a secret). */
export function archiveCommandFor(options: PgbackrestOptions, resolvePath: (p: string) => string): string | undefined {
  if (options.configFile) {
    const file = resolvePath(options.configFile);
    return `pgbackrest ${file === DEFAULT_CONFIG ? '' : `--config=${file} `}--stanza=${options.stanza} archive-push %p`;
  }
  if (options.repository?.type !== 'posix' || options.repoCipherPassFile) return undefined;
  const lock = options.lockPath ? ` --lock-path=${resolvePath(options.lockPath)}` : '';
  return `pgbackrest --stanza=${options.stanza} --repo1-path=${resolvePath(options.repository.path)} --pg1-path=${resolvePath(options.dataDir!)}${lock} archive-push %p`;
}

/** Whether the server's archive_command pushes to this stanza with pgbackrest. */
export function archiveCommandMatches(command: string, stanza: string): boolean {
  return /(^|[/\s])pgbackrest(\s|$)/.test(command) && /\barchive-push\b/.test(command) && new RegExp(`--stanza[= ]${stanza.replace(/[.]/g, '\\.')}(\\s|$)`).test(command);
}

function archivingProblems(s: ArchiverState, options: PgbackrestOptions, resolvePath: (p: string) => string): { problems: string[]; lines: string[]; restart: boolean } {
  const problems: string[] = [];
  const lines: string[] = [];
  let restart = false;
  if (s.walLevel === 'minimal') {
    problems.push(`wal_level is ${s.walLevel}`);
    lines.push("ALTER SYSTEM SET wal_level = 'replica';");
    restart = true;
  }
  if (s.archiveMode !== 'on' && s.archiveMode !== 'always') {
    problems.push(`archive_mode is ${s.archiveMode}`);
    lines.push("ALTER SYSTEM SET archive_mode = 'on';");
    restart = true;
  }
  if (!archiveCommandMatches(s.archiveCommand, options.stanza)) {
    problems.push(`archive_command is ${s.archiveCommand ? `'${s.archiveCommand}'` : 'empty'}, not pgbackrest archive-push for stanza ${options.stanza}`);
    const wanted = archiveCommandFor(options, resolvePath);
    lines.push(
      wanted
        ? `ALTER SYSTEM SET archive_command = ${quoteLiteral(wanted)};`
        : `ALTER SYSTEM SET archive_command = 'pgbackrest --stanza=${options.stanza} archive-push %p';  -- with the repository (and its key) in ${DEFAULT_CONFIG}, readable by the postgres user`,
    );
  }
  return { problems, lines, restart };
}

function pgbackrestFacts(info: InfoStanza | undefined, s: ArchiverState | undefined, now: Date): Record<string, unknown> {
  const facts: Record<string, unknown> = {};
  if (s) {
    facts.archivedCount = s.archivedCount;
    facts.archiveFailedCount = s.failedCount;
    facts.archiveFailing = archiveFailing(s) ? 1 : 0;
    if (s.lastArchivedTime !== undefined) facts.archiveLagSeconds = Math.max(0, Math.round(s.now - s.lastArchivedTime));
    if (s.lastArchivedWal) facts.lastArchivedWal = s.lastArchivedWal;
    if (s.lastFailedWal) facts.lastFailedWal = s.lastFailedWal;
  }
  if (info) {
    const good = info.backup.filter((b) => !b.error);
    const last = good[good.length - 1];
    facts.backups = good.length;
    facts.repositoryBytes = info.backup.reduce((n, b) => n + (b.info?.repository?.delta ?? 0), 0);
    if (last) {
      facts.lastBackupLabel = last.label;
      facts.lastBackupType = last.type;
      facts.lastBackupTimestampSeconds = last.timestamp.stop;
      facts.lastBackupAgeSeconds = Math.max(0, Math.round(now.getTime() / 1000 - last.timestamp.stop));
    }
    const archive = info.archive[info.archive.length - 1];
    if (archive?.max) facts.walMax = archive.max;
    if (archive?.min) facts.walMin = archive.min;
  }
  return facts;
}

/**
 * pgBackRest's own error line (`ERROR: [057]: unable to execute query …`) from a failed command's
 * stderr. A multi-line error (libpq's words, a HINT) pushes it out of the last lines an exec error
 * quotes, and it is the line that says what went wrong.
 */
export function pgbackrestErrorLine(error: unknown): string | undefined {
  const stderr = (error as { details?: { stderr?: unknown } } | undefined)?.details?.stderr;
  return typeof stderr === 'string' ? stderr.split('\n').find((l) => /ERROR: \[\d{3}\]:/.test(l))?.trim() : undefined;
}

/** The problems `pgbackrest verify --output=text` reports (empty when every stanza is `status: ok`). */
export function verifyProblems(text: string): string[] {
  if (!/^\s*status: error/m.test(text)) return [];
  return text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => /status: (invalid|error)|invalid: \d+|missing: \d+|checksum|size invalid/.test(l) && !/^status: error$/.test(l));
}

export default definePlugin({
  name: 'pgbackrest',
  description: 'Physical backups, WAL archiving and point-in-time recovery driven through pgBackRest.',
  options: optionsSchema,
  errors: ERRORS,
  // Restores into a data dir, to a time or an LSN (restore.ts: the stop time rounded up to the second).
  dataDirFormats,
  apply(hooks, options, api) {
    tapRestore(hooks, options, api);
    tapBackup(hooks, options, api);
  },
});

function tapBackup(hooks: TapOnlyHooks, options: PgbackrestOptions, api: PluginApi): void {
  const resolvePath = api.resolvePath;
  let prepared: { tmpDir: string; cmd: Promise<Pgbackrest> } | undefined;
  const command = (ctx: RunContext) => {
    if (prepared?.tmpDir !== ctx.tmpDir) prepared = { tmpDir: ctx.tmpDir, cmd: preparePgbackrest(ctx, options, api) };
    return prepared.cmd;
  };
  let psqlPath: string | undefined;
  const sqlOptions = async (ctx: RunContext) => ({ psqlPath: (psqlPath ??= (await findPgBinary('psql', { binDir: options.binDir ? resolvePath(options.binDir) : undefined })).path), signal: ctx.signal, secrets: ctx.secrets });
  let version = '';

  const info = async (ctx: RunContext, cmd: Pgbackrest): Promise<InfoStanza> => {
    const { stdout } = await cmd.run(['--output=json', 'info']);
    return parseInfo(stdout, options.stanza);
  };
  const wrapLock = (error: unknown, code: keyof typeof ERRORS, what: string, cmd: Pgbackrest, args: string[]): never => {
    if (isPipelineError(error) && error.code === 'ABORTED') throw error;
    const text = (error as Error).message ?? String(error);
    if (/unable to acquire lock|ERROR: \[050\]/.test(text)) {
      throw new PipelineError('PGBACKREST_LOCKED', `another pgBackRest process holds the lock of stanza ${options.stanza}: ${text.split('\n').find((l) => /lock/.test(l))?.trim() ?? text}`, { hint: ERRORS.PGBACKREST_LOCKED, cause: error });
    }
    const cause = pgbackrestErrorLine(error);
    const said = cause && !text.includes(cause) ? `${cause} (${text})` : text;
    // [082]: the WAL segment the command waits for was not archived within archive-timeout.
    const hint = /ERROR: \[082\]/.test(`${cause ?? ''} ${text}`)
      ? `The server's archiver did not push the WAL segment in time (archive-timeout ${options.archiveTimeout ?? 60} s): if pg_stat_archiver shows it catching up (a large change makes much WAL), raise archiveTimeout; if it shows failures, fix archive_command. (${cmd.display(args)})`
      : `${ERRORS[code]} (${cmd.display(args)})`;
    throw new PipelineError(code, `${what} failed: ${said}`, { hint, cause: error });
  };
  // A generated config holds it already; an existing one is overridden on the command line.
  const archiveTimeout = (cmd: Pgbackrest) => (!cmd.generated && options.archiveTimeout !== undefined ? [`--archive-timeout=${options.archiveTimeout}`] : []);

  // The command an admin runs once (as the repository's owner). A generated config lives only for
  // the run, so its repository is spelled out (possible for a posix repository without a key).
  const stanzaCreateCommand = () => {
    const push = archiveCommandFor(options, resolvePath);
    return push ? `sudo -u ${options.runAs === 'root' ? 'postgres' : options.runAs} ${push.replace(/ archive-push %p$/, ' stanza-create')}` : undefined;
  };

  hooks.preflight.tapPromise(api.name, async (ctx) => {
    const { stdout } = await ctx.exec('pgbackrest', ['version'], { label: 'pgbackrest version' });
    version = stdout.trim().replace(/^pgBackRest\s+/, '');
    ctx.tools.pgbackrest = version;
    const cmd = await command(ctx);

    // 1. The stanza exists.
    let stanzaInfo = await info(ctx, cmd);
    let created = false;
    if (stanzaInfo.status.code === STANZA_STATUS.missingStanzaPath || stanzaInfo.status.code === STANZA_STATUS.missingStanzaData) {
      if (options.createStanza && !ctx.dryRun) {
        await cmd.run(['stanza-create']).catch((error: unknown) => wrapLock(error, 'PGBACKREST_CHECK_FAILED', 'pgbackrest stanza-create', cmd, ['stanza-create']));
        ctx.log.info({ stanza: options.stanza }, `created stanza ${options.stanza} in ${repositoryText(cmd.repository)}`);
        stanzaInfo = await info(ctx, cmd);
        created = true;
      } else if (!options.createStanza) {
        const run = stanzaCreateCommand();
        throw new PipelineError('PGBACKREST_STANZA_MISSING', `stanza ${options.stanza} does not exist in ${repositoryText(cmd.repository)} (${stanzaInfo.status.message})`, {
          hint: run ? `Create it once: ${run}   (or set createStanza: true)` : 'Set createStanza: true, or run `pgbackrest --stanza=… stanza-create` with the repository settings in /etc/pgbackrest/pgbackrest.conf.',
          details: { stanza: options.stanza, command: run },
        });
      }
    }

    // 2. The server archives its WAL through pgbackrest, and the archiver works.
    const source = serverSource(options, ctx.pg, resolvePath, 'postgres');
    const state = await archiverState(source, await sqlOptions(ctx));
    ctx.facts.pgbackrest = pgbackrestFacts(stanzaInfo, state, new Date());
    const { problems, lines, restart } = archivingProblems(state, options, resolvePath);
    if (problems.length > 0) {
      throw new PipelineError('PGBACKREST_ARCHIVING_OFF', `the server does not archive its WAL with pgbackrest: ${problems.join('; ')}`, {
        hint: `As a superuser run:\n  ${lines.join('\n  ')}\nthen ${restart ? 'restart PostgreSQL (sudo systemctl restart postgresql): archive_mode and wal_level change only at a restart' : "reload it (SELECT pg_reload_conf();)"}.`,
        details: { sql: lines, restart },
      });
    }
    if (!created && archiveFailing(state)) {
      throw new PipelineError(
        'PGBACKREST_ARCHIVE_FAILING',
        `archive_command is failing: ${state.failedCount} failed attempt(s), the last for ${state.lastFailedWal ?? '?'} at ${state.lastFailedTime ? new Date(state.lastFailedTime * 1000).toISOString() : '?'}; last success ${state.lastArchivedWal ? `${state.lastArchivedWal} at ${new Date(state.lastArchivedTime! * 1000).toISOString()}` : 'never'}`,
        { hint: ERRORS.PGBACKREST_ARCHIVE_FAILING },
      );
    }
    if (options.maxArchiveLagMinutes !== undefined && state.lastArchivedTime !== undefined && state.currentWal && state.lastArchivedWal && state.currentWal.slice(8) > state.lastArchivedWal.slice(8)) {
      const lag = (state.now - state.lastArchivedTime) / 60;
      // One segment being filled is normal; more than one behind and old means the archiver is stuck.
      const behind = parseInt(state.currentWal.slice(8), 16) - parseInt(state.lastArchivedWal.slice(8), 16);
      if (behind > 1 && lag > options.maxArchiveLagMinutes) {
        throw new PipelineError('PGBACKREST_ARCHIVE_LAG', `the last WAL segment was archived ${lag.toFixed(1)} minutes ago (${state.lastArchivedWal}; the server writes ${state.currentWal})`, { hint: ERRORS.PGBACKREST_ARCHIVE_LAG });
      }
    }

    // 3. pgBackRest's own end-to-end check (it switches WAL and waits for it in the repository).
    if (!ctx.dryRun) {
      const check = [...archiveTimeout(cmd), 'check'];
      await cmd.run(check).catch((error: unknown) => wrapLock(error, 'PGBACKREST_CHECK_FAILED', 'pgbackrest check', cmd, check));
    }
  });

  hooks.plan.tapPromise(api.name, async (plan, ctx) => {
    const cmd = await command(ctx);
    const type = backupTypeFor(options.type, ctx.startedAt, ctx.timezone);
    plan.add({ plugin: api.name, hook: 'preflight', description: `pgbackrest check of stanza ${options.stanza}`, command: cmd.display(['check']) });
    plan.add({ plugin: api.name, hook: 'produce', description: `${type} physical backup of stanza ${options.stanza} into ${repositoryText(cmd.repository)}, recorded as ${RECORD_NAME}`, command: cmd.display([`--type=${type}`, 'backup']) });
    plan.add({ plugin: api.name, hook: 'verify', description: `pgbackrest verify${options.drill.enabled ? ', then a restore drill into a private data dir on a free port' : ''}` });
    if (options.expire) plan.add({ plugin: api.name, hook: 'retain', description: 'expire the pgBackRest backups no kept set needs (after the retention stage)' });
  });

  hooks.produce.tapPromise(api.name, async (ctx) => {
    const cmd = await command(ctx);
    const type = backupTypeFor(options.type, ctx.startedAt, ctx.timezone);
    const before = new Set((await info(ctx, cmd)).backup.map((b) => b.label));
    // With an existing config, the options set here win over it (a generated one holds them already).
    // pgBackRest's backup expires by its own retention at the end: never (the pipeline decides).
    const own = cmd.generated ? [] : [`--repo1-retention-full=${RETENTION_FULL_NEVER}`, `--compress-type=${options.compression}`, ...(options.processMax !== undefined ? [`--process-max=${options.processMax}`] : []), ...(options.compressionLevel !== undefined ? [`--compress-level=${options.compressionLevel}`] : []), ...archiveTimeout(cmd)];
    const args = [`--type=${type}`, ...own, 'backup'];
    ctx.log.info({ stanza: options.stanza, type }, `pgbackrest ${type} backup of stanza ${options.stanza}`);
    ctx.progress({ task: 'pgbackrest backup', message: `${type} backup of ${options.stanza}` });
    await cmd.run(args, { writes: cmd.repository.type === 'posix' ? cmd.repository.path : undefined }).catch((error: unknown) => wrapLock(error, 'PGBACKREST_BACKUP_FAILED', `pgbackrest ${type} backup`, cmd, args));
    const after = await info(ctx, cmd);
    const made = after.backup.filter((b) => !before.has(b.label) && !b.error);
    const backup = made[made.length - 1];
    if (!backup) {
      throw new PipelineError('PGBACKREST_BACKUP_FAILED', `pgbackrest backup ended without error but info lists no new backup of stanza ${options.stanza}`, { hint: ERRORS.PGBACKREST_BACKUP_FAILED });
    }
    if (backup.type !== type) ctx.log.warn({ asked: type, made: backup.type }, `pgBackRest made a ${backup.type} backup (asked: ${type}): there was no full backup to build on`);

    let counts: PhysicalBackupRecord['rowCounts'];
    if (options.drill.enabled) {
      const database = options.drill.database ?? ctx.pg?.database ?? 'mastodon_production';
      try {
        const tables = await rowCounts(serverSource(options, ctx.pg, resolvePath, database), options.drill.tables ?? MASTODON_CORE_TABLES, await sqlOptions(ctx));
        counts = { database, tables, takenAt: new Date().toISOString() };
      } catch (error) {
        ctx.log.warn({ database, err: (error as Error).message }, `cannot count rows in ${database} for the drill: ${(error as Error).message}`);
      }
    }
    const superuser = await psql(serverSource(options, ctx.pg, resolvePath, 'postgres'), 'SELECT rolname FROM pg_roles WHERE oid = 10;', await sqlOptions(ctx)).then(
      (rows) => rows[0]?.[0],
      () => undefined,
    );
    const record = buildRecord(after, backup, { repository: cmd.repository, pgbackrestVersion: version || 'unknown', superuser, rowCounts: counts });
    const path = join(ctx.setDir, RECORD_NAME);
    const digest = await writeFileAtomic(path, JSON.stringify(record, null, 2) + '\n', { signal: ctx.signal });
    ctx.addArtifact({ name: RECORD_NAME, path, kind: PHYSICAL_KIND, format: PGBACKREST_FORMAT, compression: 'none', meta: { ...record }, ...digest });
    ctx.facts.pgbackrest = { ...(ctx.facts.pgbackrest as Record<string, unknown> | undefined), ...pgbackrestFacts(after, undefined, new Date()) };
    ctx.log.info({ label: backup.label, type: backup.type, bytes: backup.info.size, repoBytes: backup.info.repository.delta }, `pgbackrest ${backup.type} backup ${backup.label}: ${backup.info.size} bytes of database, ${backup.info.repository.delta} bytes added to the repository`);
  });

  // Other stages' streamed artifacts are nothing for this verify tap: say so, so they stay one pass.
  hooks.verifyStream.tapPromise(api.name, async (request) => {
    if (request.artifact.format !== PGBACKREST_FORMAT) request.claim();
  });
  hooks.verify.tapPromise(api.name, async (artifact, ctx) => {
    if (artifact.format !== PGBACKREST_FORMAT) return;
    const { readFile } = await import('node:fs/promises');
    const record = parseRecord(await readFile(artifact.path, 'utf8'));
    if (record.stanza !== options.stanza) return; // another stage's stanza
    const cmd = await command(ctx);
    // pgBackRest 2.45's verify exits 0 even when it finds invalid files: read its text report.
    const verified = await cmd.run(['--output=text', 'verify']).catch((error: unknown) => wrapLock(error, 'PGBACKREST_VERIFY_FAILED', 'pgbackrest verify', cmd, ['verify']));
    const report = verifyProblems(verified.stdout);
    if (report.length > 0) {
      throw new PipelineError('PGBACKREST_VERIFY_FAILED', `pgbackrest verify found invalid files in ${repositoryText(cmd.repository)}: ${report.join('; ')}`, { hint: ERRORS.PGBACKREST_VERIFY_FAILED });
    }
    const now = await info(ctx, cmd);
    if (!now.backup.some((b) => b.label === record.label)) {
      throw new PipelineError('PGBACKREST_VERIFY_FAILED', `backup ${record.label} of ${artifact.name} is not in the repository (${repositoryText(cmd.repository)})`, { hint: 'It was expired or the repository was changed: use another set.' });
    }
    if (options.drill.enabled) await runDrill(ctx, cmd, record, options, api);
  });

  hooks.retain.tapPromise(api.name, async (ctx) => {
    if (!options.expire) return;
    const cmd = await command(ctx);
    const report = await expireUnreferenced(ctx, cmd, options, (c) => info(c, cmd));
    ctx.retention.push(report);
    if (report.failed.length > 0) {
      throw new PipelineError('PGBACKREST_EXPIRE_FAILED', `pgbackrest expire failed for ${report.failed.map((f) => `${f.id} (${f.error})`).join('; ')}`, { hint: ERRORS.PGBACKREST_EXPIRE_FAILED });
    }
  });
}

export { WEEKDAYS };
