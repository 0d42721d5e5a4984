/**
 * Test harness for the pgbackrest stage (backup and restore tests share it): a throwaway
 * PostgreSQL cluster (packages/sandbox `startPostgres`) that archives its WAL with
 * `pgbackrest archive-push` into a private posix repository, with the stanza created.
 *
 * Layout (one folder, removed by `stop()`): `<root>/repo` (the repository), `<root>/lock`,
 * `<root>/spool`, `<root>/pgbackrest.conf` (the server's own configuration, also usable as the
 * stage's `configFile`). When the tests run as root the cluster runs as `postgres`, so everything
 * the server's archive-push writes is owned by `postgres`; the stage's own pgbackrest commands run
 * as the test's user (root reads and writes everything).
 *
 * With `s3`, repo1 is a bucket instead (`repo/` stays empty): the server's pgbackrest.conf, and so
 * its archive_command, push to that bucket, and `<root>/ca.pem` is a copy of the TLS front's
 * certificate the server's user can read.
 */
import { spawnSync } from 'node:child_process';
import { chmod, chown, copyFile, mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { exec } from '@backup-pipeline/core';
import { startPostgres, type PostgresServer, type StartPostgresOptions } from '@backup-pipeline/testing';

export interface ArchivingCluster {
  readonly pg: PostgresServer;
  readonly stanza: string;
  /** The cluster's data directory (pg1-path). */
  readonly dataDir: string;
  /** The harness folder holding repo/, lock/, spool/ and pgbackrest.conf. */
  readonly root: string;
  /** The posix repository (repo1-path); empty when the repository is `s3`. */
  readonly repoPath: string;
  /** With `s3`: the CA file (a copy in `root`, readable by the server's user). */
  readonly caFile: string | undefined;
  readonly lockPath: string;
  /** The server's pgbackrest.conf (0640, readable by the server's user). */
  readonly configFile: string;
  /** The user the server (and its archive-push) runs as: `postgres` when the tests run as root. */
  readonly serverUser: string | undefined;
  /** Options for the stage that point at this cluster and repository (`configFile` mode). */
  stageOptions(extra?: Record<string, unknown>): Record<string, unknown>;
  /** Runs `pgbackrest --config=… --stanza=… <args>` as the server's user; returns stdout. */
  pgbackrest(args: string[], opts?: { okExitCodes?: number[] }): Promise<{ exitCode: number; stdout: string; stderr: string }>;
  /** Forces a WAL switch and waits until pgbackrest has archived it (archive-push succeeded). */
  switchWal(): Promise<void>;
  /** Stops the server and removes every file. Safe to call twice. */
  stop(): Promise<void>;
}

export interface StartArchivingClusterOptions {
  stanza?: string;
  /** Extra postgresql.conf settings. */
  settings?: StartPostgresOptions['settings'];
  /** Create the stanza (default true). */
  createStanza?: boolean;
  /** Leave archiving off (archive_mode off; the stanza is still created): for the preflight error test. */
  archiving?: boolean;
  /** An S3 repository (path-style, TLS on 127.0.0.1:port) instead of the posix one. */
  s3?: S3RepositoryOptions;
}

export interface S3RepositoryOptions {
  bucket: string;
  port: number;
  key: string;
  secret: string;
  region?: string;
  /** repo1-path inside the bucket (default /pgbackrest). */
  prefix?: string;
  /** The TLS front's certificate; copied into the harness folder for the server's user. */
  caFile: string;
}

function s3Lines(s3: S3RepositoryOptions, caFile: string): string[] {
  return [
    'repo1-type=s3',
    `repo1-path=${s3.prefix ?? '/pgbackrest'}`,
    `repo1-s3-bucket=${s3.bucket}`,
    'repo1-s3-endpoint=127.0.0.1',
    `repo1-s3-region=${s3.region ?? 'us-east-1'}`,
    `repo1-s3-key=${s3.key}`,
    `repo1-s3-key-secret=${s3.secret}`,
    'repo1-s3-uri-style=path',
    `repo1-storage-port=${s3.port}`,
    `repo1-storage-ca-file=${caFile}`,
  ];
}

function idOf(user: string): { uid: number; gid: number } {
  const u = spawnSync('id', ['-u', user], { encoding: 'utf8' });
  const g = spawnSync('id', ['-g', user], { encoding: 'utf8' });
  if (u.status !== 0 || g.status !== 0) throw new Error(`no user ${user}`);
  return { uid: Number(u.stdout.trim()), gid: Number(g.stdout.trim()) };
}

export async function startArchivingCluster(options: StartArchivingClusterOptions = {}): Promise<ArchivingCluster> {
  const stanza = options.stanza ?? 'main';
  const asRoot = typeof process.getuid === 'function' && process.getuid() === 0;
  const serverUser = asRoot ? 'postgres' : undefined;
  const root = await mkdtemp('/tmp/bp-pgbr-');
  await chmod(root, 0o755);
  const repoPath = join(root, 'repo');
  const lockPath = join(root, 'lock');
  const spoolPath = join(root, 'spool');
  const configFile = join(root, 'pgbackrest.conf');
  for (const d of [repoPath, lockPath, spoolPath]) await mkdir(d, { mode: 0o750 });
  await chmod(lockPath, 0o770);
  const owner = serverUser ? idOf(serverUser) : undefined;
  if (owner) for (const d of [repoPath, lockPath, spoolPath]) await chown(d, owner.uid, owner.gid);

  const archiving = options.archiving !== false;
  const archiveCommand = `pgbackrest --config=${configFile} --stanza=${stanza} archive-push %p`;
  let pg: PostgresServer;
  try {
    pg = await startPostgres({
      settings: {
        wal_level: 'replica',
        archive_mode: archiving,
        ...(archiving ? { archive_command: archiveCommand, archive_timeout: 0 } : {}),
        max_wal_senders: 3,
        ...options.settings,
      },
    });
  } catch (error) {
    await rm(root, { recursive: true, force: true });
    throw error;
  }
  const dataDir = (await pg.psql('SHOW data_directory;'))[0]![0]!;
  const caFile = options.s3 ? join(root, 'ca.pem') : undefined;
  if (options.s3) {
    await copyFile(options.s3.caFile, caFile!);
    await chmod(caFile!, 0o644);
  }
  const conf = [
    '[global]',
    ...(options.s3 ? s3Lines(options.s3, caFile!) : [`repo1-path=${repoPath}`]),
    `lock-path=${lockPath}`,
    `spool-path=${spoolPath}`,
    'log-level-file=off',
    'log-level-console=warn',
    'log-level-stderr=off',
    'start-fast=y',
    'repo1-retention-full=9999999',
    '',
    `[${stanza}]`,
    `pg1-path=${dataDir}`,
    `pg1-socket-path=${pg.socketDir}`,
    `pg1-port=${pg.port}`,
    `pg1-user=${pg.superuser}`,
    '',
  ].join('\n');
  await writeFile(configFile, conf, { mode: 0o640 });
  if (owner) await chown(configFile, owner.uid, owner.gid);

  const pgbackrest = async (args: string[], opts: { okExitCodes?: number[] } = {}) => {
    const argv = [`--config=${configFile}`, `--stanza=${stanza}`, ...args];
    const r = serverUser
      ? await exec('runuser', ['-u', serverUser, '--', 'pgbackrest', ...argv], { cwd: root, label: 'pgbackrest', okExitCodes: opts.okExitCodes })
      : await exec('pgbackrest', argv, { cwd: root, label: 'pgbackrest', okExitCodes: opts.okExitCodes });
    return { exitCode: r.exitCode, stdout: r.stdout, stderr: r.stderr };
  };
  const switchWal = async () => {
    const [[before]] = (await pg.psql('SELECT archived_count FROM pg_stat_archiver;')) as [[string]];
    await pg.psql('SELECT pg_switch_wal();');
    for (let i = 0; i < 600; i++) {
      const [[now]] = (await pg.psql('SELECT archived_count FROM pg_stat_archiver;')) as [[string]];
      if (Number(now) > Number(before)) return;
      await new Promise((r) => setTimeout(r, 100));
    }
    throw new Error('WAL was not archived within 60 s');
  };

  let stopped = false;
  const cluster: ArchivingCluster = {
    pg,
    stanza,
    dataDir,
    root,
    repoPath,
    caFile,
    lockPath,
    configFile,
    serverUser,
    stageOptions: (extra = {}) => ({ stanza, configFile, ...extra }),
    pgbackrest,
    switchWal,
    async stop() {
      if (stopped) return;
      stopped = true;
      await pg.stop();
      await rm(root, { recursive: true, force: true });
    },
  };
  try {
    if (options.createStanza !== false) await pgbackrest(['stanza-create']);
  } catch (error) {
    await cluster.stop();
    throw error;
  }
  return cluster;
}
