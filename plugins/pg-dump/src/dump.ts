/**
 * Running pg_dump: choosing binaries that match the server, building the argv, and streaming the
 * output through an optional compressor into the set (hashed while written, never buffered),
 * checking every process's exit status and rejecting empty or malformed output.
 */
import { existsSync } from 'node:fs';
import { rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import {
  COMPRESSION_EXTENSION,
  displayCommand,
  exec,
  findPgBinary,
  parsePgVersion,
  pgConnectionError,
  pgEnv,
  PipelineError,
  psql,
  type Artifact,
  type KnownCompression as Compression,
  type ExecOptions,
  type ExecProcess,
  type PgBinary,
  type PgSource,
  type RunContext,
  type StreamedArtifact,
} from '@backup-pipeline/core';
import { compressCommand, defaultLevel, type CompressionOptions } from './compression.js';
import { SnapshotSession } from './snapshot-session.js';
import { watchTables } from './table-progress.js';

export type DumpFormat = 'custom' | 'directory' | 'plain';

export interface DumpOptions {
  format: DumpFormat;
  jobs: number;
  compression: CompressionOptions;
  lockWaitTimeout: string;
  schemas: string[];
  excludeSchemas: string[];
  tables: string[];
  excludeTables: string[];
  noBlobs: boolean;
  globals: boolean;
  binDir?: string;
  output?: string;
  countRows: boolean;
}

export interface ServerInfo {
  version: string;
  versionNum: number;
  major: number;
  databaseSize: number;
  superuser: boolean;
}

export interface Binaries {
  pgDump: PgBinary;
  pgDumpall?: PgBinary;
  psql: string;
  compressor?: { command: string; version: string };
}

export async function serverInfo(source: PgSource, ctx: Pick<RunContext, 'signal' | 'secrets'>): Promise<ServerInfo> {
  let rows: string[][];
  try {
    rows = await psql(
      source,
      `SELECT current_setting('server_version_num'), current_setting('server_version'), pg_database_size(current_database()), coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false)`,
      { signal: ctx.signal, secrets: ctx.secrets },
    );
  } catch (error) {
    throw pgConnectionError(error, source) ?? error;
  }
  const [num, version, size, superuser] = rows[0] ?? [];
  const versionNum = Number(num);
  return { version: version ?? '', versionNum, major: Math.floor(versionNum / 10000), databaseSize: Number(size), superuser: superuser === 't' };
}

async function binaryIn(dir: string, name: string, minMajor: number): Promise<PgBinary> {
  const path = join(dir, name);
  const out = await exec(path, ['--version'], { label: name }).catch((error: unknown) => {
    throw new PipelineError('EXEC_NOT_FOUND', `${name} was not found in binDir ${dir}`, { cause: error, hint: 'Fix binDir: it must be a PostgreSQL bin folder such as /usr/lib/postgresql/16/bin.' });
  });
  const parsed = parsePgVersion(out.stdout);
  if (!parsed) throw new PipelineError('PG_VERSION_MISMATCH', `cannot read the version of ${path}`, { hint: 'Fix binDir.' });
  if (parsed.major < minMajor) {
    throw new PipelineError('PG_VERSION_MISMATCH', `the server runs PostgreSQL ${minMajor} but ${path} is version ${parsed.version}; pg_dump refuses servers newer than itself`, {
      hint: `Install postgresql-client-${minMajor} (or newer) and point binDir at its bin folder (e.g. /usr/lib/postgresql/${minMajor}/bin), or remove binDir to search automatically.`,
    });
  }
  return { path, ...parsed };
}

/** pg_dump (and pg_dumpall) of the server's major version or newer; the compressor checked too. */
export async function pickBinaries(options: DumpOptions, server: ServerInfo, ctx: Pick<RunContext, 'exec'>): Promise<Binaries> {
  const pgDump = options.binDir ? await binaryIn(options.binDir, 'pg_dump', server.major) : await findPgBinary('pg_dump', { minMajor: server.major });
  const pgDumpall = options.globals ? await binaryIn(dirname(pgDump.path), 'pg_dumpall', server.major) : undefined;
  const psqlBin = existsSync(join(dirname(pgDump.path), 'psql')) ? join(dirname(pgDump.path), 'psql') : (await findPgBinary('psql')).path;
  const streamed = streamCompression(options);
  let compressor: Binaries['compressor'];
  const needs = options.globals && options.compression.method !== 'none' ? options.compression.method : streamed;
  if (needs !== 'none') {
    const cmd = compressCommand({ ...options.compression, method: needs })![0];
    const out = await ctx.exec(cmd, ['--version'], { label: cmd });
    compressor = { command: cmd, version: (/v?(\d+\.\d+(\.\d+)?)/.exec(out.stdout + out.stderr)?.[1] ?? 'unknown') };
  }
  return { pgDump, pgDumpall, psql: psqlBin, compressor };
}

/** The compression applied by a separate process on the dump's stream. */
export function streamCompression(options: Pick<DumpOptions, 'compression'>): Compression {
  return options.compression.method === 'gzip' ? 'none' : options.compression.method;
}

const FORMAT_FLAG: Record<DumpFormat, string> = { custom: 'c', directory: 'd', plain: 'p' };
const FORMAT_NAME: Record<DumpFormat, string> = { custom: 'pg-custom', directory: 'pg-directory-tar', plain: 'pg-plain' };
export function artifactName(options: DumpOptions, database: string): string {
  if (options.output) return options.output;
  const base = { custom: `${database}.dump`, directory: `${database}.dir.tar`, plain: `${database}.sql` }[options.format];
  const outer = options.format === 'plain' ? options.compression.method : streamCompression(options);
  return base + COMPRESSION_EXTENSION[outer];
}

/** The pg_dump argv (no secret ever: the password is in PGPASSFILE). */
export function pgDumpArgs(options: DumpOptions, extra: { snapshot?: string; dir?: string } = {}): string[] {
  const gzip = options.compression.method === 'gzip';
  return [
    `--format=${FORMAT_FLAG[options.format]}`,
    '--no-password',
    `--lock-wait-timeout=${options.lockWaitTimeout}`,
    `--compress=${gzip ? (options.compression.level ?? defaultLevel('gzip')) : 0}`,
    ...(options.format === 'directory' && options.jobs > 1 ? [`--jobs=${options.jobs}`] : []),
    ...(extra.snapshot ? [`--snapshot=${extra.snapshot}`] : []),
    ...options.schemas.map((s) => `--schema=${s}`),
    ...options.excludeSchemas.map((s) => `--exclude-schema=${s}`),
    ...options.tables.map((t) => `--table=${t}`),
    ...options.excludeTables.map((t) => `--exclude-table=${t}`),
    ...(options.noBlobs ? ['--no-blobs'] : []),
    ...(extra.dir ? [`--file=${extra.dir}`] : []),
  ];
}

/** Starts the producer with the given stdout. */
type StartProducer = (stdout: ExecOptions['stdout']) => ExecProcess;

/**
 * Makes one artifact in one pass through the core (`ctx.streamArtifact`): the producer writes into
 * the verifiers' tee and the compressor over OS pipes, the transforms' filters (encryption) are
 * spliced after it, and the file is written and hashed once. Every process's status is checked;
 * on any failure nothing is left under the artifact's name and the root cause is thrown.
 */
async function streamArtifact(
  planned: { name: string; kind: string; format: string; compression: Compression; meta: Record<string, unknown> },
  start: StartProducer,
  compression: CompressionOptions,
  ctx: Pick<RunContext, 'streamArtifact' | 'setDir'>,
  task: string,
): Promise<StreamedArtifact> {
  const cmd = compressCommand(compression);
  // pg_dump's own gzip of plain SQL is on the bytes verifiers read; inside an archive it is not (pg_restore reads it).
  const streamCompression: Compression = planned.format === 'pg-plain' && compression.method === 'none' && planned.compression === 'gzip' ? 'gzip' : 'none';
  return ctx.streamArtifact({
    artifact: { ...planned, streamCompression },
    dir: ctx.setDir,
    start,
    compressor: cmd ? { command: cmd[0], args: cmd[1], label: cmd[0] } : undefined,
    task,
  });
}

/** pg_dump's failures that have a better name than EXEC_FAILED. */
function dumpError(error: unknown, source: PgSource, options: DumpOptions): unknown {
  const stderr = String((error as { details?: { stderr?: unknown } })?.details?.stderr ?? '');
  // pg_dump enforces --lock-wait-timeout with a statement timeout around LOCK TABLE.
  const lock =
    /could not obtain lock on relation "?([^"\n]*)"?/i.exec(stderr) ??
    (/(statement|lock) timeout/i.test(stderr) ? (/Query was: LOCK TABLE (\S+)/i.exec(stderr) ?? (/lock timeout/i.test(stderr) ? ['', ''] : null)) : null);
  if (lock) {
    return new PipelineError('DUMP_LOCK_TIMEOUT', `pg_dump gave up after waiting ${options.lockWaitTimeout} for a lock${lock[1] ? ` on ${lock[1]}` : ''}`, {
      hint: 'Another session holds an exclusive lock (often a Mastodon db:migrate during an upgrade). Run the backup again when it has finished, or raise lockWaitTimeout.',
      cause: error,
    });
  }
  return pgConnectionError(error, source) ?? error;
}

export interface DumpResult {
  artifacts: Artifact[];
}

export async function runDump(ctx: RunContext, options: DumpOptions, source: PgSource, bins: Binaries, server: ServerInfo): Promise<DumpResult> {
  const started = Date.now();
  const name = artifactName(options, source.database);
  const env = pgEnv(source);
  const session = await SnapshotSession.open(ctx, bins.psql, source).catch((error: unknown) => {
    throw pgConnectionError(error, source) ?? error;
  });
  const artifacts: Artifact[] = [];
  const tables = watchTables(source, ctx, bins.psql);
  let dumped = false; // once true, the table poller is already stopped
  let made: StreamedArtifact | undefined;
  try {
    let counts: Promise<Record<string, number>> | undefined;
    const streamed: CompressionOptions = { ...options.compression, method: options.format === 'plain' && options.compression.method === 'gzip' ? 'none' : streamCompression(options) };
    const outer = streamed.method;
    // Filled in once the dump is done; verifiers and transforms see the same object.
    const meta: Record<string, unknown> = {
      database: source.database,
      serverVersion: server.version,
      pgDumpVersion: bins.pgDump.version,
      compressedBy: options.compression.method === 'none' ? undefined : outer === 'none' ? 'pg_dump' : 'stream',
      compressionLevel: options.compression.level ?? defaultLevel(options.compression.method),
      jobs: options.format === 'directory' ? options.jobs : 1,
    };
    const planned = { name, kind: 'database', format: FORMAT_NAME[options.format], compression: options.compression.method, meta };
    if (options.format === 'directory') {
      const dir = join(ctx.tmpDir, `pg_dump-${source.database.replace(/[^\w.-]/g, '_')}`);
      const dump = ctx.exec(bins.pgDump.path, pgDumpArgs(options, { snapshot: session.snapshot, dir }), { env, label: 'pg_dump', writes: dir });
      counts = options.countRows ? session.countRows() : undefined;
      counts?.catch(() => undefined);
      await dump.catch((error: unknown) => {
        throw dumpError(error, source, options);
      });
      if (!existsSync(join(dir, 'toc.dat'))) throw new PipelineError('DUMP_EMPTY', `pg_dump wrote no toc.dat into ${dir}`, { hint: 'See pg_dump\'s messages above.' });
      made = await streamArtifact(planned, (stdout) => ctx.exec('tar', ['-C', dir, '-cf', '-', '.'], { stdout, label: 'tar' }), streamed, ctx, 'dump');
      await rm(dir, { recursive: true, force: true });
    } else {
      const start: StartProducer = (stdout) => {
        const dump = ctx.exec(bins.pgDump.path, pgDumpArgs(options, { snapshot: session.snapshot }), { env, stdout, label: 'pg_dump' });
        // Row counts in the dump's own exported snapshot, while pg_dump runs.
        counts = options.countRows ? session.countRows() : undefined;
        counts?.catch(() => undefined);
        return dump;
      };
      made = await streamArtifact(planned, start, streamed, ctx, 'dump').catch((error: unknown) => {
        throw dumpError(error, source, options);
      });
    }
    if (made.head.length === 0) {
      throw new PipelineError('DUMP_EMPTY', `pg_dump produced no output for ${source.database}`, { hint: 'An empty dump is never a backup; see the messages above.' });
    }
    if (options.format === 'custom' && made.head.subarray(0, 5).toString('latin1') !== 'PGDMP') {
      throw new PipelineError('DUMP_INVALID', `pg_dump's output for ${source.database} is not a custom-format archive`, { hint: 'Check the pg_dump binary (binDir).' });
    }
    dumped = true;
    await tables.stop(true);
    const rowCounts = counts ? await counts : undefined;
    await session.close();
    Object.assign(meta, {
      uncompressedBytes: made.plainBytes,
      durationMs: Date.now() - started,
      ...(options.schemas.length || options.tables.length || options.excludeSchemas.length || options.excludeTables.length
        ? { filters: { schemas: options.schemas, excludeSchemas: options.excludeSchemas, tables: options.tables, excludeTables: options.excludeTables } }
        : {}),
      ...(rowCounts ? { rowCounts, tables: Object.keys(rowCounts).length } : {}),
    });
    artifacts.push(made.artifact);
  } catch (error) {
    if (!dumped) await tables.stop(false);
    session.kill();
    if (made) await rm(made.artifact.path, { force: true });
    throw error;
  }

  if (options.globals && bins.pgDumpall) {
    const gname = `${source.database}.globals.sql${COMPRESSION_EXTENSION[options.compression.method]}`;
    const args = ['--globals-only', '--no-password', `--database=${source.database}`, ...(server.superuser ? [] : ['--no-role-passwords'])];
    const pgDumpall = bins.pgDumpall.path;
    const meta = { database: source.database, serverVersion: server.version, rolePasswords: server.superuser, compressedBy: options.compression.method === 'none' ? undefined : 'stream' };
    const planned = { name: gname, kind: 'globals', format: 'pg-plain', compression: options.compression.method, meta };
    const g = await streamArtifact(planned, (stdout) => ctx.exec(pgDumpall, args, { env, stdout, label: 'pg_dumpall' }), options.compression, ctx, 'globals');
    if (g.head.length === 0) {
      await rm(g.artifact.path, { force: true });
      throw new PipelineError('DUMP_EMPTY', 'pg_dumpall --globals-only produced no output');
    }
    artifacts.push(g.artifact);
  }
  return { artifacts };
}

/** The command line(s) the plan shows, masked. */
export function describeDump(options: DumpOptions, source: PgSource, bins: Binaries | undefined, ctx: Pick<RunContext, 'setDir' | 'secrets'>): string {
  const name = artifactName(options, source.database);
  const pgDump = bins?.pgDump.path ?? 'pg_dump';
  const args = pgDumpArgs(options, { snapshot: 'SNAPSHOT', ...(options.format === 'directory' ? { dir: 'TMPDIR/dump' } : {}) });
  let line = displayCommand(pgDump, args, ctx.secrets);
  if (options.format === 'directory') line += ' && tar -C TMPDIR/dump -cf - .';
  const cmd = compressCommand({ ...options.compression, method: options.format === 'plain' && options.compression.method === 'gzip' ? 'none' : streamCompression(options) });
  if (cmd) line += ' | ' + displayCommand(cmd[0], cmd[1]);
  return `${line} > ${join(ctx.setDir, name)}`;
}

export async function fileBytes(path: string): Promise<number> {
  return (await stat(path)).size;
}
