/**
 * Running pg_dump: choosing binaries that match the server, building the argv, and streaming the
 * output through an optional compressor into the set (hashed while written, never buffered),
 * checking every process's exit status and rejecting empty or malformed output.
 */
import { existsSync } from 'node:fs';
import { rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { Transform, type Readable } from 'node:stream';
import {
  displayCommand,
  exec,
  findPgBinary,
  parsePgVersion,
  pgConnectionError,
  pgEnv,
  PipelineError,
  psql,
  settleChain,
  writeFileAtomic,
  type Artifact,
  type KnownCompression as Compression,
  type ExecOptions,
  type ExecProcess,
  type PgBinary,
  type PgSource,
  type RunContext,
} from '@backup-pipeline/core';
import { compressCommand, decompressCommand, defaultLevel, type CompressionOptions } from './compression.js';
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
const EXT: Record<Compression, string> = { zstd: '.zst', lz4: '.lz4', gzip: '.gz', none: '' };

export function artifactName(options: DumpOptions, database: string): string {
  if (options.output) return options.output;
  const base = { custom: `${database}.dump`, directory: `${database}.dir.tar`, plain: `${database}.sql` }[options.format];
  const outer = options.format === 'plain' ? options.compression.method : streamCompression(options);
  return base + EXT[outer];
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

/** Counts bytes and keeps the first few, on the way from the producer to the compressor. */
class HeadCounter extends Transform {
  bytes = 0;
  head = Buffer.alloc(0);
  override _transform(chunk: Buffer, _e: BufferEncoding, done: (e?: Error | null, d?: Buffer) => void): void {
    if (this.head.length < 16) this.head = Buffer.concat([this.head, chunk.subarray(0, 16 - this.head.length)]);
    this.bytes += chunk.length;
    done(null, chunk);
  }
}

/** The first bytes of a compressed file's plaintext (empty when the plaintext is empty). */
async function plaintextHead(path: string, method: Compression, ctx: Pick<RunContext, 'exec'>): Promise<Buffer> {
  const cmd = decompressCommand(method)!;
  const proc = ctx.exec(cmd[0], [...cmd[1], path], { stdout: 'stream', label: `${cmd[0]} -d` });
  let head = Buffer.alloc(0);
  try {
    for await (const chunk of proc.stdout!) {
      head = Buffer.concat([head, chunk as Buffer]);
      if (head.length >= 16) break;
    }
  } finally {
    proc.kill();
    await proc.catch(() => undefined);
  }
  return head.subarray(0, 16);
}

/** Starts the producer with the given stdout. */
type StartProducer = (stdout: ExecOptions['stdout']) => ExecProcess;

/**
 * Streams the producer's stdout through the compressor (if any) into `path`. With a compressor
 * the producer writes straight into it over an OS pipe (the uncompressed bytes never pass through
 * Node.js; Node hashes and writes the compressed side), and the header is read back from the
 * file; `plainBytes` is then unknown unless the plaintext is empty. Every process's status is
 * checked; on any failure the file is removed and the root cause thrown.
 */
async function streamToFile(
  start: StartProducer,
  compression: CompressionOptions,
  path: string,
  ctx: Pick<RunContext, 'exec' | 'signal' | 'progress'>,
  task: string,
): Promise<{ bytes: number; sha256: string; plainBytes: number | undefined; head: Buffer; producer: ExecProcess }> {
  const cmd = compressCommand(compression);
  let counter: HeadCounter | undefined;
  let producer: ExecProcess;
  let compressor: ExecProcess | undefined;
  if (cmd) {
    compressor = ctx.exec(cmd[0], cmd[1], { stdin: { fromProcess: true }, stdout: 'stream', label: cmd[0] });
    producer = start({ pipeTo: compressor });
  } else {
    producer = start('stream');
    const c = new HeadCounter();
    counter = c;
    producer.stdout!.pipe(c);
    producer.stdout!.on('error', (e) => c.destroy(e));
  }
  const source: Readable = compressor ? compressor.stdout! : counter!;
  let last = 0;
  const write = writeFileAtomic(path, source, {
    signal: ctx.signal,
    onBytes: (bytes) => {
      if (bytes - last >= 1 << 20) {
        last = bytes;
        ctx.progress({ task, bytes });
      }
    },
  });
  // A member that fails stops the others (nothing stays blocked on a full pipe); the error is the
  // root cause, the earliest failure that is not a consequence: a full disk fails the write, then
  // pg_dump reports "terminated by user".
  const results = await settleChain([producer, compressor ?? Promise.resolve(undefined), write] as const, () => {
    compressor?.kill();
    producer.kill();
  }).catch(async (error: unknown) => {
    await rm(path, { force: true });
    throw error;
  });
  const digest = results[2];
  ctx.progress({ task, bytes: digest.bytes });
  if (counter) return { ...digest, plainBytes: counter.bytes, head: counter.head, producer };
  const head = await plaintextHead(path, compression.method, ctx).catch(async (e: unknown) => {
    await rm(path, { force: true });
    throw e;
  });
  return { ...digest, plainBytes: head.length === 0 ? 0 : undefined, head, producer };
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
  const path = join(ctx.setDir, name);
  const env = pgEnv(source);
  const session = await SnapshotSession.open(ctx, bins.psql, source).catch((error: unknown) => {
    throw pgConnectionError(error, source) ?? error;
  });
  const artifacts: Artifact[] = [];
  const tables = watchTables(source, ctx, bins.psql);
  let dumped = false; // once true, the table poller is already stopped
  try {
    let counts: Promise<Record<string, number>> | undefined;
    let written: Awaited<ReturnType<typeof streamToFile>>;
    const streamed: CompressionOptions = { ...options.compression, method: options.format === 'plain' && options.compression.method === 'gzip' ? 'none' : streamCompression(options) };
    if (options.format === 'directory') {
      const dir = join(ctx.tmpDir, `pg_dump-${source.database.replace(/[^\w.-]/g, '_')}`);
      const dump = ctx.exec(bins.pgDump.path, pgDumpArgs(options, { snapshot: session.snapshot, dir }), { env, label: 'pg_dump', writes: dir });
      counts = options.countRows ? session.countRows() : undefined;
      counts?.catch(() => undefined);
      await dump.catch((error: unknown) => {
        throw dumpError(error, source, options);
      });
      if (!existsSync(join(dir, 'toc.dat'))) throw new PipelineError('DUMP_EMPTY', `pg_dump wrote no toc.dat into ${dir}`, { hint: 'See pg_dump\'s messages above.' });
      written = await streamToFile((stdout) => ctx.exec('tar', ['-C', dir, '-cf', '-', '.'], { stdout, label: 'tar' }), streamed, path, ctx, 'dump');
      await rm(dir, { recursive: true, force: true });
    } else {
      const start: StartProducer = (stdout) => {
        const dump = ctx.exec(bins.pgDump.path, pgDumpArgs(options, { snapshot: session.snapshot }), { env, stdout, label: 'pg_dump' });
        counts = options.countRows ? session.countRows() : undefined;
        counts?.catch(() => undefined);
        return dump;
      };
      written = await streamToFile(start, streamed, path, ctx, 'dump').catch((error: unknown) => {
        throw dumpError(error, source, options);
      });
    }
    if (written.plainBytes === 0) {
      await rm(path, { force: true });
      throw new PipelineError('DUMP_EMPTY', `pg_dump produced no output for ${source.database}`, { hint: 'An empty dump is never a backup; see the messages above.' });
    }
    if (options.format === 'custom' && written.head.subarray(0, 5).toString('latin1') !== 'PGDMP') {
      await rm(path, { force: true });
      throw new PipelineError('DUMP_INVALID', `pg_dump's output for ${source.database} is not a custom-format archive`, { hint: 'Check the pg_dump binary (binDir).' });
    }
    dumped = true;
    await tables.stop(true);
    const rowCounts = counts ? await counts : undefined;
    await session.close();
    const outer = streamed.method;
    artifacts.push({
      name,
      path,
      kind: 'database',
      format: FORMAT_NAME[options.format],
      compression: options.compression.method,
      bytes: written.bytes,
      sha256: written.sha256,
      meta: {
        database: source.database,
        serverVersion: server.version,
        pgDumpVersion: bins.pgDump.version,
        compressedBy: options.compression.method === 'none' ? undefined : outer === 'none' ? 'pg_dump' : 'stream',
        compressionLevel: options.compression.level ?? defaultLevel(options.compression.method),
        jobs: options.format === 'directory' ? options.jobs : 1,
        uncompressedBytes: written.plainBytes,
        durationMs: Date.now() - started,
        ...(options.schemas.length || options.tables.length || options.excludeSchemas.length || options.excludeTables.length
          ? { filters: { schemas: options.schemas, excludeSchemas: options.excludeSchemas, tables: options.tables, excludeTables: options.excludeTables } }
          : {}),
        ...(rowCounts ? { rowCounts, tables: Object.keys(rowCounts).length } : {}),
      },
    });
  } catch (error) {
    if (!dumped) await tables.stop(false);
    session.kill();
    await rm(path, { force: true });
    throw error;
  }

  if (options.globals && bins.pgDumpall) {
    const gname = `${source.database}.globals.sql${EXT[options.compression.method]}`;
    const gpath = join(ctx.setDir, gname);
    const args = ['--globals-only', '--no-password', `--database=${source.database}`, ...(server.superuser ? [] : ['--no-role-passwords'])];
    const pgDumpall = bins.pgDumpall.path;
    const g = await streamToFile((stdout) => ctx.exec(pgDumpall, args, { env, stdout, label: 'pg_dumpall' }), options.compression, gpath, ctx, 'globals');
    if (g.plainBytes === 0) throw new PipelineError('DUMP_EMPTY', 'pg_dumpall --globals-only produced no output');
    artifacts.push({
      name: gname,
      path: gpath,
      kind: 'globals',
      format: 'pg-plain',
      compression: options.compression.method,
      bytes: g.bytes,
      sha256: g.sha256,
      meta: { database: source.database, serverVersion: server.version, rolePasswords: server.superuser, compressedBy: options.compression.method === 'none' ? undefined : 'stream' },
    });
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
