/**
 * Proving a database artifact is usable before anything is shipped: its archive opens with
 * `pg_restore --list` and is read to the end (truncation shows), it holds table data, the expected
 * tables are there; optionally it is restored into a scratch database whose row counts must match
 * the counts taken in the dump's own snapshot. The scratch database is always dropped.
 */
import { rm } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import {
  PipelineError,
  type Artifact,
  type PgSource,
  type RunContext,
  type StreamConsumer,
  type VerifyStreamRequest,
} from '@backup-pipeline/core';
import { extractDirectory, pgRestoreFor, pipeInto, plaintextStream } from '@backup-pipeline/plugin-pg-dump';
import { restoreTest, type RestoreInto } from './restore-test.js';

export interface VerifyOptions {
  expectTables: string[];
  fullRead: boolean;
  restoreTest: boolean;
  /** Where the restore test restores (default `auto`): see restore-test.ts. */
  restoreInto?: RestoreInto;
  jobs: number;
}

export interface Verification {
  verifiedAt: string;
  listed: boolean;
  tableData: number;
  fullRead: boolean;
  expectTables: string[];
  restoreTest?: {
    /** A throwaway cluster the run started, or a scratch database on the source server. */
    into: 'scratch-cluster' | 'server';
    database: string;
    /** The version of the server restored into. */
    serverVersion: string;
    jobs: number;
    tables: number;
    rows: number;
    matched: number;
    /** Starting the cluster or creating the database. */
    setupMs: number;
    /** The restore and the row counts. */
    restoreMs: number;
    durationMs: number;
  };
  durationMs: number;
}

export type Ctx = Pick<RunContext, 'exec' | 'signal' | 'secrets' | 'tmpDir' | 'defer' | 'log' | 'progress' | 'restore'> & { pg?: PgSource; facts?: RunContext['facts'] };

export function failed(artifact: Artifact, why: string, cause?: unknown): PipelineError {
  return new PipelineError('VERIFY_FAILED', `${artifact.name}: ${why}`, {
    hint: 'Do not trust this backup: nothing was shipped and retention did not run. Check disk space and the dump stage, then run again.',
    cause,
    details: { artifact: artifact.name },
  });
}

export function why(error: unknown): string {
  const e = error as { message?: string; details?: { stderr?: string; errors?: unknown } };
  // A PostgreSQL client's cause is in its ERROR/FATAL lines (kept by exec), wherever they are.
  const errors = Array.isArray(e?.details?.errors) ? (e.details.errors as string[]) : [];
  const tail = errors.length > 0 ? errors.slice(0, 3).join(' | ') : (e?.details?.stderr?.trim().split('\n').slice(-2).join(' ') ?? '');
  return (tail || e?.message || String(error)).slice(0, 600);
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
    dir = await extractDirectory(artifact, ctx, failed);
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
    const list = await pipeInto(artifact, ctx, pgRestore, ['--list'], { label: 'pg_restore --list', partial: true, fullReadFollows: options.fullRead || options.restoreTest, direct: true, fail: failed });
    tables = tableDataEntries(list);
    if (options.fullRead && !options.restoreTest) {
      await pipeInto(artifact, ctx, pgRestore, ['--file=/dev/null'], { label: 'pg_restore', direct: true, fail: failed });
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
    verification.restoreTest = await restoreTest(artifact, options, ctx);
    verification.fullRead = true;
  }
  if (dir) await rm(dir, { recursive: true, force: true });
  verification.durationMs = Date.now() - started;
  return verification;
}


/**
 * The same checks on the stream while pg-dump makes it (the `verifyStream` hook): `pg_restore
 * --list` (the table of contents) and `pg_restore -f /dev/null` (the full read) of a custom
 * archive, or one `grep` for the COPY lines and the trailer of plain SQL, each reading the plain
 * bytes through the core's tee from a named pipe — no byte through Node.js, no second read of the
 * file. Returns false when this artifact needs the file (a directory tar, a compressed plain dump,
 * a restore test): the `verify` tap then runs on the staged file, as before.
 */
export async function attachStreamVerification(request: VerifyStreamRequest, options: VerifyOptions): Promise<boolean> {
  const planned = request.artifact;
  const artifact = { name: planned.name } as Artifact;
  if (options.restoreTest || planned.streamCompression !== 'none') return false;
  const started = Date.now();
  const record = (tables: string[], fullRead: boolean, a: Artifact) => {
    if (tables.length === 0) throw failed(a, 'the archive holds no TABLE DATA: it contains no rows of any table');
    const missing = missingTables(options.expectTables, tables);
    if (missing.length > 0) throw failed(a, `expected tables are missing from the dump: ${missing.join(', ')} (it has ${tables.length} tables with data)`);
    const verification: Verification = { verifiedAt: new Date().toISOString(), listed: true, tableData: tables.length, fullRead, expectTables: options.expectTables, durationMs: Date.now() - started };
    a.meta.verification = verification;
  };
  if (planned.format === 'pg-custom') {
    const pgRestore = await pgRestoreFor({ meta: planned.meta });
    const list: StreamConsumer = {
      command: pgRestore,
      // The format named: pg_restore would otherwise open the named pipe twice to guess it.
      args: ['--format=custom', '--list'],
      input: 'path',
      partial: true,
      label: 'pg_restore --list',
      fail: (error) => failed(artifact, `it is not a readable PostgreSQL archive (pg_restore --list: ${why(error)})`, error),
      check: (result, a) => record(tableDataEntries(result.stdout), options.fullRead, a),
    };
    request.attach(list);
    if (options.fullRead) {
      request.attach({ command: pgRestore, args: ['--format=custom', '--file=/dev/null'], input: 'path', label: 'pg_restore', fail: (error) => failed(artifact, `it is truncated or corrupt (${why(error)})`, error) });
    }
    return true;
  }
  if (planned.format === 'pg-plain') {
    request.attach({
      command: 'grep',
      args: ['-a', '-E', '-e', '^COPY [^ ]+ \\(', '-e', '^-- PostgreSQL database dump complete$'],
      input: 'path',
      okExitCodes: [0, 1],
      label: 'grep (COPY lines)',
      fail: (error) => failed(artifact, `it cannot be read (${why(error)})`, error),
      check: (result, a) => {
        const lines = result.stdout.split('\n');
        if (!lines.includes('-- PostgreSQL database dump complete')) throw failed(a, 'the SQL dump is truncated (no "PostgreSQL database dump complete" trailer)');
        const tables = lines.flatMap((l) => {
          const m = /^COPY (\S+) \(/.exec(l);
          return m ? [m[1]!.replace(/"/g, '')] : [];
        });
        record(tables, true, a);
      },
    });
    return true;
  }
  return false;
}
