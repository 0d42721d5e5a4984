import { chmod, copyFile, mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import type { Command } from 'commander';
import { findPgBinary, makePathResolver, pgEnv, PipelineError, psql, quoteIdent, quoteLiteral, type Artifact, type RunContext } from '@backup-pipeline/core';
import { plaintextStream } from '@backup-pipeline/plugin-pg-dump';
import { restoreArtifact, type RestoreReport } from '@backup-pipeline/plugin-verify';
import { formatDuration, green, output, table } from '../output.js';
import { decryptionOptions, fetchSet, locateSet } from '../restore-set.js';
import { openDestinations, openSession } from '../session.js';
import { withSignals } from '../signals.js';
import { progressReporter } from '../progress.js';

export interface RestoreFlags {
  to: string;
  from?: string;
  pipeline?: string;
  jobs?: number;
  clean?: boolean;
  globals?: boolean;
  filesTo?: string;
  gnupgHome?: string;
  passphraseFile?: string;
}

/** Creates `database` (template0) or checks an existing one is empty; returns whether it existed. */
export async function prepareTarget(ctx: RunContext, database: string, clean: boolean): Promise<void> {
  const pg = ctx.pg!;
  const q = { signal: ctx.signal, secrets: ctx.secrets, database: 'postgres' };
  const exists = (await psql(pg, `SELECT 1 FROM pg_database WHERE datname = ${quoteLiteral(database)}`, q)).length > 0;
  if (!exists) {
    await psql(pg, `CREATE DATABASE ${quoteIdent(database)} TEMPLATE template0`, q).catch((error: unknown) => {
      throw new PipelineError('RESTORE_TARGET_UNAVAILABLE', `cannot create database ${database} as ${pg.user}: ${(error as Error).message}`, {
        hint: `Create it first (createdb -T template0 -O ${pg.user} ${database}) or grant CREATEDB to ${pg.user}.`,
      });
    });
    return;
  }
  const [[tables] = ['0']] = await psql(pg, `SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'`, { ...q, database });
  if (Number(tables) > 0 && !clean) {
    throw new PipelineError('RESTORE_TARGET_NOT_EMPTY', `database ${database} already has ${tables} tables; refusing to restore over it`, {
      hint: 'Restore into a new database name, or pass --clean to drop and recreate what the dump contains.',
    });
  }
}

/**
 * Roles and tablespaces: replayed statement by statement (ON_ERROR_STOP off), because the target
 * server already has some of the roles; each failed statement is reported as a warning.
 */
async function restoreGlobals(globals: Artifact, ctx: RunContext): Promise<void> {
  const plain = plaintextStream(globals, ctx);
  const psqlPath = (await findPgBinary('psql')).path;
  const result = await ctx.exec(psqlPath, ['-X', '-q', '-v', 'ON_ERROR_STOP=0', '--dbname', 'postgres'], { stdin: plain.stream, env: pgEnv(ctx.pg!, 'postgres'), label: 'psql (globals)' });
  await plain.done;
  const errors = result.stderr.split('\n').filter((line) => line.includes('ERROR:'));
  for (const line of errors) ctx.log.warn(`globals: ${line.replace(/^psql:[^E]*/, '')}`);
  ctx.log.info(`roles and tablespaces replayed (${errors.length} statement(s) failed, e.g. roles that already exist)`);
}

export function printRestoreReport(report: RestoreReport): void {
  const rows = [['table', 'in dump', 'restored', '']];
  for (const c of report.counts) rows.push([c.table, String(c.expected ?? '-'), String(c.restored ?? '-'), c.expected === c.restored ? 'ok' : 'MISMATCH']);
  output.stdout(table(rows));
}

export default async function restore(command: Command, id: string, flags: RestoreFlags): Promise<number> {
  const session = await openSession(command);
  const pipeline = session.runner.pipeline(flags.pipeline);
  const destinations = await openDestinations(session, pipeline.name, flags.from);
  const decryption = decryptionOptions(pipeline, flags, makePathResolver(process.cwd()));
  return withSignals(async (signal) => {
    let report: RestoreReport | undefined;
    let setId = '';
    await session.runner.run(pipeline.name, {
      signal,
      observe: progressReporter({ quiet: session.options.quiet || session.options.json, log: session.log }),
      session: async (ctx) => {
        if (!ctx.pg) throw new PipelineError('CREDENTIALS_MISSING', `pipeline "${pipeline.name}" has no credentials stage to connect with`, { hint: 'Add `- use: credentials` to it.' });
        const located = await locateSet(destinations, id);
        setId = located.set.id;
        const artifacts = await fetchSet(located, ctx.tmpDir, ctx, decryption);
        const database = artifacts.find((a) => a.kind === 'database');
        if (!database) throw new PipelineError('SET_NOT_RESTORABLE', `set ${setId} holds no database dump (${artifacts.map((a) => a.name).join(', ')})`);
        if (flags.filesTo) {
          await mkdir(flags.filesTo, { recursive: true, mode: 0o700 });
          for (const other of artifacts.filter((a) => a !== database)) {
            await copyFile(other.path, join(flags.filesTo, other.name));
            await chmod(join(flags.filesTo, other.name), 0o600);
            ctx.log.info(`wrote ${join(flags.filesTo, other.name)}`);
          }
        }
        if (flags.globals) {
          const globals = artifacts.find((a) => a.kind === 'globals');
          if (!globals) throw new PipelineError('SET_NOT_RESTORABLE', `set ${setId} holds no globals dump (enable \`globals: true\` in pg-dump)`);
          await restoreGlobals(globals, ctx);
        }
        await prepareTarget(ctx, flags.to, !!flags.clean);
        const started = Date.now();
        report = await restoreArtifact(database, { database: flags.to, jobs: flags.jobs ?? 2, clean: flags.clean }, ctx);
        report.durationMs = Date.now() - started;
      },
    });
    const r = report!;
    output.clearStatus();
    if (session.options.json) {
      output.json({ ok: r.mismatches.length === 0, setId, ...r });
    } else if (!session.options.quiet) {
      output.stdout(`${green('restored')} ${setId} into ${flags.to} in ${formatDuration(r.durationMs)}: ${r.tables} tables, ${r.rows} rows\n`);
      printRestoreReport(r);
    }
    if (r.mismatches.length > 0) {
      throw new PipelineError('RESTORE_MISMATCH', `the restored row counts differ from the dump's snapshot: ${r.mismatches.slice(0, 3).join('; ')}`);
    }
    return 0;
  }, session.options);
}
