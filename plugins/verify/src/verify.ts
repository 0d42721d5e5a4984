/**
 * Proving a database artifact is usable before anything is shipped: its archive opens with
 * `pg_restore --list` and is read to the end (truncation shows), it holds table data, the expected
 * tables are there; optionally it is restored into a scratch database whose row counts must match
 * the counts taken in the dump's own snapshot. The scratch database is always dropped.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import {
  findPgBinary,
  parsePgVersion,
  pgConnectionError,
  pgEnv,
  PipelineError,
  psql,
  quoteIdent,
  quoteLiteral,
  type Artifact,
  type PgSource,
  type RunContext,
} from '@backup-pipeline/core';
import { decompressToFile, outerCompression, plaintextInto, plaintextStream } from '@backup-pipeline/plugin-pg-dump';

export interface VerifyOptions {
  expectTables: string[];
  fullRead: boolean;
  restoreTest: boolean;
  jobs: number;
}

export interface Verification {
  verifiedAt: string;
  listed: boolean;
  tableData: number;
  fullRead: boolean;
  expectTables: string[];
  restoreTest?: { database: string; jobs: number; tables: number; rows: number; matched: number; durationMs: number };
  durationMs: number;
}

type Ctx = Pick<RunContext, 'exec' | 'signal' | 'secrets' | 'tmpDir' | 'defer' | 'log' | 'progress'> & { pg?: PgSource };

function failed(artifact: Artifact, why: string, cause?: unknown): PipelineError {
  return new PipelineError('VERIFY_FAILED', `${artifact.name}: ${why}`, {
    hint: 'Do not trust this backup: nothing was shipped and retention did not run. Check disk space and the dump stage, then run again.',
    cause,
    details: { artifact: artifact.name },
  });
}

function why(error: unknown): string {
  const e = error as { message?: string; details?: { stderr?: string } };
  const tail = e?.details?.stderr?.trim().split('\n').slice(-2).join(' ') ?? '';
  return (tail || e?.message || String(error)).slice(0, 400);
}

/**
 * Runs a consumer with the artifact's plaintext on stdin; checks both the decompressor and the
 * consumer. A consumer that stops reading early (`--list` reads only the table of contents)
 * must not leave the decompressor blocked on a full pipe: it is stopped once the consumer is done.
 */
async function pipeInto(
  artifact: Artifact,
  ctx: Ctx,
  file: string,
  args: string[],
  options: { env?: Record<string, string | undefined>; label: string; partial?: boolean; fullReadFollows?: boolean; direct?: boolean },
): Promise<string> {
  // direct: the decompressor writes into the consumer over an OS pipe (no byte through Node.js);
  // for consumers that read to the end of their input (pg_restore of a custom archive).
  let proc: ReturnType<Ctx['exec']>;
  let plain: { done: Promise<void>; cancel(): void; stream?: Readable };
  if (options.direct) {
    proc = ctx.exec(file, args, { stdin: { fromProcess: true }, env: options.env, label: options.label });
    plain = plaintextInto(artifact, proc, ctx);
  } else {
    plain = plaintextStream(artifact, ctx);
    proc = ctx.exec(file, args, { stdin: plain.stream, env: options.env, label: options.label });
  }
  let producer: { ok: true } | { ok: false; reason: unknown } | undefined;
  const producerDone = plain.done.then(
    () => (producer = { ok: true }),
    (reason: unknown) => (producer = { ok: false, reason }),
  );
  const consumer = await proc.then(
    (value) => ({ ok: true as const, value }),
    (reason: unknown) => ({ ok: false as const, reason }),
  );
  // Let a failing decompressor report first (a truncated stream), then stop whatever is left.
  // Not after a partial read that succeeded when a full read follows: that read checks the whole
  // stream, and the grace period would only add a fixed 250 ms to every run.
  const grace = !(options.partial && consumer.ok && options.fullReadFollows);
  if (!producer && grace) await Promise.race([producerDone, new Promise((r) => setTimeout(r, 250))]);
  // A decompressor still writing when a successful consumer exits dies of SIGPIPE: the consumer had
  // read all it needed (the archive's own end, or just the table of contents for --list), so that
  // is not a failure. A truncated stream still fails the full read that follows a --list.
  if ((options.direct || options.partial) && consumer.ok && producer && !producer.ok && killedBySigpipe(producer.reason)) producer = { ok: true };
  const failedOnItsOwn = producer && !producer.ok ? producer.reason : undefined;
  if (!producer) {
    if (options.partial || !consumer.ok) plain.cancel();
    else plain.stream?.resume(); // the consumer read what it needed: drain the rest
    await producerDone;
  }
  if (failedOnItsOwn !== undefined) throw failed(artifact, `it is truncated or corrupt (${why(failedOnItsOwn)})`, failedOnItsOwn);
  if (!consumer.ok) throw failed(artifact, `it is not a readable PostgreSQL archive (${options.label}: ${why(consumer.reason)})`, consumer.reason);
  if (producer && !producer.ok && !options.partial) throw failed(artifact, `it is truncated or corrupt (${why(producer.reason)})`, producer.reason);
  return consumer.value.stdout;
}

/**
 * The reader went away: the writer died of SIGPIPE, or (when SIGPIPE is ignored, as in children of
 * newer Node.js versions, whose stdio pipes are socket pairs) failed writing with EPIPE/ECONNRESET (zstd and lz4 say "Write error", exit 70).
 */
function killedBySigpipe(error: unknown): boolean {
  for (let e = error as { cause?: unknown; details?: { signal?: unknown; stderr?: unknown } } | undefined; e; e = e.cause as typeof e) {
    if (e.details?.signal === 'SIGPIPE') return true;
    if (typeof e.details?.stderr === 'string' && /Broken pipe|Connection reset by peer|Write error/i.test(e.details.stderr)) return true;
  }
  return false;
}

/** `TABLE DATA public accounts owner` entries of a pg_restore --list. */
export function tableDataEntries(list: string): string[] {
  const out: string[] = [];
  for (const line of list.split('\n')) {
    const m = /^\s*\d+;\s+\d+\s+\d+\s+TABLE DATA\s+(\S+)\s+(\S+)/.exec(line);
    if (m) out.push(`${m[1]}.${m[2]}`);
  }
  return out;
}

function missingTables(expected: string[], present: string[]): string[] {
  return expected.filter((t) => !present.some((p) => p === t || (!t.includes('.') && p.endsWith(`.${t}`))));
}

async function pgRestoreFor(artifact: Artifact): Promise<string> {
  const dumped = typeof artifact.meta.pgDumpVersion === 'string' ? parsePgVersion(artifact.meta.pgDumpVersion)?.major : undefined;
  return (await findPgBinary('pg_restore', { minMajor: dumped })).path;
}

/** Extracts a directory-format tar into a fresh folder of tmpDir. */
async function extractDirectory(artifact: Artifact, ctx: Ctx): Promise<string> {
  const dir = join(ctx.tmpDir, `verify-${randomBytes(4).toString('hex')}`);
  await mkdir(dir, { mode: 0o700 });
  await pipeInto(artifact, ctx, 'tar', ['-x', '-C', dir, '-f', '-'], { label: 'tar -x' });
  return dir;
}

async function scanPlain(artifact: Artifact, ctx: Ctx): Promise<{ tables: string[]; complete: boolean }> {
  const plain = plaintextStream(artifact, ctx);
  const tables: string[] = [];
  let complete = false;
  let bytes = 0;
  const rl = createInterface({ input: plain.stream, crlfDelay: Infinity });
  for await (const line of rl) {
    bytes += line.length + 1;
    const m = /^COPY (\S+) \(/.exec(line);
    if (m) tables.push(m[1]!.replace(/"/g, ''));
    if (line === '-- PostgreSQL database dump complete') complete = true;
  }
  await plain.done.catch((error: unknown) => {
    throw failed(artifact, `it is truncated or corrupt (${why(error)})`, error);
  });
  if (bytes === 0) throw failed(artifact, 'it is empty');
  return { tables, complete };
}

export async function verifyDatabaseArtifact(artifact: Artifact, options: VerifyOptions, ctx: Ctx): Promise<Verification> {
  const started = Date.now();
  if (artifact.bytes === 0) throw failed(artifact, 'it is empty');
  let tables: string[];
  let dir: string | undefined;
  let fullRead = false;
  const pgRestore = artifact.format === 'pg-plain' ? '' : await pgRestoreFor(artifact);

  if (artifact.format === 'pg-plain') {
    const scan = await scanPlain(artifact, ctx);
    if (!scan.complete) throw failed(artifact, 'the SQL dump is truncated (no "PostgreSQL database dump complete" trailer)');
    tables = scan.tables;
    fullRead = true;
  } else if (artifact.format === 'pg-directory-tar') {
    dir = await extractDirectory(artifact, ctx);
    const list = await ctx.exec(pgRestore, ['--list', dir], { label: 'pg_restore --list' }).catch((error: unknown) => {
      throw failed(artifact, `it is not a readable directory archive (${why(error)})`, error);
    });
    tables = tableDataEntries(list.stdout);
    if (options.fullRead && !options.restoreTest) {
      await ctx.exec(pgRestore, ['--file=/dev/null', dir], { label: 'pg_restore' }).catch((error: unknown) => {
        throw failed(artifact, `it is truncated or corrupt (${why(error)})`, error);
      });
      fullRead = true;
    }
  } else if (artifact.format === 'pg-custom') {
    const list = await pipeInto(artifact, ctx, pgRestore, ['--list'], { label: 'pg_restore --list', partial: true, fullReadFollows: options.fullRead || options.restoreTest, direct: true });
    tables = tableDataEntries(list);
    if (options.fullRead && !options.restoreTest) {
      await pipeInto(artifact, ctx, pgRestore, ['--file=/dev/null'], { label: 'pg_restore', direct: true });
      fullRead = true;
    }
  } else {
    throw failed(artifact, `format ${artifact.format} cannot be verified (expected pg-custom, pg-directory-tar or pg-plain)`);
  }

  if (tables.length === 0) throw failed(artifact, 'the archive holds no TABLE DATA: it contains no rows of any table');
  const missing = missingTables(options.expectTables, tables);
  if (missing.length > 0) {
    throw failed(artifact, `expected tables are missing from the dump: ${missing.join(', ')} (it has ${tables.length} tables with data)`);
  }

  const verification: Verification = {
    verifiedAt: new Date().toISOString(),
    listed: true,
    tableData: tables.length,
    fullRead,
    expectTables: options.expectTables,
    durationMs: 0,
  };
  if (options.restoreTest) {
    verification.restoreTest = await restoreTest(artifact, options, ctx, dir);
    verification.fullRead = true;
  }
  if (dir) await rm(dir, { recursive: true, force: true });
  verification.durationMs = Date.now() - started;
  return verification;
}

async function restoreTest(artifact: Artifact, options: VerifyOptions, ctx: Ctx, dir: string | undefined): Promise<NonNullable<Verification['restoreTest']>> {
  const source = ctx.pg;
  if (!source) throw new PipelineError('CREDENTIALS_MISSING', 'restoreTest needs the database connection of a credentials stage', { hint: 'Add a credentials stage before verify.' });
  const started = Date.now();
  const scratch = `bp_verify_${randomBytes(6).toString('hex')}`;
  const q = { signal: ctx.signal, secrets: ctx.secrets };
  try {
    await psql(source, `CREATE DATABASE ${quoteIdent(scratch)} TEMPLATE template0`, q);
  } catch (error) {
    const conn = pgConnectionError(error, source);
    if (conn && conn.code !== 'INSUFFICIENT_PRIVILEGE') throw conn;
    throw new PipelineError('VERIFY_RESTORE_UNAVAILABLE', `${source.user} cannot create the scratch database for the restore test: ${why(error)}`, {
      hint: `Allow it (as a superuser: ALTER ROLE ${quoteIdent(source.user)} CREATEDB;) or set restoreTest: false.`,
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
    ctx.progress({ task: 'restore-test', message: scratch });
    const report = await restoreArtifact(artifact, { database: scratch, jobs: options.jobs, dir }, ctx).catch((error: unknown) => {
      if ((error as PipelineError).code === 'VERIFY_FAILED') throw error;
      throw failed(artifact, `the test restore failed (${why(error)})`, error);
    });
    if (report.mismatches.length > 0) {
      const m = report.mismatches;
      throw failed(artifact, `the test restore does not match the dump's row counts: ${m.slice(0, 5).join('; ')}${m.length > 5 ? ` (+${m.length - 5} more)` : ''}`);
    }
    return { database: scratch, jobs: options.jobs, tables: report.tables, rows: report.rows, matched: report.tables, durationMs: Date.now() - started };
  } finally {
    await drop();
  }
}

/** Session settings for pg_restore (and psql for plain dumps) during a restore. */
export const RESTORE_PGOPTIONS = '-c maintenance_work_mem=256MB -c synchronous_commit=off';

export interface RestoreReport {
  database: string;
  tables: number;
  rows: number;
  /** Per table: rows counted in the dump's snapshot, and restored. */
  counts: Array<{ table: string; expected?: number; restored?: number }>;
  /** Tables whose restored row count differs from the dump's snapshot. */
  mismatches: string[];
  durationMs: number;
}

/**
 * Restores a database artifact into the existing database `target.database` (pg_restore -j from a
 * seekable file, or a stream), then counts each table's rows and compares them with the counts
 * taken in the dump's snapshot. Used by the restore test and by `pipeline restore`.
 */
export async function restoreArtifact(
  artifact: Artifact,
  target: { database: string; jobs: number; clean?: boolean; dir?: string },
  ctx: Ctx,
): Promise<RestoreReport> {
  const source = ctx.pg;
  if (!source) throw new PipelineError('CREDENTIALS_MISSING', 'restoring needs the database connection of a credentials stage', { hint: 'Add a credentials stage to the pipeline.' });
  const started = Date.now();
  const database = target.database;
  const q = { signal: ctx.signal, secrets: ctx.secrets };
  // Index builds dominate a restore: give them memory (PostgreSQL's default maintenance_work_mem
  // is 64MB), and do not wait for WAL flushes of a database that is being rebuilt anyway.
  // Both are per-session (USERSET) settings any role may use; pg_restore -j opens one session per job.
  const env = { ...pgEnv(source, database), PGOPTIONS: RESTORE_PGOPTIONS };
  const pgRestore = artifact.format === 'pg-plain' ? '' : await pgRestoreFor(artifact);
  const restoreArgs = ['--no-owner', '--no-acl', '--exit-on-error', `--dbname=${database}`, ...(target.clean ? ['--clean', '--if-exists'] : [])];
  let dir = target.dir;
  const extracted = !dir && artifact.format === 'pg-directory-tar';
  if (extracted) dir = await extractDirectory(artifact, ctx);
  try {
    if (artifact.format === 'pg-plain') {
      await pipeInto(artifact, ctx, (await findPgBinary('psql')).path, ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '--dbname', database], { env, label: 'psql (restore)' });
    } else if (dir) {
      await ctx.exec(pgRestore, [...restoreArgs, `--jobs=${target.jobs}`, dir], { env, label: 'pg_restore' });
    } else if (target.jobs > 1) {
      // Parallel restore needs a seekable file: undo the outer compression into one temp file.
      let file = artifact.path;
      if (outerCompression(artifact) !== 'none') {
        file = join(ctx.tmpDir, `restore-${randomBytes(4).toString('hex')}.dump`);
        await decompressToFile(artifact, file, ctx).catch((error: unknown) => {
          throw failed(artifact, `it is truncated or corrupt (${why(error)})`, error);
        });
      }
      try {
        await ctx.exec(pgRestore, [...restoreArgs, `--jobs=${target.jobs}`, file], { env, label: 'pg_restore' });
      } finally {
        if (file !== artifact.path) await rm(file, { force: true });
      }
    } else {
      await pipeInto(artifact, ctx, pgRestore, restoreArgs, { env, label: 'pg_restore' });
    }
  } finally {
    if (extracted && dir) await rm(dir, { recursive: true, force: true });
  }

  const expected = (artifact.meta.rowCounts ?? {}) as Record<string, number>;
  const names = Object.keys(expected);
  const restored: Record<string, number> = {};
  if (names.length > 0) {
    const present = await psql(
      source,
      `SELECT n.nspname || '.' || c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname || '.' || c.relname IN (${names.map(quoteLiteral).join(', ')})`,
      { ...q, database },
    );
    const have = new Set(present.map((r) => r[0]!));
    const countable = names.filter((n) => have.has(n));
    for (let i = 0; i < countable.length; i += 200) {
      const batch = countable.slice(i, i + 200);
      const sql = batch
        .map((n) => {
          const dot = n.indexOf('.');
          return `SELECT ${quoteLiteral(n)}, count(*) FROM ${quoteIdent(n.slice(0, dot))}.${quoteIdent(n.slice(dot + 1))}`;
        })
        .join(' UNION ALL ');
      for (const [name, count] of await psql(source, sql, { ...q, database })) restored[name!] = Number(count);
    }
  }
  const filtered = artifact.meta.filters !== undefined;
  const mismatches = names
    .filter((n) => (n in restored ? restored[n] !== expected[n] : !filtered && expected[n]! > 0))
    .map((n) => `${n}: ${expected[n]} in the dump's snapshot, ${n in restored ? restored[n] : 'table missing'} restored`);
  return {
    database,
    tables: Object.keys(restored).length,
    rows: Object.values(restored).reduce((a, b) => a + b, 0),
    counts: names.map((table) => ({ table, expected: expected[table], restored: restored[table] })),
    mismatches,
    durationMs: Date.now() - started,
  };
}
