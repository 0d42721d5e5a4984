/**
 * The restore side of the pgbackrest stage: a set's `pgbackrest-backup.json` record names one
 * backup in the repository; restoring it is `pgbackrest restore --set=LABEL --pg1-path=DIR`, and
 * point-in-time recovery adds `--type=time|lsn --target=… --target-action=promote`, so the
 * restored cluster replays the repository's archived WAL up to the target when it is started.
 *
 * Declared to the core as `dataDirFormats` (the format restores into a data dir, takes time and
 * LSN targets, and is consistent from the backup's stop), so `pipeline restore --to-time T
 * --data-dir DIR` picks the newest set whose backup ended before T without naming this plugin.
 *
 * The restore's `--jobs` is pgBackRest's `--process-max` (parallel restore processes).
 *
 * Never into a running server's data dir, never over a non-empty folder unless `delta`; the
 * restored folder is 0700 and owned by the server's user; secrets stay in the config file.
 */
import { spawnSync } from 'node:child_process';
import { chmod, chown, lchown, lstat, mkdir, readdir, readFile, rm, stat } from 'node:fs/promises';
import { basename, dirname, join, resolve } from 'node:path';
import {
  checkDataDirTarget,
  PipelineError,
  writeFileAtomic,
  type Artifact,
  type DataDirFormat,
  type PluginApi,
  type RecoveryTarget,
  type RestoreReport,
  type RestoreTarget,
  type RunContext,
  type TapOnlyHooks,
} from '@backup-pipeline/core';
import { preparePgbackrest } from './command.js';
import { parseInfo } from './info.js';
import type { PgbackrestOptions } from './options.js';
import { parseRecord, PGBACKREST_FORMAT, recordOf, type PhysicalBackupRecord } from './record.js';

/**
 * What the core learns statically: sets of this format restore into a data dir, to a time or an
 * LSN, from the backup's stop on. pgBackRest keeps stop times in whole seconds, so the stop is
 * rounded up: a target in that same second is reached from an earlier backup instead.
 */
export const dataDirFormats: Readonly<Record<string, DataDirFormat>> = Object.freeze({
  [PGBACKREST_FORMAT]: {
    recoveryTargets: ['time', 'lsn'],
    consistentAt(artifact) {
      const record = recordOf(artifact);
      if (!record) return undefined;
      const stopped = Date.parse(record.stoppedAt);
      return { time: Number.isNaN(stopped) ? undefined : new Date(stopped + 1000).toISOString(), lsn: record.lsn?.stop };
    },
  },
});

/**
 * The pgbackrest arguments of a restore (pure, no secret: those stay in the config file).
 * `processMax` is the restore's `--jobs`: on the command line it wins over the config's
 * process-max, which was chosen for backups (what the server can spare), not for a restore.
 */
export function restoreArgs(
  record: Pick<PhysicalBackupRecord, 'label'>,
  target: { dataDir: string; delta?: boolean; recoveryTarget?: RecoveryTarget; restoreCommand?: string; processMax?: number },
): string[] {
  const args = ['restore', `--set=${record.label}`, `--pg1-path=${target.dataDir}`, '--log-level-file=off'];
  if (target.processMax !== undefined) args.push(`--process-max=${target.processMax}`);
  if (target.delta) args.push('--delta');
  const t = target.recoveryTarget;
  if (t?.time !== undefined) args.push('--type=time', `--target=${t.time}`, '--target-action=promote');
  else if (t?.lsn !== undefined) args.push('--type=lsn', `--target=${t.lsn}`, '--target-action=promote');
  if (target.restoreCommand) args.push(`--recovery-option=restore_command=${target.restoreCommand}`);
  return args;
}

const describe = (t: RecoveryTarget | undefined) => (t ? (t.time !== undefined ? `time ${t.time}` : `LSN ${t.lsn}`) : 'the end of the archived WAL');

/** uid/gid of a local user, or undefined. */
function userIds(user: string): { uid: number; gid: number } | undefined {
  const u = spawnSync('id', ['-u', user], { encoding: 'utf8' });
  const g = spawnSync('id', ['-g', user], { encoding: 'utf8' });
  if (u.status !== 0 || g.status !== 0) return undefined;
  return { uid: Number(u.stdout.trim()), gid: Number(g.stdout.trim()) };
}

/** Hands every file under `dir` to uid:gid (lchown: links are not followed). */
async function chownTree(dir: string, uid: number, gid: number): Promise<void> {
  await chown(dir, uid, gid);
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) await chownTree(path, uid, gid);
    else await lchown(path, uid, gid);
  }
}

/**
 * PostgreSQL starts only from a 0700 data dir owned by the user it runs as. As root, pgBackRest
 * restores the owners recorded in the backup; when that left root owning it (the user is not on
 * this host, or the folder existed), it goes to the `postgres` user.
 */
async function settleOwnership(dataDir: string, ctx: Pick<RunContext, 'log'>): Promise<{ uid: number; gid: number }> {
  await chmod(dataDir, 0o700);
  const info = await stat(dataDir);
  if (process.getuid?.() !== 0 || info.uid !== 0) return { uid: info.uid, gid: info.gid };
  const postgres = userIds('postgres');
  if (!postgres) {
    ctx.log.warn({ dataDir }, `${dataDir} is owned by root and there is no postgres user: give it to the user the server runs as (chown -R USER: ${dataDir})`);
    return { uid: 0, gid: 0 };
  }
  await chownTree(dataDir, postgres.uid, postgres.gid);
  return postgres;
}

/** `pgbackrest restore` of the set's backup into `target.dataDir`. */
export async function restorePhysical(artifact: Artifact, target: RestoreTarget, options: PgbackrestOptions, api: PluginApi, ctx: RunContext): Promise<RestoreReport> {
  const started = Date.now();
  const record = parseRecord(await readFile(artifact.path, 'utf8'));
  if (record.stanza !== options.stanza) {
    throw new PipelineError('SET_NOT_RESTORABLE', `${artifact.name} is a backup of stanza "${record.stanza}", and this stage restores stanza "${options.stanza}"`, {
      hint: `Restore it with a pgbackrest stage whose stanza is ${record.stanza} (-o pgbackrest.stanza=${record.stanza}).`,
    });
  }
  const dataDir = resolve(target.dataDir!);
  // Checked again here (the core did before fetching): this tap may also be called by a drill.
  const before = await checkDataDirTarget(dataDir, { delta: target.delta });

  const pgbr = await preparePgbackrest(ctx, options, api);
  // The backup must still be in the repository, of the same cluster.
  const info = parseInfo((await pgbr.run(['info', '--output=json'])).stdout, options.stanza);
  const backup = info.backup.find((b) => b.label === record.label);
  if (!backup) {
    throw new PipelineError('SET_NOT_RESTORABLE', `backup ${record.label} of set ${ctx.setId} is no longer in the repository (${pgbr.display(['info'])} does not list it)`, {
      hint: 'It was expired outside the pipeline; restore another set (`pipeline list` shows them).',
    });
  }
  const db = info.db.find((d) => d.id === backup.database.id);
  if (db && String(db['system-id']) !== record.systemId) {
    throw new PipelineError('SET_NOT_RESTORABLE', `the repository's backup ${record.label} belongs to PostgreSQL system ${String(db['system-id'])}, the set's to ${record.systemId}`, {
      hint: 'The stage points at another cluster\'s repository: check `repository`/`configFile` and `stanza`.',
    });
  }
  const archive = info.archive.find((a) => a.database?.id === backup.database.id) ?? info.archive.at(-1);

  // A generated config lives in the run's scratch folder and is removed when the run ends; the
  // restored server's restore_command needs one for as long as it recovers: keep a copy beside it.
  let keptConfig: string | undefined;
  if (pgbr.generated) keptConfig = join(dirname(dataDir), `${basename(dataDir)}.pgbackrest.conf`);
  const restoreCommand = keptConfig ? `pgbackrest --config=${keptConfig} --stanza=${options.stanza} --pg1-path=${dataDir} archive-get %f "%p"` : undefined;

  if (!before.exists) await mkdir(dataDir, { recursive: true, mode: 0o700 });
  // pgbackrest runs as the server's user (runAs) when we are root: the folder must be theirs.
  const runAs = (pgbr as { ids?: { uid: number; gid: number } }).ids;
  if (runAs && before.empty) await chown(dataDir, runAs.uid, runAs.gid);
  ctx.progress({ task: 'restore', message: `pgbackrest restore --set=${record.label} → ${dataDir} (recovery to ${describe(target.recoveryTarget)})` });
  ctx.log.info({ label: record.label, dataDir, target: target.recoveryTarget }, `restoring backup ${record.label} into ${dataDir}`);
  try {
    await pgbr.run(restoreArgs(record, { dataDir, delta: target.delta, recoveryTarget: target.recoveryTarget, restoreCommand, processMax: target.jobs }), { writes: dataDir });
  } catch (caught) {
    const error = caught as PipelineError;
    // A partial copy must never look like a restored cluster: what this restore wrote into a
    // folder that was empty goes; a --delta target over a cluster's files is left for a person.
    let cleared = false;
    if (before.empty) {
      cleared = await Promise.all((await readdir(dataDir).catch(() => [])).map((name) => rm(join(dataDir, name), { recursive: true, force: true }))).then(
        () => true,
        () => false,
      );
    }
    throw new PipelineError(error.code === 'NO_SPACE' ? 'NO_SPACE' : 'RESTORE_FAILED', `pgbackrest restore of ${record.label} into ${dataDir} failed: ${error.message}`, {
      hint: cleared
        ? `What it had written was removed (${dataDir} is empty again). Fix the cause, then run the restore again.`
        : `${dataDir} holds a partial copy: do not start it. Fix the cause, then run the restore again with --delta.`,
      cause: caught,
    });
  }
  const owner = await settleOwnership(dataDir, ctx);
  if (keptConfig) {
    await writeFileAtomic(keptConfig, await readFile(pgbr.configFile, 'utf8'), { signal: ctx.signal });
    if (process.getuid?.() === 0) await chown(keptConfig, owner.uid, owner.gid);
  }
  // Nothing is left writable for others.
  if ((await lstat(dataDir)).mode & 0o077) await chmod(dataDir, 0o700);

  const next = [
    `Start it (as the server's user): pg_ctl start -D ${dataDir}${target.recoveryTarget ? ` — it replays WAL up to ${describe(target.recoveryTarget)}, then promotes` : ' — it replays every archived WAL segment, then promotes'}.`,
    `Next to a live server, start it with archiving off so it never pushes WAL into the live repository: pg_ctl start -D ${dataDir} -o '-c archive_mode=off -p FREE_PORT'.`,
    ...(keptConfig ? [`Its restore_command reads ${keptConfig} (the repository's settings, secrets included, 0600): remove it once recovery is done.`] : []),
  ];
  return {
    artifact: artifact.name,
    into: dataDir,
    mismatches: [],
    physical: {
      backup: record.label,
      dataDir,
      ...(target.recoveryTarget ? { recoveryTarget: target.recoveryTarget } : {}),
      wal: { start: record.wal?.start, stop: record.wal?.stop, ...(archive?.max ? { archivedUpTo: archive.max } : {}) },
      next,
    },
    durationMs: Date.now() - started,
  };
}

export function tapRestore(hooks: TapOnlyHooks, options: PgbackrestOptions, api: PluginApi): void {
  hooks.restore.for(PGBACKREST_FORMAT).tapPromise('pgbackrest', async (artifact, target, ctx) => {
    if (target.dataDir) return restorePhysical(artifact, target, options, api, ctx);
    if (target.database) {
      throw new PipelineError('SET_NOT_RESTORABLE', `${artifact.name} is a physical backup of the whole cluster: it restores into a data dir, not into one database`, {
        hint: 'Restore it with --data-dir DIR (then start that cluster), or restore a dump set into the database.',
      });
    }
    return undefined;
  });
}
