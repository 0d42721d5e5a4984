/**
 * The restore test (a drill): the dump is restored through the `restore` hook — exactly as
 * `pipeline restore` restores it — and every table's row count must match the counts taken in the
 * dump's own snapshot. Where it is restored (`restoreInto`):
 *
 * - `scratch-cluster`: a throwaway PostgreSQL cluster of the dump's server major, started in the
 *   run's scratch folder (core `startScratchCluster`: socket only, fsync off, wal_level minimal,
 *   a large maintenance_work_mem). Needs no CREATEDB and puts no load on the production server;
 *   needs the server binaries of that major (Debian: postgresql-<major>).
 * - `server`: a scratch database `bp_verify_<random>` on the source server, made by the configured
 *   role (CREATEDB), commented with who made it, always dropped; one left behind by a killed run on
 *   this host is dropped by the next server-mode drill.
 * - `auto` (default): the throwaway cluster when those binaries are installed, else the server.
 */
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import {
  findServerBinaries,
  ownerAlive,
  parsePgVersion,
  pgConnectionError,
  PipelineError,
  processStartTime,
  psql,
  quoteIdent,
  quoteLiteral,
  startScratchCluster,
  type Artifact,
  type PgSource,
  type RestoreReport,
  type ScratchCluster,
} from '@backup-pipeline/core';
import { failed, why, type Ctx, type Verification, type VerifyOptions } from './verify.js';

export const RESTORE_INTO = ['auto', 'scratch-cluster', 'server'] as const;
export type RestoreInto = (typeof RESTORE_INTO)[number];

/** Where a drill restores, and why there (for the log and the verification record). */
export type DrillTarget = { into: 'scratch-cluster'; bindir: string; why: string } | { into: 'server'; why: string };

/** The database a drill restores into inside the throwaway cluster. */
export const CLUSTER_DRILL_DATABASE = 'bp_verify';
/** Scratch databases on the server: `bp_verify_` and 12 hex digits. */
const SERVER_SCRATCH = /^bp_verify_[0-9a-f]{12}$/;
const COMMENT_BY = 'backup-pipeline restore test';

/** The major version of the server a dump was taken from (its meta), or of `ctx.pg`'s server. */
export async function dumpServerMajor(artifact: Pick<Artifact, 'meta'> | undefined, ctx: Pick<Ctx, 'pg' | 'signal' | 'secrets' | 'facts'>): Promise<number | undefined> {
  for (const v of [artifact?.meta.serverVersion, ctx.facts?.serverVersion]) {
    const major = typeof v === 'string' ? parsePgVersion(v)?.major : undefined;
    if (major) return major;
  }
  if (!ctx.pg) return undefined;
  const rows = await psql(ctx.pg, 'SHOW server_version_num', { signal: ctx.signal, secrets: ctx.secrets }).catch(() => undefined);
  const num = Number(rows?.[0]?.[0]);
  return Number.isInteger(num) && num > 0 ? Math.floor(num / 10000) : undefined;
}

/** Decides where the drill restores. Throws VERIFY_RESTORE_UNAVAILABLE for `scratch-cluster` without the binaries. */
export async function drillTarget(restoreInto: RestoreInto, major: number | undefined, signal?: AbortSignal): Promise<DrillTarget> {
  if (restoreInto === 'server') return { into: 'server', why: 'restoreInto: server' };
  const bindir = await findServerBinaries(major, { signal });
  if (bindir) return { into: 'scratch-cluster', bindir, why: `PostgreSQL ${major ?? ''} server binaries in ${bindir}`.replace('  ', ' ') };
  const pkg = `postgresql-${major ?? '<major>'}`;
  if (restoreInto === 'scratch-cluster') {
    throw new PipelineError('VERIFY_RESTORE_UNAVAILABLE', `the restore test cannot start a throwaway cluster: no PostgreSQL ${major ?? ''} server binaries (initdb, pg_ctl, postgres) are installed`.replace('  ', ' '), {
      hint: `Install them (apt-get install ${pkg}; the service need not run), or set restoreInto: server to restore into a scratch database on the source server (needs CREATEDB).`,
    });
  }
  return { into: 'server', why: `no PostgreSQL ${major ?? ''} server binaries are installed (apt-get install ${pkg} to drill in a throwaway cluster instead)`.replace('  ', ' ') };
}

function mismatchCheck(artifact: Artifact, report: RestoreReport): void {
  if (report.mismatches.length > 0) {
    const m = report.mismatches;
    throw failed(artifact, `the test restore does not match the dump's row counts: ${m.slice(0, 5).join('; ')}${m.length > 5 ? ` (+${m.length - 5} more)` : ''}`);
  }
}

/** The database a drill restores into, with how many jobs, on the throwaway cluster (`server`) or the source server. */
interface DrillDatabase {
  database: string;
  jobs: number;
  server?: PgSource;
}

/** Through the restore hook, exactly as `pipeline restore` restores: the plugin that wrote the format restores it. */
async function restoreThroughHook(artifact: Artifact, target: DrillDatabase, ctx: Ctx): Promise<RestoreReport> {
  const report = await ctx.restore(artifact, target).catch((error: unknown) => {
    const code = (error as { code?: string }).code ?? '';
    if (['VERIFY_FAILED', 'RESTORE_NEEDS_PLUGIN', 'NO_SPACE', 'ABORTED'].includes(code)) throw error;
    throw failed(artifact, `the test restore failed (${why(error)})`, error);
  });
  mismatchCheck(artifact, report);
  return report;
}

/** What a drill reports, but its whole duration (restoreTest adds that). */
type DrillResult = Omit<NonNullable<Verification['restoreTest']>, 'durationMs'>;

/** The drill's restore through the hook into TARGET, timed, reported with where it went and how long setting that up took. */
async function timedRestore(artifact: Artifact, target: DrillDatabase, where: Pick<DrillResult, 'into' | 'serverVersion' | 'setupMs'>, ctx: Ctx): Promise<DrillResult> {
  const restoreStarted = Date.now();
  const report = await restoreThroughHook(artifact, target, ctx);
  return {
    into: where.into,
    database: target.database,
    serverVersion: where.serverVersion,
    jobs: target.jobs,
    tables: report.tables ?? 0,
    rows: report.rows ?? 0,
    matched: report.tables ?? 0,
    setupMs: where.setupMs,
    restoreMs: Date.now() - restoreStarted,
  };
}

export async function restoreTest(artifact: Artifact, options: VerifyOptions, ctx: Ctx): Promise<NonNullable<Verification['restoreTest']>> {
  const started = Date.now();
  const target = await drillTarget(options.restoreInto ?? 'auto', await dumpServerMajor(artifact, ctx), ctx.signal);
  const result = target.into === 'scratch-cluster' ? await intoScratchCluster(artifact, options, target.bindir, ctx) : await intoServer(artifact, options, target.why, ctx);
  return { ...result, durationMs: Date.now() - started };
}

/** Clusters started ahead of the drill (while the dump is made, or the set fetched and decrypted), per run context. */
const early = new WeakMap<object, { bindir: string; cluster: Promise<ScratchCluster> }>();

/**
 * Starts the drill's throwaway cluster ahead of time, so that initdb and the server's start
 * overlap with the dump (a run) or with fetching and decrypting the set (`pipeline verify`). The
 * drill takes it when its binaries are the ones it needs; it is stopped when the run ends in any
 * case. Never throws: a failure to start is reported by the drill that needs the cluster.
 */
export function startClusterEarly(bindir: string, ctx: Pick<Ctx, 'tmpDir' | 'signal' | 'log' | 'defer'>): void {
  if (early.has(ctx)) return;
  const cluster = startScratchCluster({ bindir, parentDir: ctx.tmpDir, signal: ctx.signal, log: ctx.log });
  cluster.catch(() => undefined); // handled here; the drill awaits the same promise and reports it
  early.set(ctx, { bindir, cluster });
  ctx.defer(async () => (await cluster.catch(() => undefined))?.stop());
}

async function intoScratchCluster(artifact: Artifact, options: VerifyOptions, bindir: string, ctx: Ctx): Promise<Omit<NonNullable<Verification['restoreTest']>, 'durationMs'>> {
  const setupStarted = Date.now();
  const ahead = early.get(ctx);
  early.delete(ctx); // one drill per early cluster
  let cluster: ScratchCluster;
  if (ahead && ahead.bindir === bindir) {
    cluster = await ahead.cluster;
  } else {
    if (ahead) void ahead.cluster.then((c) => c.stop(), () => undefined); // of another major: not this dump's
    cluster = await startScratchCluster({ bindir, parentDir: ctx.tmpDir, signal: ctx.signal, log: ctx.log });
    ctx.defer(() => cluster.stop());
  }
  try {
    await cluster.psql(`CREATE DATABASE ${quoteIdent(CLUSTER_DRILL_DATABASE)} TEMPLATE template0 ENCODING 'UTF8'`);
    // Plain SQL sets owners and grants by role name (pg_restore's --no-owner --no-acl cannot apply).
    if (artifact.format === 'pg-plain') await copyRoleNames(cluster, ctx);
    const setupMs = Date.now() - setupStarted;
    ctx.log.info(
      { artifact: artifact.name, into: 'scratch-cluster', serverVersion: cluster.version, bindir, setupMs },
      `restore test of ${artifact.name}: into a throwaway PostgreSQL ${cluster.version} cluster (${bindir}; no CREATEDB needed, no load on the server)`,
    );
    ctx.progress({ task: 'restore-test', message: `throwaway PostgreSQL ${cluster.version} cluster` });
    const target = { database: CLUSTER_DRILL_DATABASE, jobs: options.jobs, server: cluster.source(CLUSTER_DRILL_DATABASE) };
    return await timedRestore(artifact, target, { into: 'scratch-cluster', serverVersion: cluster.version, setupMs }, ctx);
  } finally {
    await cluster.stop();
  }
}

/**
 * The source server's role names, created in the throwaway cluster as NOLOGIN roles without
 * passwords, so that a plain SQL dump's `OWNER TO` and `GRANT … TO` find them. Without a connection
 * to the source (`pipeline verify` elsewhere), nothing is created and such a statement fails the drill.
 */
async function copyRoleNames(cluster: ScratchCluster, ctx: Ctx): Promise<void> {
  if (!ctx.pg) return;
  const wanted = await psql(ctx.pg, "SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_'", { signal: ctx.signal, secrets: ctx.secrets }).catch(() => [] as string[][]);
  const have = new Set((await cluster.psql('SELECT rolname FROM pg_roles')).map((r) => r[0]));
  const missing = wanted.map((r) => r[0]!).filter((name) => name && !have.has(name));
  if (missing.length > 0) await cluster.psql(missing.map((name) => `CREATE ROLE ${quoteIdent(name)} NOLOGIN;`).join('\n'));
}

/** Who made a server scratch database: the comment a drill puts on it. */
function ownerComment(): string {
  return JSON.stringify({ by: COMMENT_BY, host: hostname(), pid: process.pid, procStart: processStartTime(process.pid), at: new Date().toISOString() });
}

/**
 * Drops the `bp_verify_*` databases a killed run left on the server: those this host's runs made
 * (their comment names a process no longer running here), and uncommented ones of older versions
 * that nobody is connected to. Another host's are left alone. Never fails the drill.
 */
export async function dropLeftoverScratchDatabases(source: PgSource, ctx: Pick<Ctx, 'signal' | 'secrets' | 'log'>): Promise<string[]> {
  const q = { signal: ctx.signal, secrets: ctx.secrets };
  const rows = await psql(
    source,
    `SELECT d.datname, coalesce(shobj_description(d.oid, 'pg_database'), ''), (SELECT count(*) FROM pg_stat_activity a WHERE a.datname = d.datname) FROM pg_database d WHERE d.datname LIKE 'bp\\_verify\\_%'`,
    q,
  ).catch(() => [] as string[][]);
  const dropped: string[] = [];
  for (const [name, comment, sessions] of rows) {
    if (!name || !SERVER_SCRATCH.test(name)) continue;
    let owner: { by?: unknown; host?: unknown; pid?: unknown; procStart?: unknown } | undefined;
    try {
      owner = comment ? (JSON.parse(comment) as typeof owner) : undefined;
    } catch {
      continue; // someone else's comment: not ours to judge
    }
    const leftover = owner
      ? owner.by === COMMENT_BY && owner.host === hostname() && typeof owner.pid === 'number' && !ownerAlive({ pid: owner.pid, procStart: typeof owner.procStart === 'number' ? owner.procStart : undefined })
      : sessions === '0';
    if (!leftover) continue;
    try {
      await psql(source, `DROP DATABASE IF EXISTS ${quoteIdent(name)} WITH (FORCE)`, q);
      dropped.push(name);
      ctx.log.warn({ database: name, owner }, `dropped ${name}, a restore test's scratch database left on the server by a run that was killed${owner ? ` (pid ${String(owner.pid)}, ${String((owner as { at?: unknown }).at ?? '')})` : ''}`);
    } catch (error) {
      ctx.log.warn({ database: name }, `could not drop ${name}, a scratch database left by a killed run: ${why(error)}`);
    }
  }
  return dropped;
}

async function intoServer(artifact: Artifact, options: VerifyOptions, reason: string, ctx: Ctx): Promise<Omit<NonNullable<Verification['restoreTest']>, 'durationMs'>> {
  const source = ctx.pg;
  if (!source) throw new PipelineError('CREDENTIALS_MISSING', 'a restore test into the server needs the database connection of a credentials stage', { hint: 'Add a credentials stage before verify, or install the server binaries of the dump\'s major so it restores into a throwaway cluster.' });
  const setupStarted = Date.now();
  const scratch = `bp_verify_${randomBytes(6).toString('hex')}`;
  const q = { signal: ctx.signal, secrets: ctx.secrets };
  await dropLeftoverScratchDatabases(source, ctx);
  try {
    await psql(source, `CREATE DATABASE ${quoteIdent(scratch)} TEMPLATE template0`, q);
  } catch (error) {
    const conn = pgConnectionError(error, source);
    if (conn && conn.code !== 'INSUFFICIENT_PRIVILEGE') throw conn;
    throw new PipelineError('VERIFY_RESTORE_UNAVAILABLE', `${source.user} cannot create the scratch database for the restore test: ${why(error)}`, {
      hint: `Allow it (as a superuser: ALTER ROLE ${quoteIdent(source.user)} CREATEDB;), install the server binaries of the dump's major so it restores into a throwaway cluster, or set restoreTest: false.`,
      cause: error,
    });
  }
  let dropped = false;
  const drop = async () => {
    if (dropped) return;
    dropped = true;
    await psql(source, `DROP DATABASE IF EXISTS ${quoteIdent(scratch)} WITH (FORCE)`, { secrets: ctx.secrets }).catch((error: unknown) => {
      dropped = false;
      ctx.log.warn({ database: scratch }, `could not drop the scratch database ${scratch}: ${why(error)}`);
    });
  };
  ctx.defer(drop);
  try {
    // Who made it, so that a run killed before it dropped it is recognised by the next one.
    await psql(source, `COMMENT ON DATABASE ${quoteIdent(scratch)} IS ${quoteLiteral(ownerComment())}`, q).catch(() => undefined);
    const [version] = await psql(source, 'SHOW server_version', q).catch(() => [[''] as string[]]);
    const setupMs = Date.now() - setupStarted;
    ctx.log.info({ artifact: artifact.name, into: 'server', database: scratch, why: reason }, `restore test of ${artifact.name}: into scratch database ${scratch} on the server (${reason})`);
    ctx.progress({ task: 'restore-test', message: scratch });
    return await timedRestore(artifact, { database: scratch, jobs: options.jobs }, { into: 'server', serverVersion: version?.[0]?.split(' ')[0] ?? '', setupMs }, ctx);
  } finally {
    await drop();
  }
}
