/**
 * The verify stage: every database artifact must open with pg_restore, read to the end, hold table
 * data and the expected tables — and, with `restoreTest`, restore into a throwaway cluster (or a
 * scratch database on the server) with the row counts of the dump's own snapshot. A failure stops
 * the run before anything is shipped.
 */
import { definePlugin, PipelineError, psql, quoteIdent, recordDrill, z, type RestoreContext, type RunContext } from '@backup-pipeline/core';
import { attachStreamVerification, verifyDatabaseArtifact, type VerifyOptions } from './verify.js';
import { drillTarget, dumpServerMajor, RESTORE_INTO, startClusterEarly, type DrillTarget } from './restore-test.js';

export { attachStreamVerification, tableDataEntries, verifyDatabaseArtifact, type Verification, type VerifyOptions } from './verify.js';
export { dropLeftoverScratchDatabases, drillTarget, RESTORE_INTO, restoreTest, startClusterEarly, type DrillTarget, type RestoreInto } from './restore-test.js';

const isStored = (ctx: RunContext): ctx is RestoreContext => 'request' in ctx && 'stored' in ctx;

export const MASTODON_TABLES = ['accounts', 'users', 'statuses', 'follows'];

export const optionsSchema = z
  .object({
    expectTables: z
      .array(z.string().min(1))
      .default(MASTODON_TABLES)
      .describe('Tables that must have data in the dump (`accounts` matches any schema, `public.accounts` one); default: Mastodon\'s core tables. `[]` disables the check.'),
    fullRead: z.boolean().default(true).describe('Read the whole archive (pg_restore to /dev/null), so a truncated or corrupt dump fails; implied by restoreTest.'),
    restoreTest: z.boolean().default(false).describe('Restore the dump (through the restore hook, as `pipeline restore` does) and compare every table\'s row count with the dump\'s snapshot; where: `restoreInto`.'),
    restoreInto: z
      .enum(RESTORE_INTO)
      .default('auto')
      .describe('Where the restore test restores. `scratch-cluster`: a throwaway PostgreSQL cluster of the dump\'s server major, started in the run\'s folder (socket only, fsync off; needs that major\'s server binaries, e.g. the postgresql-15 package, and room for the restored database in workDir) — no CREATEDB, no load on the server. `server`: a scratch database bp_verify_<random> on the source server, always dropped (needs CREATEDB). `auto`: the cluster when those binaries are installed, else the server.'),
    jobs: z.number().int().min(1).max(64).default(1).describe('pg_restore workers for the restore test (more than 1 decompresses into one temporary file first).'),
  })
  .strict();

export default definePlugin({
  name: 'verify',
  description: 'Proves each database dump is usable: pg_restore --list, a full read, expected tables, optionally a test restore with row counts compared.',
  options: optionsSchema,
  apply(hooks, options) {
    hooks.verify.tapPromise('verify', async (artifact, ctx) => {
      if (artifact.kind !== 'database') return;
      // Re-verifying a stored set (`pipeline verify`): read it fully; `--restore-test` asks for a drill.
      const request = isStored(ctx) ? ctx.request : undefined;
      const effective: VerifyOptions = request ? { ...options, fullRead: true, restoreTest: request.restoreTest === true } : options;
      const verification = await verifyDatabaseArtifact(artifact, effective, ctx);
      artifact.meta.verification = verification;
      // A drill of a stored set (`verify --restore-test`), reported per part by the CLI.
      if (request && verification.restoreTest) {
        const t = verification.restoreTest;
        recordDrill(artifact, { part: 'database', bytes: artifact.bytes, durationMs: t.durationMs, detail: `${t.tables} tables / ${t.rows} rows restored, matching the dump's snapshot (${t.into === 'scratch-cluster' ? `throwaway PostgreSQL ${t.serverVersion} cluster` : 'scratch database on the server'})` });
      }
      ctx.log.info(
        { artifact: artifact.name, tables: verification.tableData, restoreTest: verification.restoreTest?.database, restoreInto: verification.restoreTest?.into },
        `verified ${artifact.name}: ${verification.tableData} tables with data${verification.restoreTest ? `, test restore matched ${verification.restoreTest.rows} rows (${verification.restoreTest.into === 'scratch-cluster' ? `throwaway PostgreSQL ${verification.restoreTest.serverVersion} cluster` : `scratch database on the server`}, ${verification.restoreTest.durationMs} ms)` : ''}`,
      );
    });
    // One pass: the same checks on pg-dump's stream while it is made (the file is then not read again).
    hooks.verifyStream.tapPromise('verify', async (request, ctx) => {
      if (request.artifact.kind !== 'database' || (await attachStreamVerification(request, options))) {
        request.claim();
        if (request.artifact.kind === 'database') ctx.log.debug({ artifact: request.artifact.name }, `verifying ${request.artifact.name} on its stream`);
      }
    });
    // Where the restore test will go; into the server it needs CREATEDB: refuse before any data
    // moves, not after the whole dump. A throwaway cluster needs nothing of the server.
    let planned: DrillTarget | undefined;
    hooks.preflight.tapPromise('verify', async (ctx) => {
      if (!options.restoreTest) return;
      planned = await drillTarget(options.restoreInto, await dumpServerMajor(undefined, ctx), ctx.signal);
      // The throwaway cluster starts now, while the dump is made (it is idle until the drill).
      if (planned.into === 'scratch-cluster' && !ctx.dryRun) startClusterEarly(planned.bindir, ctx);
      if (planned.into !== 'server' || !ctx.pg) return;
      const [row] = await psql(ctx.pg, `SELECT current_user, coalesce((SELECT rolcreatedb OR rolsuper FROM pg_roles WHERE rolname = current_user), false)`, { signal: ctx.signal, secrets: ctx.secrets });
      if (row?.[1] !== 't') {
        const user = row?.[0] ?? ctx.pg.user;
        throw new PipelineError('VERIFY_RESTORE_UNAVAILABLE', `${user} cannot create the scratch database for the restore test (no CREATEDB); refused before any data moved`, {
          hint: `Allow it (as a superuser: ALTER ROLE ${quoteIdent(user)} CREATEDB;), or let the test restore into a throwaway cluster instead (${planned.why === 'restoreInto: server' ? 'restoreInto: auto, with' : 'install'} the server binaries of the server's major), or set restoreTest: false.`,
        });
      }
    });

    // `pipeline verify --restore-test`: start the drill's cluster while the set is decrypted.
    hooks.fetched.tapPromise('verify', async (artifact, ctx) => {
      if (artifact.kind !== 'database' || ctx.request.restoreTest !== true) return;
      try {
        const target = await drillTarget(options.restoreInto, await dumpServerMajor(artifact, { ...ctx, pg: undefined }), ctx.signal);
        if (target.into === 'scratch-cluster') startClusterEarly(target.bindir, ctx);
      } catch {
        // Reported by the drill itself (a fetched copy is never rejected for this).
      }
    });

    hooks.plan.tapPromise('verify', async (plan) => {
      plan.add({
        plugin: 'verify',
        hook: 'verify',
        description: `check each database dump with pg_restore --list${options.fullRead || options.restoreTest ? ', read it to the end' : ''}${options.expectTables.length ? `, expect tables ${options.expectTables.join(', ')}` : ''}${options.restoreTest ? `, restore it into ${planned?.into === 'scratch-cluster' ? 'a throwaway PostgreSQL cluster' : 'a scratch database on the server'} (${planned?.why ?? `restoreInto: ${options.restoreInto}`}; jobs ${options.jobs}) and compare row counts` : ''}`,
      });
    });
  },
});
