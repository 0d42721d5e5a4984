/**
 * The `vacuum` stage: database maintenance for a separate (e.g. weekly) pipeline. In `produce` it
 * runs `VACUUM (ANALYZE[, VERBOSE][, SKIP_LOCKED])` on the database of `ctx.pg` (set by the
 * credentials stage) with `SET lock_timeout` first, so it gives up rather than queueing behind —
 * and making every Mastodon query wait behind — a long lock. A run must produce an artifact, so the
 * stage adds a small `vacuum-report.txt` (what ran, how long, and VACUUM's own messages): the
 * maintenance run is recorded, shipped and pruned like any other set.
 */
import { join } from 'node:path';
import {
  definePlugin,
  describePg,
  findPgBinary,
  pgConnectionError,
  pgEnv,
  PipelineError,
  quoteIdent,
  writeFileAtomic,
  z,
  type RunContext,
} from '@backup-pipeline/core';

export const REPORT_NAME = 'vacuum-report.txt';

const TableName = z
  .string()
  .regex(/^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$/, 'a table name, optionally schema-qualified (statuses, public.statuses)');

export const optionsSchema = z
  .object({
    tables: z.array(TableName).default([]).describe('Tables to vacuum (`statuses`, `public.statuses`); default: every table the user may vacuum.'),
    analyze: z.boolean().default(true).describe('Also update the planner statistics (VACUUM ANALYZE).'),
    verbose: z.boolean().default(false).describe("VACUUM VERBOSE: keep PostgreSQL's per-table report in vacuum-report.txt."),
    lockTimeout: z
      .string()
      .regex(/^\d+\s*(us|ms|s|min|h|d)?$/, 'a duration such as 30s, 500ms or 2min')
      .default('30s')
      .describe('lock_timeout for the session: give up on a table lock held longer than this instead of blocking the instance behind it.'),
    skipLocked: z.boolean().default(false).describe('SKIP_LOCKED (PostgreSQL 12+): skip tables that cannot be locked at once instead of failing the run.'),
    binDir: z.string().min(1).optional().describe('Folder holding psql (default: the newest found).'),
  })
  .strict();

export type VacuumOptions = z.output<typeof optionsSchema>;

/** `VACUUM (ANALYZE, VERBOSE) "public"."statuses", "accounts"` */
export function vacuumStatement(options: Pick<VacuumOptions, 'tables' | 'analyze' | 'verbose' | 'skipLocked'>): string {
  const flags = [options.analyze && 'ANALYZE', options.verbose && 'VERBOSE', options.skipLocked && 'SKIP_LOCKED'].filter(Boolean);
  const tables = options.tables.map((t) => t.split('.').map(quoteIdent).join('.'));
  return `VACUUM${flags.length ? ` (${flags.join(', ')})` : ''}${tables.length ? ` ${tables.join(', ')}` : ''}`;
}

export function lockTimeoutStatement(lockTimeout: string): string {
  return `SET lock_timeout = '${lockTimeout.replace(/\s+/g, '')}'`;
}

async function vacuum(ctx: RunContext, options: VacuumOptions): Promise<void> {
  const source = ctx.pg;
  if (!source) {
    throw new PipelineError('VACUUM_NO_SOURCE', 'no database connection was resolved', { hint: 'Put the credentials stage before vacuum.' });
  }
  const psql = await findPgBinary('psql', { binDir: options.binDir });
  const statements = [lockTimeoutStatement(options.lockTimeout), vacuumStatement(options)];
  const started = new Date();
  ctx.log.info({ database: source.database }, `${statements[1]} on ${describePg(source)} (lock_timeout ${options.lockTimeout})`);
  // Two -c: psql sends each on its own, and VACUUM cannot run inside a multi-statement string.
  const args = ['-X', '-q', '-v', 'ON_ERROR_STOP=1', ...statements.flatMap((s) => ['-c', s])];
  let stderr: string;
  try {
    ({ stderr } = await ctx.exec(psql.path, args, { env: pgEnv(source), label: 'psql' }));
  } catch (error) {
    const text = `${(error as PipelineError).details?.stderr ?? ''}\n${(error as Error).message}`;
    if (/canceling statement due to lock timeout/i.test(text)) {
      throw new PipelineError('VACUUM_LOCK_TIMEOUT', `VACUUM gave up on a table lock after ${options.lockTimeout} on ${describePg(source)}`, {
        cause: error,
        hint: 'A session held a lock on a table longer than lockTimeout (a migration, a long transaction). Run again later, raise lockTimeout, or set skipLocked: true.',
      });
    }
    const connection = pgConnectionError(error, source);
    if (connection) throw connection;
    throw new PipelineError('VACUUM_FAILED', `VACUUM failed on ${describePg(source)}: ${(error as Error).message}`, {
      cause: error,
      hint: 'See the message; VACUUM needs the table owner (or a superuser, or pg_maintain on PostgreSQL 17+).',
    });
  }
  const durationMs = Date.now() - started.getTime();
  // Skipped tables: for a lock (SKIP_LOCKED), or for a missing privilege. The shared catalogs that
  // "only superuser can vacuum" are skipped on every non-superuser run and are not worth a warning.
  const skipLines = stderr.split('\n').filter((l) => /skipping|permission denied to vacuum/i.test(l));
  const skipped = skipLines.filter((l) => !/only superuser can vacuum it/i.test(l)).length;
  const report = [
    `backup-pipeline vacuum report`,
    `database: ${describePg(source)}`,
    `started:  ${started.toISOString()}`,
    `duration: ${(durationMs / 1000).toFixed(1)} s`,
    ...statements.map((s) => `sql:      ${s};`),
    '',
    ctx.secrets.mask(stderr.trimEnd()) || '(no messages)',
    '',
  ].join('\n');
  const path = join(ctx.setDir, REPORT_NAME);
  const digest = await writeFileAtomic(path, report);
  ctx.addArtifact({
    name: REPORT_NAME,
    path,
    kind: 'report',
    format: 'text',
    compression: 'none',
    meta: { database: source.database, durationMs, tables: options.tables, analyze: options.analyze, skipped },
    ...digest,
  });
  if (skipped > 0) ctx.log.warn({ skipped }, `VACUUM skipped ${skipped} table(s); see ${REPORT_NAME}`);
  ctx.log.info({ durationMs }, `vacuum done in ${(durationMs / 1000).toFixed(1)} s`);
}

export default definePlugin({
  name: 'vacuum',
  description: 'Maintenance stage: VACUUM (ANALYZE) with a lock timeout, recorded as vacuum-report.txt; for a separate maintenance pipeline.',
  options: optionsSchema,
  apply(hooks, options) {
    hooks.plan.tapPromise('vacuum', async (plan, ctx) => {
      plan.add({
        plugin: 'vacuum',
        hook: 'produce',
        description: `${vacuumStatement(options)} on ${ctx.pg ? describePg(ctx.pg) : 'the database'}, lock_timeout ${options.lockTimeout}; report in ${REPORT_NAME}`,
        command: `psql -c "${lockTimeoutStatement(options.lockTimeout)}" -c "${vacuumStatement(options)}"`,
      });
    });
    hooks.produce.tapPromise('vacuum', (ctx) => vacuum(ctx, options));
  },
});
