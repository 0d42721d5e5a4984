/**
 * The pg-dump stage: picks a pg_dump matching the server in preflight, then dumps the database in
 * produce — one consistent snapshot shared with the row counts, compressed on the stream, hashed
 * while written, every exit status checked.
 */
import { basename, join } from 'node:path';
import { definePlugin, hashFile, PipelineError, z, type Artifact, type PgSource, type RestoreTarget } from '@backup-pipeline/core';
import { decompressToFile, outerCompression } from './compression.js';
import { restoreArtifact, restoreFromStream, restoreGlobals } from './restore.js';
import { describeDump, pickBinaries, runDump, serverInfo, type Binaries, type DumpOptions, type ServerInfo } from './dump.js';

export {
  compressCommand,
  decompressCommand,
  decompressToFile,
  plaintextInto,
  defaultLevel,
  outerCompression,
  plaintextStream,
  type CompressionOptions,
  type PlaintextStream,
  type ReadableArtifact,
} from './compression.js';
export { artifactName, pgDumpArgs, pickBinaries, serverInfo, type DumpFormat, type DumpOptions, type ServerInfo } from './dump.js';
export { SnapshotSession } from './snapshot-session.js';
export { extractDirectory, pgRestoreFor, pipeInto, restoreArtifact, restoreFromStream, restoreGlobals, type FailFn } from './restore.js';

/** The formats pg-dump writes, and restores. */
export const PG_FORMATS = ['pg-custom', 'pg-directory-tar', 'pg-plain'] as const;
/** The compressions pg-dump writes, and undoes. */
export const PG_COMPRESSIONS = ['zstd', 'gzip', 'lz4'] as const;
const EXTENSIONS: Record<string, string> = { zstd: '.zst', gzip: '.gz', lz4: '.lz4' };

const pgIdentList = (what: string) => z.array(z.string().min(1)).default([]).describe(what);

export const optionsSchema = z
  .object({
    format: z
      .enum(['custom', 'directory', 'plain'])
      .default('custom')
      .describe('Archive format: `custom` (one file, pg_restore can restore selectively and in parallel), `directory` (dumped in parallel with `jobs`, shipped as one tar), `plain` (SQL).'),
    jobs: z.number().int().min(1).max(64).default(1).describe('Parallel pg_dump workers; more than 1 needs `format: directory`.'),
    compression: z
      .object({
        method: z.enum(['zstd', 'gzip', 'lz4', 'none']).default('zstd').describe('`zstd` and `lz4` run as separate processes on the stream (multi-threaded zstd); `gzip` is pg_dump\'s own (single-threaded).'),
        level: z.number().int().min(1).max(22).optional().describe('Compression level (default: zstd 3 (on a Mastodon-shaped dump with realistic text 6 % smaller than gzip -6 and 10 % smaller than zstd 1, for ~1.4 s more CPU per GB: see bench/README.md), lz4 1, gzip 6; gzip max 9, lz4 max 12).'),
        threads: z.number().int().min(0).max(256).default(0).describe('zstd worker threads (0 = one per CPU core).'),
      })
      .strict()
      .default({ method: 'zstd', threads: 0 })
      .describe('How the dump is compressed.'),
    lockWaitTimeout: z
      .string()
      .regex(/^\d+\s*(us|ms|s|min|h|d)?$/, 'a duration such as 5min, 30s or 1h')
      .default('5min')
      .describe('pg_dump --lock-wait-timeout: give up instead of queueing behind a migration\'s lock (and making every query wait behind it).'),
    schemas: pgIdentList('Dump only these schemas (pg_dump --schema patterns).'),
    excludeSchemas: pgIdentList('Skip these schemas (pg_dump --exclude-schema patterns).'),
    tables: pgIdentList('Dump only these tables (pg_dump --table patterns).'),
    excludeTables: pgIdentList('Skip these tables (pg_dump --exclude-table patterns).'),
    noBlobs: z.boolean().default(false).describe('Leave large objects out (pg_dump --no-blobs).'),
    globals: z.boolean().default(false).describe('Also dump roles and tablespaces (pg_dumpall --globals-only) into a second artifact; role passwords are left out when the user is not a superuser.'),
    binDir: z.string().min(1).optional().describe('Folder holding pg_dump (e.g. /usr/lib/postgresql/16/bin); default: the newest found that is at least the server\'s major version.'),
    output: z
      .string()
      .regex(/^[^/\\]+$/, 'a file name, without folders')
      .optional()
      .describe('Artifact file name (default `<database>.dump[.zst]`, `<database>.dir.tar[.zst]` or `<database>.sql[.zst]`).'),
    countRows: z.boolean().default(true).describe('Count every table\'s rows in the dump\'s own snapshot (stored as meta.rowCounts; verify compares a test restore with them).'),
  })
  .strict()
  .superRefine((o, ctx) => {
    if (o.jobs > 1 && o.format !== 'directory') {
      ctx.addIssue({
        code: 'custom',
        path: ['jobs'],
        message: `pg_dump can only dump in parallel into a directory: use \`format: directory\` with jobs: ${o.jobs} (format ${o.format} is written by one process)`,
      });
    }
    const max = { zstd: 22, lz4: 12, gzip: 9, none: 22 }[o.compression.method];
    if (o.compression.level !== undefined && o.compression.level > max) {
      ctx.addIssue({ code: 'custom', path: ['compression', 'level'], message: `${o.compression.method} levels go up to ${max}` });
    }
  });

export type PgDumpOptions = z.output<typeof optionsSchema>;

/** A logical dump is restored as it was taken: never silently in place of a recovery target or a data dir. */
function refuseNonLogicalTarget(artifact: Artifact, target: RestoreTarget): void {
  if (!target.recoveryTarget && !target.dataDir) return;
  throw new PipelineError('RESTORE_TARGET_REFUSED', `${artifact.name} is a logical dump (${artifact.format}): it cannot be ${target.recoveryTarget ? 'recovered to a point in time' : 'restored into a data dir'}`, {
    hint: 'Restore it into a database as it was when it was dumped (--to DATABASE); point-in-time recovery needs a physical backup set (docs/physical.md).',
  });
}

export default definePlugin({
  name: 'pg-dump',
  description: 'Dumps the PostgreSQL database with a pg_dump matching the server, compressed on the stream, with row counts from the same snapshot.',
  options: optionsSchema,
  apply(hooks, rawOptions) {
    const options = rawOptions as DumpOptions;

    // The restore half: pg-dump restores what it wrote, and undoes its compressions.
    for (const format of PG_FORMATS) {
      hooks.restore.for(format).tapPromise('pg-dump', async (artifact, target, ctx) => {
        refuseNonLogicalTarget(artifact, target);
        // A compression pg-dump does not know (another plugin's): ask for the plain bytes first.
        const readable = (PG_COMPRESSIONS as readonly string[]).includes(outerCompression(artifact)) || outerCompression(artifact) === 'none' ? artifact : await ctx.decompress(artifact);
        if (artifact.kind === 'globals') return target.globals ? restoreGlobals(readable, ctx) : undefined;
        if (!target.database) return undefined;
        return restoreArtifact(readable, { database: target.database, jobs: target.jobs, clean: target.clean, server: target.server }, ctx);
      });
    }
    // One pass: from the core's checked stream into pg_restore, or into the one file `pg_restore -j` needs.
    for (const format of PG_FORMATS) {
      hooks.restoreStream.for(format).tapPromise('pg-dump', async (artifact, target, input, ctx) => {
        // Roles (replayed, not undoable), a folder target, a compression another plugin wrote: from a file.
        const known = (PG_COMPRESSIONS as readonly string[]).includes(outerCompression(artifact)) || outerCompression(artifact) === 'none';
        refuseNonLogicalTarget(artifact, target);
        if (artifact.kind === 'globals' || !target.database || !known) return undefined;
        return restoreFromStream(artifact, { database: target.database, jobs: target.jobs, clean: target.clean }, input, ctx);
      });
    }
    for (const method of PG_COMPRESSIONS) {
      hooks.decompress.for(method).tapPromise('pg-dump', async (artifact, ctx): Promise<Artifact> => {
        // pg_dump's own gzip inside a custom or directory archive: its tools read it as it is.
        if (outerCompression(artifact) === 'none') return { ...artifact, compression: 'none' };
        const ext = EXTENSIONS[method]!;
        const name = artifact.name.endsWith(ext) ? artifact.name.slice(0, -ext.length) : `${basename(artifact.name)}.plain`;
        const path = join(ctx.tmpDir, `plain-${name}`);
        await decompressToFile(artifact, path, ctx);
        const digest = await hashFile(path, ctx.signal);
        return { ...artifact, name, path, compression: 'none', bytes: digest.bytes, sha256: digest.sha256 };
      });
    }

    let bins: Binaries | undefined;
    let server: ServerInfo | undefined;
    const sourceOf = (pg: PgSource | undefined): PgSource => {
      if (!pg) throw new PipelineError('CREDENTIALS_MISSING', 'no database connection was resolved before pg-dump', { hint: 'Add a credentials stage before pg-dump.' });
      return pg;
    };

    hooks.preflight.tapPromise('pg-dump', async (ctx) => {
      const source = sourceOf(ctx.pg);
      server = await serverInfo(source, ctx);
      bins = await pickBinaries(options, server, ctx);
      ctx.facts.serverVersion ??= server.version;
      ctx.facts.databaseSize ??= server.databaseSize;
      ctx.tools.pg_dump = bins.pgDump.version;
      if (bins.pgDumpall) ctx.tools.pg_dumpall = bins.pgDumpall.version;
      if (bins.compressor) ctx.tools[bins.compressor.command] = bins.compressor.version;
      ctx.log.info({ pg_dump: bins.pgDump.path, server: server.version }, `using ${bins.pgDump.path} (${bins.pgDump.version}) for PostgreSQL ${server.version}`);
    });

    hooks.plan.tapPromise('pg-dump', async (plan, ctx) => {
      const source = sourceOf(ctx.pg);
      plan.add({
        plugin: 'pg-dump',
        hook: 'produce',
        description: `dump ${source.database} (${options.format}, ${options.compression.method}${options.jobs > 1 ? `, ${options.jobs} jobs` : ''})${options.countRows ? ' with row counts from the same snapshot' : ''}${options.globals ? ', plus roles and tablespaces' : ''}`,
        command: describeDump(options, source, bins, ctx),
      });
    });

    hooks.produce.tapPromise('pg-dump', async (ctx) => {
      const source = sourceOf(ctx.pg);
      if (!bins || !server) {
        server = await serverInfo(source, ctx);
        bins = await pickBinaries(options, server, ctx);
      }
      const { artifacts } = await runDump(ctx, options, source, bins, server);
      for (const artifact of artifacts) {
        ctx.addArtifact(artifact);
        ctx.log.info({ artifact: artifact.name, bytes: artifact.bytes }, `dumped ${artifact.name} (${artifact.bytes} bytes)`);
      }
    });
  },
});
