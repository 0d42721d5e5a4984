/**
 * Options of the pgbackrest stage. Two ways to configure pgBackRest:
 *
 * - **generated** (no `configFile`): the stage writes a private (0600) pgbackrest.conf for the run
 *   into the run's scratch folder from `repository`, `dataDir`, `socketDir`, `port`… (secrets go
 *   into that file, never into argv);
 * - **existing** (`configFile`): the stage passes `--config=FILE` and only adds command-line
 *   options that hold no secret (`--stanza`, `--type`, the logging levels, `processMax` and
 *   `compression` when they are set here).
 */
import { z } from '@backup-pipeline/core';

export const WEEKDAYS = ['sunday', 'monday', 'tuesday', 'wednesday', 'thursday', 'friday', 'saturday'] as const;

const PosixRepository = z
  .object({
    type: z.literal('posix').describe('A folder on this host (or a mounted NAS).'),
    path: z.string().min(1).describe('repo1-path: the repository folder. It must be writable by the PostgreSQL server\'s user, whose archive_command pushes WAL into it.'),
  })
  .strict();

const S3Repository = z
  .object({
    type: z.literal('s3').describe('An S3-compatible bucket (pgBackRest always talks TLS to it).'),
    bucket: z.string().min(1).describe('repo1-s3-bucket.'),
    endpoint: z.string().min(1).describe('repo1-s3-endpoint: host name (or host:port) of the S3 service, without scheme.'),
    region: z.string().min(1).default('us-east-1').describe('repo1-s3-region.'),
    prefix: z.string().regex(/^\//, 'an absolute path inside the bucket, e.g. /pgbackrest').default('/pgbackrest').describe('repo1-path: where the repository lives inside the bucket.'),
    key: z.string().min(1).describe('repo1-s3-key (access key id). A secret: use `${file:…}` or `${VAR}`; it goes into the private config file, never into argv or the manifest.'),
    secret: z.string().min(1).describe('repo1-s3-key-secret. A secret, like `key`.'),
    uriStyle: z.enum(['host', 'path']).default('host').describe('repo1-s3-uri-style: `path` for MinIO-like servers that do not serve bucket host names.'),
    port: z.number().int().min(1).max(65535).optional().describe('repo1-storage-port (default 443).'),
    verifyTls: z.boolean().default(true).describe('repo1-storage-verify-tls. Turn off only for a loopback test server with a self-signed certificate.'),
    caFile: z.string().min(1).optional().describe('repo1-storage-ca-file: a CA bundle for a private certificate authority.'),
  })
  .strict();

export const BackupTypeRule = z
  .object({
    full: z.enum(WEEKDAYS).describe('Day of the week (in the config `timezone`) of the full backup.'),
    otherwise: z.enum(['diff', 'incr']).default('diff').describe('The type on every other day.'),
  })
  .strict();

export const DrillOptions = z
  .object({
    enabled: z.boolean().default(true).describe('Restore the new backup into a private data dir, start it on a free port and query it (in verify). Needs disk space for one copy of the cluster.'),
    database: z.string().min(1).optional().describe('Database whose row counts are compared (default: the credentials stage\'s database, else `mastodon_production`).'),
    tables: z
      .array(z.string().min(1))
      .optional()
      .describe('Tables whose row counts are compared (default: Mastodon\'s core tables that exist: accounts, users, statuses, follows, favourites, media_attachments, notifications).'),
    tolerance: z
      .number()
      .min(0)
      .max(1)
      .default(0.02)
      .describe('Allowed relative difference between a table\'s row count in the restored copy and the count taken at backup time (writes continue while the backup runs).'),
  })
  .strict();

export const optionsSchema = z
  .object({
    stanza: z.string().regex(/^[A-Za-z0-9][A-Za-z0-9_.-]*$/, 'a pgBackRest stanza name').describe('The pgBackRest stanza (one per PostgreSQL cluster).'),
    configFile: z
      .string()
      .min(1)
      .optional()
      .describe('An existing pgbackrest.conf (e.g. /etc/pgbackrest/pgbackrest.conf, the one the server\'s archive_command uses). When set, `repository`, `dataDir`, `socketDir`, `port` and `pgUser` are not written anywhere: the file says it all.'),
    repository: z
      .discriminatedUnion('type', [PosixRepository, S3Repository])
      .optional()
      .describe('The repository (repo1) of a generated config: `{ type: posix, path }` or `{ type: s3, bucket, endpoint, region, prefix, key, secret }`.'),
    repoCipherPassFile: z
      .string()
      .min(1)
      .optional()
      .describe('A file holding the repository\'s encryption passphrase (repo1-cipher-type aes-256-cbc, pgBackRest\'s own encryption). Read at run time; the passphrase goes into the private config file only.'),
    type: z
      .union([z.enum(['full', 'diff', 'incr']), BackupTypeRule])
      .default({ full: 'sunday', otherwise: 'diff' })
      .describe('Backup type (default: full on Sundays, diff otherwise): `full`, `diff` or `incr`, or a rule `{ full: sunday, otherwise: diff }` (full weekly on that day, the other type otherwise). pgBackRest makes a full backup when there is none to build on.'),
    processMax: z.number().int().min(1).max(64).optional().describe('process-max: parallel compress/transfer processes (default: the number of CPU cores).'),
    compression: z.enum(['zst', 'lz4', 'gz', 'bz2', 'none']).default('zst').describe('compress-type of the repository files.'),
    compressionLevel: z.number().int().min(0).max(22).optional().describe('compress-level (default: pgBackRest\'s for the type).'),
    dataDir: z.string().min(1).optional().describe('pg1-path: the PostgreSQL data directory (e.g. /var/lib/postgresql/15/main). Required for a generated config.'),
    socketDir: z.string().min(1).optional().describe('pg1-socket-path: the server\'s Unix socket folder (default /var/run/postgresql). Also used to count rows for the drill.'),
    port: z.number().int().min(1).max(65535).optional().describe('pg1-port (default 5432).'),
    pgUser: z.string().min(1).optional().describe('pg1-user: the database superuser pgBackRest connects as over the socket (default postgres).'),
    binDir: z.string().min(1).optional().describe('Folder holding the PostgreSQL server programs (pg_ctl, postgres) for the restore drill (default: the newest /usr/lib/postgresql/N/bin).'),
    lockPath: z
      .string()
      .min(1)
      .optional()
      .describe('lock-path of a generated config (default pgBackRest\'s /tmp/pgbackrest). It must be writable by the server\'s user too: its archive-push takes locks there.'),
    runAs: z
      .string()
      .regex(/^[a-z_][a-z0-9_-]*\$?$/i, 'a user name')
      .default('postgres')
      .describe('When the pipeline runs as root: the user pgbackrest runs as (through runuser) — the owner of the repository, the same user as the server\'s archive-push (every file of a pgBackRest repository must have one owner; a backup run as root would take archive.info away from the server). `root` runs it as root. Ignored when the pipeline does not run as root.'),
    createStanza: z.boolean().default(false).describe('Run `pgbackrest stanza-create` in preflight when the stanza does not exist yet (otherwise the run is refused with the command to run).'),
    expire: z
      .boolean()
      .default(true)
      .describe('In `retain`, after the retention stage deleted pipeline sets, expire (`pgbackrest expire --set=LABEL`) the backups no kept set needs. pgBackRest is configured never to expire on its own (repo1-retention-full 9999999). List this stage after `retention`.'),
    archiveTimeout: z
      .number()
      .min(0.1)
      .max(86400)
      .optional()
      .describe('archive-timeout in seconds: how long `check` (preflight) and a backup wait for the server to archive the WAL segment they need (default pgBackRest\'s 60). Raise it where the archiver can lag behind a large change (the WAL of a bulk update is archived one segment at a time).'),
    maxArchiveLagMinutes: z
      .number()
      .min(0)
      .optional()
      .describe('Refuse to run (preflight) when the last WAL segment was archived longer ago than this while WAL is being written. Default: only a failing archive_command is refused.'),
    drill: DrillOptions.default({ enabled: true, tolerance: 0.02 }).describe('The restore drill run in verify.'),
  })
  .strict()
  .superRefine((o, ctx) => {
    if (!o.configFile && !o.repository) ctx.addIssue({ code: 'custom', path: ['repository'], message: 'set `repository` (posix path or s3 bucket), or `configFile` to use an existing pgbackrest.conf' });
    if (!o.configFile && !o.dataDir) ctx.addIssue({ code: 'custom', path: ['dataDir'], message: 'set `dataDir` (pg1-path, e.g. /var/lib/postgresql/15/main), or `configFile`' });
    if (o.configFile && o.repository) ctx.addIssue({ code: 'custom', path: ['repository'], message: '`repository` is read only for a generated config: with `configFile`, put the repository in that file' });
  });

export type PgbackrestOptions = z.output<typeof optionsSchema>;
export type Repository = NonNullable<PgbackrestOptions['repository']>;
