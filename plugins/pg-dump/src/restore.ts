/**
 * Reading pg-dump's artifacts back: restoring each of its formats (custom, directory, plain SQL,
 * and the globals of pg_dumpall) into a database, streaming the outer compression away on the way.
 * The `restore` and `decompress` taps of the pg-dump plugin call these; the verify stage's checks
 * use `pipeInto` and `extractDirectory` to read archives.
 */
import { randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { mkdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import type { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  fileSystemError,
  findPgBinary,
  isChainConsequence,
  parsePgVersion,
  pgEnv,
  PipelineError,
  psql,
  quoteIdent,
  quoteLiteral,
  type Artifact,
  type PgSource,
  type RestoreInput,
  type RestoreReport,
  type RunContext,
} from '@backup-pipeline/core';
import { decompressCommand, decompressToFile, outerCompression, plaintextInto, plaintextStream } from './compression.js';

type Ctx = Pick<RunContext, 'exec' | 'signal' | 'secrets' | 'tmpDir' | 'defer' | 'log' | 'progress'> & { pg?: PgSource };

/** Builds the error for an artifact that cannot be read (the verify stage passes its own VERIFY_FAILED). */
export type FailFn = (artifact: Artifact, why: string, cause?: unknown) => PipelineError;

const restoreFailed: FailFn = (artifact, why, cause) =>
  new PipelineError('RESTORE_FAILED', `${artifact.name}: ${why}`, {
    hint: 'The restore stopped; a database it created was dropped. See the message for the tool that failed.',
    cause,
    details: { artifact: artifact.name },
  });
const failed = restoreFailed;

export function why(error: unknown): string {
  const e = error as { message?: string; details?: { stderr?: string; errors?: unknown } };
  // A PostgreSQL client's cause is in its ERROR/FATAL lines, which can be far from the end of its
  // stderr (the end of a failed statement's text); other tools end with it.
  const errors = Array.isArray(e?.details?.errors) ? (e.details.errors as string[]) : [];
  const tail = errors.length > 0 ? errors.slice(0, 3).join(' | ') : (e?.details?.stderr?.trim().split('\n').slice(-2).join(' ') ?? '');
  return (tail || e?.message || String(error)).slice(0, 600);
}

/** Failures that say nothing about the artifact: a full disk, no permission, an interruption. */
function notAboutTheArtifact(error: unknown): boolean {
  return ['NO_SPACE', 'ACCESS_DENIED', 'ABORTED'].includes((error as { code?: string } | undefined)?.code ?? '');
}

/** The server refused a statement (`ERROR:  permission denied…`): the archive itself was read fine. */
function serverRefused(error: unknown): boolean {
  const errors = (error as { details?: { errors?: unknown } } | undefined)?.details?.errors;
  return Array.isArray(errors) && errors.some((l) => /(ERROR|FATAL|PANIC): {2}/.test(String(l)));
}

/**
 * Runs a consumer with the artifact's plaintext on stdin; checks both the decompressor and the
 * consumer. A consumer that stops reading early (`--list` reads only the table of contents)
 * must not leave the decompressor blocked on a full pipe: it is stopped once the consumer is done.
 */
export async function pipeInto(
  artifact: Artifact,
  ctx: Ctx,
  file: string,
  args: string[],
  options: { env?: Record<string, string | undefined>; label: string; partial?: boolean; fullReadFollows?: boolean; direct?: boolean; fail?: FailFn },
): Promise<string> {
  const failed = options.fail ?? restoreFailed;
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
  // A consumer that failed (a full disk under tar -x, a refused statement) leaves the decompressor
  // writing into nothing: its EPIPE, or our stopping it, is a consequence, not a corrupt file.
  if (!consumer.ok && producer && !producer.ok && (killedBySigpipe(producer.reason) || isChainConsequence(producer.reason))) producer = { ok: true };
  const failedOnItsOwn = producer && !producer.ok ? producer.reason : undefined;
  if (!producer) {
    if (options.partial || !consumer.ok) plain.cancel();
    else plain.stream?.resume(); // the consumer read what it needed: drain the rest
    await producerDone;
  }
  if (failedOnItsOwn !== undefined) {
    if (notAboutTheArtifact(failedOnItsOwn)) throw failedOnItsOwn;
    throw failed(artifact, `it is truncated or corrupt (${why(failedOnItsOwn)})`, failedOnItsOwn);
  }
  if (!consumer.ok) {
    if (notAboutTheArtifact(consumer.reason)) throw consumer.reason;
    if (serverRefused(consumer.reason)) throw failed(artifact, `${options.label} failed: ${why(consumer.reason)}`, consumer.reason);
    throw failed(artifact, `it is not a readable PostgreSQL archive (${options.label}: ${why(consumer.reason)})`, consumer.reason);
  }
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

/** A pg_restore at least as new as the pg_dump that wrote the artifact. */
export async function pgRestoreFor(artifact: Pick<Artifact, 'meta'>): Promise<string> {
  const dumped = typeof artifact.meta.pgDumpVersion === 'string' ? parsePgVersion(artifact.meta.pgDumpVersion)?.major : undefined;
  return (await findPgBinary('pg_restore', { minMajor: dumped })).path;
}

/** Extracts a directory-format tar into a fresh folder of tmpDir. */
export async function extractDirectory(artifact: Artifact, ctx: Ctx, fail: FailFn = restoreFailed): Promise<string> {
  const dir = join(ctx.tmpDir, `pgdir-${randomBytes(4).toString('hex')}`);
  await mkdir(dir, { mode: 0o700 });
  await pipeInto(artifact, ctx, 'tar', ['-x', '-C', dir, '-f', '-'], { label: 'tar -x', fail });
  return dir;
}

/**
 * Session settings (PGOPTIONS) for pg_restore, and psql for plain dumps, during a restore. Index
 * builds dominate a restore: they get memory (PostgreSQL's default maintenance_work_mem is 64MB),
 * and nothing waits for WAL flushes of a database that is being rebuilt anyway. With `jobs` > 1
 * pg_restore already builds that many indexes at once; PostgreSQL's parallel index builds on top
 * (two more workers per build from 256MB on) compete for the same cores and cost more CPU in all
 * (bench/README.md, seventh run): one kind of parallelism at a time. A drill's throwaway cluster
 * (`ownCluster`) has the memory and durability settings already. All are per-session (USERSET)
 * settings any role may use; pg_restore -j opens one session per job.
 */
export function restoreSessionOptions(jobs: number, ownCluster = false): string | undefined {
  const options = [...(ownCluster ? [] : ['-c maintenance_work_mem=256MB', '-c synchronous_commit=off']), ...(jobs > 1 ? ['-c max_parallel_maintenance_workers=0'] : [])];
  return options.length > 0 ? options.join(' ') : undefined;
}

/**
 * Restores a database artifact into the existing database `target.database` (pg_restore -j from a
 * seekable file, or a stream), then counts each table's rows and compares them with the counts
 * taken in the dump's snapshot. pg-dump's `restore` taps call it: `pipeline restore` and the
 * verify stage's restore test both come here through the hook.
 */
export async function restoreArtifact(
  artifact: Artifact,
  target: { database: string; jobs: number; clean?: boolean; dir?: string; server?: PgSource },
  ctx: Ctx,
): Promise<RestoreReport> {
  // A drill's throwaway cluster, or the server of the credentials stage.
  const source = target.server ?? ctx.pg;
  if (!source) throw new PipelineError('CREDENTIALS_MISSING', 'restoring needs the database connection of a credentials stage', { hint: 'Add a credentials stage to the pipeline.' });
  const started = Date.now();
  const database = target.database;
  const env = { ...pgEnv(source, database), PGOPTIONS: restoreSessionOptions(artifact.format === 'pg-plain' ? 1 : target.jobs, !!target.server) };
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
          if (notAboutTheArtifact(error)) throw error;
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
  return countRestored(artifact, database, started, ctx, source);
}

/** Counts each table's rows in the restored database and compares them with the dump's snapshot. */
async function countRestored(artifact: Artifact, database: string, started: number, ctx: Ctx, source: PgSource = ctx.pg!): Promise<RestoreReport> {
  const q = { signal: ctx.signal, secrets: ctx.secrets };
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
    artifact: artifact.name,
    into: database,
    tables: Object.keys(restored).length,
    rows: Object.values(restored).reduce((a, b) => a + b, 0),
    counts: names.map((table) => ({ table, expected: expected[table], restored: restored[table] })),
    mismatches,
    durationMs: Date.now() - started,
  };
}

/**
 * Feeds `stream` (the artifact's bytes, its outer compression still on) into `file args`: through
 * the decompressor (whose stdout is the consumer's stdin, an OS pipe) or straight. Either failing
 * stops both; a decompressor cut off by a consumer that succeeded had nothing left it needed.
 */
async function streamInto(artifact: Artifact, stream: Readable, ctx: Ctx, file: string, args: string[], options: { env?: Record<string, string | undefined>; label: string }): Promise<void> {
  const cmd = decompressCommand(outerCompression(artifact));
  const consumer = ctx.exec(file, args, { stdin: cmd ? { fromProcess: true } : stream, env: options.env, label: options.label });
  const producer = cmd ? ctx.exec(cmd[0], cmd[1], { stdin: stream, stdout: { pipeTo: consumer }, label: `${cmd[0]} -d (${artifact.name})` }) : undefined;
  const [consumed, produced] = await Promise.allSettled([consumer, producer ?? Promise.resolve(undefined)]);
  if (consumed.status === 'rejected') {
    if (produced.status === 'rejected' && !killedBySigpipe(produced.reason) && !isChainConsequence(produced.reason) && !notAboutTheArtifact(produced.reason)) {
      throw failed(artifact, `it is truncated or corrupt (${why(produced.reason)})`, produced.reason);
    }
    if (notAboutTheArtifact(consumed.reason)) throw consumed.reason;
    throw failed(artifact, `${options.label} failed: ${why(consumed.reason)}`, consumed.reason);
  }
  if (produced.status === 'rejected' && !killedBySigpipe(produced.reason)) {
    if (notAboutTheArtifact(produced.reason)) throw produced.reason;
    throw failed(artifact, `it is truncated or corrupt (${why(produced.reason)})`, produced.reason);
  }
}

/** Writes `stream` into `dest` (0600) with the outer compression undone: one file, written once. */
async function streamToFile(artifact: Artifact, stream: Readable, dest: string, ctx: Ctx): Promise<void> {
  const cmd = decompressCommand(outerCompression(artifact));
  // Never made empty first: exec's `stdout: { file }` (without a decompressor, the write stream)
  // creates it 0600; a truncated file would be written back in full on close.
  if (!cmd) {
    await pipeline(stream, createWriteStream(dest, { flags: 'wx', mode: 0o600 })).catch((error: unknown) => {
      throw fileSystemError(error, dest);
    });
    return;
  }
  await ctx.exec(cmd[0], cmd[1], { stdin: stream, stdout: { file: dest }, label: `${cmd[0]} -d (${artifact.name})`, writes: dest }).catch((error: unknown) => {
    if (notAboutTheArtifact(error)) throw error;
    throw failed(artifact, `it is truncated or corrupt (${why(error)})`, error);
  });
}

/**
 * The `restoreStream` tap: restores a database artifact from the core's checked stream, in one
 * pass. `--jobs 1` (or plain SQL) into a database this restore created goes straight into
 * pg_restore (psql); otherwise the stream is decompressed into the one seekable file
 * `pg_restore -j` needs (a directory tar is extracted), which is restored from only once the
 * core's checks passed. A failure of the checks is the cause reported, over the tools' own.
 */
export async function restoreFromStream(artifact: Artifact, target: { database: string; jobs: number; clean?: boolean }, input: RestoreInput, ctx: Ctx): Promise<RestoreReport> {
  const source = ctx.pg;
  if (!source) throw new PipelineError('CREDENTIALS_MISSING', 'restoring needs the database connection of a credentials stage', { hint: 'Add a credentials stage to the pipeline.' });
  const started = Date.now();
  const scratch = join(ctx.tmpDir, `restore-${randomBytes(4).toString('hex')}`);
  const plainArtifact: Artifact = { ...artifact, compression: 'none', path: scratch };
  try {
    if (artifact.format === 'pg-directory-tar') {
      await mkdir(scratch, { mode: 0o700 });
      await streamInto(artifact, input.stream, ctx, 'tar', ['-x', '-C', scratch, '-f', '-'], { label: 'tar -x' });
      await input.checked;
      return await restoreArtifact(plainArtifact, { ...target, dir: scratch }, ctx);
    }
    if (input.targetDisposable && (artifact.format === 'pg-plain' || target.jobs <= 1)) {
      const env = { ...pgEnv(source, target.database), PGOPTIONS: restoreSessionOptions(1) };
      if (artifact.format === 'pg-plain') {
        await streamInto(artifact, input.stream, ctx, (await findPgBinary('psql')).path, ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '--dbname', target.database], { env, label: 'psql (restore)' });
      } else {
        const args = ['--no-owner', '--no-acl', '--exit-on-error', `--dbname=${target.database}`, ...(target.clean ? ['--clean', '--if-exists'] : [])];
        ctx.log.info({ artifact: artifact.name, database: target.database }, `${artifact.name}: streamed straight into pg_restore (no file)`);
        await streamInto(artifact, input.stream, ctx, await pgRestoreFor(artifact), args, { env, label: 'pg_restore' });
      }
      await input.checked;
      return await countRestored(artifact, target.database, started, ctx);
    }
    await streamToFile(artifact, input.stream, scratch, ctx);
    await input.checked;
    return await restoreArtifact(plainArtifact, target, ctx);
  } catch (error) {
    // Stop reading: the core reads the rest to the end and says whether the input was damaged.
    input.stream.destroy();
    const check = await input.checked.then(
      () => undefined,
      (e: unknown) => e,
    );
    throw check !== undefined && !isChainConsequence(check) ? check : error;
  } finally {
    input.stream.destroy();
    await rm(scratch, { recursive: true, force: true });
  }
}

/**
 * Roles and tablespaces: replayed statement by statement (ON_ERROR_STOP off), because the target
 * server already has some of the roles; each failed statement is reported as a warning.
 */
export async function restoreGlobals(globals: Artifact, ctx: Ctx): Promise<RestoreReport> {
  const started = Date.now();
  const plain = plaintextStream(globals, ctx);
  const psqlPath = (await findPgBinary('psql')).path;
  const result = await ctx.exec(psqlPath, ['-X', '-q', '-v', 'ON_ERROR_STOP=0', '--dbname', 'postgres'], { stdin: plain.stream, env: pgEnv(ctx.pg!, 'postgres'), label: 'psql (globals)' });
  await plain.done;
  const errors = result.stderr.split('\n').filter((line) => line.includes('ERROR:'));
  for (const line of errors) ctx.log.warn(`globals: ${line.replace(/^psql:[^E]*/, '')}`);
  ctx.log.info(`roles and tablespaces replayed (${errors.length} statement(s) failed, e.g. roles that already exist)`);
  return { artifact: globals.name, into: 'roles and tablespaces', mismatches: [], durationMs: Date.now() - started };
}
