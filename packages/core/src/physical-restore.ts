/**
 * Restoring into a PostgreSQL data directory, and point-in-time recovery, owned by the core but
 * generic: which formats restore into a data dir, and which recovery targets they take, is what
 * plugins declare (`PluginDefinition.dataDirFormats`); the core never names a plugin.
 *
 *   pipeline restore SET --data-dir DIR             the backup as it ended
 *   pipeline restore --to-time T --data-dir DIR     the newest set whose backup ended at or before T,
 *                                                   then the archived WAL up to T
 *   pipeline restore --to-lsn X/Y --data-dir DIR    likewise, by WAL position
 *
 * The data dir is checked before anything is fetched: never a running server's, never a non-empty
 * folder unless `delta` is asked.
 */
import { readFile, readdir, stat } from 'node:fs/promises';
import { createConnection } from 'node:net';
import { availableParallelism } from 'node:os';
import { join } from 'node:path';
import type { RunContext } from './context.js';
import type { NamedDestination } from './destination.js';
import { PipelineError } from './errors.js';
import type { PipelineHooks } from './hooks.js';
import type { Manifest, ManifestArtifact } from './manifest.js';
import type { DataDirFormat } from './plugin.js';
import { checkPlugins, decryptArtifact, fetchArtifacts, type LocatedSet, type RestoreResult } from './restore.js';
import type { RecoveryTarget, RestoreContext } from './restore-context.js';
import { listSets } from './sets.js';

/** The formats the loaded plugins restore into a data dir, with what each declares. */
export type DataDirFormats = ReadonlyMap<string, DataDirFormat>;

/** What `restore` takes beyond a database restore's options. */
export interface DataDirRequestOptions {
  /** Restore the set's physical backup into this data directory. */
  dataDir?: string;
  /** The data dir is not empty: reuse it (pgBackRest `--delta`). */
  delta?: boolean;
  /** Stop recovery there. With the set `latest`, the core picks the set (see `pickSetForRecovery`). */
  recoveryTarget?: RecoveryTarget;
}

const TIME = /^(\d{4})-(\d{2})-(\d{2})[ T](\d{2}):(\d{2})(?::(\d{2})(\.\d{1,6})?)?\s*(Z|[+-]\d{2}(?::?\d{2})?)$/i;
const LSN = /^[0-9A-F]{1,8}\/[0-9A-F]{1,8}$/i;

/** The instant a recovery target time names (millisecond precision, for comparisons only), or undefined. */
export function recoveryTime(text: string): Date | undefined {
  const m = TIME.exec(text.trim());
  if (!m) return undefined;
  const [, y, mo, d, h, mi, s = '00', frac = '', zone] = m;
  const offset = zone!.toUpperCase() === 'Z' ? 'Z' : zone!.length === 3 ? `${zone}:00` : zone!.includes(':') ? zone : `${zone!.slice(0, 3)}:${zone!.slice(3)}`;
  const date = new Date(`${y}-${mo}-${d}T${h}:${mi}:${s}${frac.slice(0, 4)}${offset}`);
  // Reject dates that roll over (2026-02-30).
  if (Number.isNaN(date.getTime()) || Number(mo) < 1 || Number(mo) > 12 || Number(d) > 31 || Number(h) > 23 || Number(mi) > 59 || Number(s) > 59) return undefined;
  return date;
}

/** Compares two LSNs `X/Y` (hex): negative, 0, positive. */
export function compareLsn(a: string, b: string): number {
  const value = (lsn: string) => {
    const [hi, lo] = lsn.split('/');
    return (BigInt(`0x${hi}`) << 32n) + BigInt(`0x${lo}`);
  };
  const d = value(a) - value(b);
  return d < 0n ? -1 : d > 0n ? 1 : 0;
}

/** The recovery target given on the command line, checked; undefined when none was given. */
export function parseRecoveryTarget(given: { time?: string; lsn?: string }): RecoveryTarget | undefined {
  if (given.time !== undefined && given.lsn !== undefined) {
    throw new PipelineError('USAGE', 'give one recovery target: --to-time or --to-lsn, not both');
  }
  if (given.time !== undefined) {
    const time = given.time.trim();
    if (!recoveryTime(time)) {
      throw new PipelineError('USAGE', `--to-time ${JSON.stringify(given.time)} is not a time with a UTC offset`, {
        hint: "Write it as PostgreSQL prints timestamps, with the offset: '2026-12-01 14:03:00+00' (or 2026-12-01T14:03:00Z).",
      });
    }
    return { time };
  }
  if (given.lsn !== undefined) {
    const lsn = given.lsn.trim();
    if (!LSN.test(lsn)) throw new PipelineError('USAGE', `--to-lsn ${JSON.stringify(given.lsn)} is not a WAL position`, { hint: 'An LSN is two hex numbers: 0/3000060 (SELECT pg_current_wal_lsn()).' });
    return { lsn: lsn.toUpperCase() };
  }
  return undefined;
}

const describeTarget = (target: RecoveryTarget) => (target.time !== undefined ? `time ${target.time}` : `LSN ${target.lsn}`);

/** Where the restore of `artifact` is consistent (the backup's end), as the plugin declares it. */
function consistentPoint(format: DataDirFormat, artifact: ManifestArtifact, manifest: Manifest): { time?: Date; lsn?: string } {
  const declared = format.consistentAt?.(artifact);
  const time = declared?.time ? new Date(declared.time) : new Date(manifest.completedAt);
  return { time: Number.isNaN(time.getTime()) ? undefined : time, lsn: declared?.lsn && LSN.test(declared.lsn) ? declared.lsn : undefined };
}

/** Whether `target` is at or after `point`; undefined when the point is not known for that kind. */
function reaches(point: { time?: Date; lsn?: string }, target: RecoveryTarget): boolean | undefined {
  if (target.time !== undefined) return point.time ? point.time.getTime() <= recoveryTime(target.time)!.getTime() : undefined;
  return point.lsn ? compareLsn(point.lsn, target.lsn) <= 0 : undefined;
}

/** The artifact of a set that restores into a data dir, and what its format declares. */
function physicalEntries(manifest: Manifest, formats: DataDirFormats): Array<{ artifact: ManifestArtifact; format: DataDirFormat }> {
  return manifest.artifacts.flatMap((artifact) => {
    const format = formats.get(artifact.format);
    return format ? [{ artifact, format }] : [];
  });
}

/**
 * The set to restore for a recovery target when no set was named: among the complete sets of
 * `sources` holding an artifact whose format takes that kind of target, the one whose backup ended
 * last at or before the target (manifest times, or what the plugin reads from the entry).
 */
export async function pickSetForRecovery(sources: readonly NamedDestination[], target: RecoveryTarget, formats: DataDirFormats, ctx: Pick<RunContext, 'log' | 'tmpDir'>): Promise<string> {
  const kind = target.time !== undefined ? 'time' : 'lsn';
  const seen = new Set<string>();
  let best: { id: string; time?: Date; lsn?: string } | undefined;
  let earliest: { id: string; at: string } | undefined;
  let capable = 0;
  for (const from of sources) {
    let sets: Awaited<ReturnType<typeof listSets>>;
    try {
      sets = await listSets(from.destination, { scratchDir: ctx.tmpDir });
    } catch (error) {
      ctx.log.warn({ destination: from.name }, `cannot list the sets of ${from.name}: ${(error as Error).message}`);
      continue;
    }
    for (const set of sets) {
      if (!set.complete || !set.manifest || seen.has(set.id)) continue;
      seen.add(set.id);
      const entry = physicalEntries(set.manifest, formats).find((e) => e.format.recoveryTargets.includes(kind));
      if (!entry) continue;
      capable++;
      const point = consistentPoint(entry.format, entry.artifact, set.manifest);
      const ok = reaches(point, target);
      if (!ok) {
        const at = kind === 'time' ? point.time?.toISOString() : point.lsn;
        if (at && (!earliest || at < earliest.at)) earliest = { id: set.id, at };
        continue;
      }
      const later = !best || (kind === 'time' ? point.time!.getTime() > best.time!.getTime() || (point.time!.getTime() === best.time!.getTime() && set.id > best.id) : compareLsn(point.lsn!, best.lsn!) > 0 || (compareLsn(point.lsn!, best.lsn!) === 0 && set.id > best.id));
      if (later) best = { id: set.id, ...point };
    }
  }
  if (best) {
    ctx.log.info({ setId: best.id, target }, `recovery to ${describeTarget(target)}: starting from set ${best.id}, whose backup ended ${kind === 'time' ? `at ${best.time!.toISOString()}` : `at LSN ${best.lsn}`}`);
    return best.id;
  }
  const where = sources.map((d) => d.name).join(', ');
  if (capable === 0) {
    throw new PipelineError('SET_NOT_FOUND', `no complete set in ${where} holds a backup that can be recovered to a ${kind === 'time' ? 'point in time' : 'WAL position'}`, {
      hint: `Point-in-time recovery needs a physical backup set, restored by a stage that declares it (formats loaded here: ${[...formats.keys()].join(', ') || 'none'}); a dump restores only as it was when it was taken (--to DB).`,
    });
  }
  throw new PipelineError('SET_NOT_FOUND', `no backup in ${where} ended at or before ${describeTarget(target)}${earliest ? ` (the earliest, ${earliest.id}, ended at ${earliest.at})` : ''}`, {
    hint: 'A recovery can only stop after the end of the backup it starts from: choose a later target, or restore a set as it is.',
  });
}

/**
 * `latest` for a data dir: the newest complete set holding an artifact that restores into one (a
 * dump set made after it, by another pipeline shipping to the same places, is not a candidate).
 */
export async function pickLatestForDataDir(sources: readonly NamedDestination[], formats: DataDirFormats, ctx: Pick<RunContext, 'log' | 'tmpDir'>): Promise<string> {
  let newest: string | undefined;
  for (const from of sources) {
    const sets = await listSets(from.destination, { scratchDir: ctx.tmpDir }).catch((error: unknown) => {
      ctx.log.warn({ destination: from.name }, `cannot list the sets of ${from.name}: ${(error as Error).message}`);
      return [];
    });
    for (const set of sets) if (set.complete && set.manifest && physicalEntries(set.manifest, formats).length > 0 && (!newest || set.id > newest)) newest = set.id;
  }
  if (!newest) {
    throw new PipelineError('SET_NOT_FOUND', `no complete set in ${sources.map((d) => d.name).join(', ')} holds a backup that restores into a data dir`, {
      hint: `Physical backup sets are made by a stage that declares a data-dir format (loaded here: ${[...formats.keys()].join(', ') || 'none'}); a dump restores into a database (--to DB).`,
    });
  }
  return newest;
}

/** postmaster.pid's process, if it is alive, and the port it names, if something answers there. */
async function runningServer(dataDir: string): Promise<string | undefined> {
  const text = await readFile(join(dataDir, 'postmaster.pid'), 'utf8').catch(() => undefined);
  if (text === undefined) return undefined;
  const [pidLine = '', , , portLine = '', socketDir = '', listen = ''] = text.split('\n');
  const pid = Number.parseInt(pidLine, 10);
  const port = Number.parseInt(portLine, 10);
  if (Number.isInteger(pid) && pid > 0) {
    let alive = false;
    try {
      process.kill(pid, 0);
      alive = true;
    } catch (error) {
      alive = (error as NodeJS.ErrnoException).code === 'EPERM';
    }
    if (alive) {
      // A pid reused by something else after a crash is not a server; one whose command line
      // cannot be read (or reads empty, as during an exec) may be, and is refused.
      const cmdline = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
      if (cmdline === '' || /postgres|postmaster/.test(cmdline)) return `process ${pid} (postmaster.pid) is running`;
    }
  }
  if (Number.isInteger(port) && port > 0) {
    const host = listen.split(',')[0]?.trim();
    const targets: Array<{ path: string } | { host: string; port: number }> = [{ host: !host || host === '*' || host === '0.0.0.0' ? '127.0.0.1' : host, port }];
    if (socketDir.trim()) targets.unshift({ path: join(socketDir.trim(), `.s.PGSQL.${port}`) });
    for (const to of targets) {
      const open = await new Promise<boolean>((resolve) => {
        const socket = createConnection(to as never);
        const done = (value: boolean) => {
          socket.destroy();
          resolve(value);
        };
        socket.setTimeout(1000, () => done(false));
        socket.once('connect', () => done(true));
        socket.once('error', () => done(false));
      });
      if (open) return `a server answers on ${'path' in to ? to.path : `${to.host}:${to.port}`}, the port its postmaster.pid names`;
    }
  }
  return undefined;
}

/**
 * Refuses a data dir that belongs to a running server, and one that is not empty unless `delta`:
 * a restore writes over whatever is there. A missing folder is fine (the tap creates it 0700).
 */
export async function checkDataDirTarget(dataDir: string, options: { delta?: boolean } = {}): Promise<{ exists: boolean; empty: boolean }> {
  const info = await stat(dataDir).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return undefined;
    throw new PipelineError('RESTORE_TARGET_UNAVAILABLE', `cannot look at ${dataDir}: ${error.message}`, { hint: 'Give a data dir this user can create or write.' });
  });
  if (!info) return { exists: false, empty: true };
  if (!info.isDirectory()) throw new PipelineError('RESTORE_TARGET_REFUSED', `${dataDir} is not a folder`, { hint: 'Give the path of a data directory (missing, or an empty folder).' });
  const running = await runningServer(dataDir);
  if (running) {
    throw new PipelineError('RESTORE_TARGET_REFUSED', `refusing to restore into ${dataDir}: it belongs to a running PostgreSQL server (${running})`, {
      hint: `Stop that server first (pg_ctl stop -D ${dataDir}, or systemctl stop postgresql@VERSION-main), or restore into another folder. If no server runs there, remove the stale postmaster.pid by hand.`,
    });
  }
  const entries = await readdir(dataDir);
  if (entries.length > 0 && !options.delta) {
    throw new PipelineError('RESTORE_TARGET_NOT_EMPTY', `${dataDir} is not empty (${entries.length} entr${entries.length === 1 ? 'y' : 'ies'}, e.g. ${entries.slice(0, 3).join(', ')}); refusing to restore over it`, {
      hint: 'Restore into an empty or new folder, or pass --delta to let the restore reuse and overwrite what is there (the server must be stopped).',
    });
  }
  return { exists: true, empty: entries.length === 0 };
}

/**
 * Restores the located set's physical backup into `request.dataDir`: check the target and the
 * recovery target before anything moves, fetch (with fallback) → decrypt → the `restore` tap of
 * its format, given the data dir and the recovery target.
 */
export async function restoreIntoDataDir(
  hooks: PipelineHooks,
  located: LocatedSet,
  request: DataDirRequestOptions & { jobs?: number },
  formats: DataDirFormats,
  ctx: RestoreContext,
): Promise<RestoreResult> {
  const started = Date.now();
  const { dataDir, recoveryTarget } = request;
  if (!dataDir) throw new PipelineError('USAGE', 'a physical restore needs a data dir (--data-dir DIR)');
  const all = physicalEntries(located.manifest, formats);
  const listing = located.manifest.artifacts.map((a) => `${a.name} (${a.format})`).join(', ');
  if (all.length === 0) {
    if (recoveryTarget) {
      throw new PipelineError('RESTORE_TARGET_REFUSED', `set ${located.id} cannot be recovered to a ${recoveryTarget.time !== undefined ? 'point in time' : 'WAL position'}: it holds no physical backup (${listing})`, {
        hint: `A dump restores only as it was when it was taken: pipeline restore ${located.id} --to DATABASE. Point-in-time recovery starts from a physical backup set (docs/physical.md).`,
      });
    }
    throw new PipelineError('SET_NOT_RESTORABLE', `set ${located.id} holds nothing that restores into a data dir (${listing})`, {
      hint: `Restore a dump into a database instead: pipeline restore ${located.id} --to DATABASE.`,
    });
  }
  if (all.length > 1) throw new PipelineError('SET_NOT_RESTORABLE', `set ${located.id} holds ${all.length} physical backups (${all.map((e) => e.artifact.name).join(', ')}); one data dir takes one`);
  const [{ artifact: entry, format }] = all as [(typeof all)[number]];
  if (recoveryTarget) {
    const kind = recoveryTarget.time !== undefined ? 'time' : 'lsn';
    if (!format.recoveryTargets.includes(kind)) {
      throw new PipelineError('RESTORE_TARGET_REFUSED', `${entry.name} (${entry.format}) cannot be recovered to a ${kind === 'time' ? 'point in time' : 'WAL position'}`, {
        hint: `Restore it as it is (leave out --to-${kind}).`,
      });
    }
    const point = consistentPoint(format, entry, located.manifest);
    if (reaches(point, recoveryTarget) === false) {
      throw new PipelineError('RESTORE_TARGET_REFUSED', `${describeTarget(recoveryTarget)} is before the end of set ${located.id}'s backup (${kind === 'time' ? point.time!.toISOString() : point.lsn}): recovery cannot stop there`, {
        hint: 'Leave out the set id to let the restore pick the newest set that ended before the target, or name an earlier set.',
      });
    }
  }
  checkPlugins(hooks, [entry], true);
  await checkDataDirTarget(dataDir, { delta: request.delta });

  const fetched = await fetchArtifacts(hooks, located, [entry], ctx, { fallback: true });
  const plain = await decryptArtifact(hooks, fetched.artifacts[0]!, ctx);
  ctx.progress({ plugin: 'core', task: 'restore', message: `${plain.name} → ${dataDir}${recoveryTarget ? ` (recovery to ${describeTarget(recoveryTarget)})` : ''}` });
  // A data dir is restored in an emergency, by the whole machine: every core unless --jobs says otherwise.
  const report = await ctx.restore(plain, { dataDir, delta: request.delta, recoveryTarget, jobs: request.jobs ?? availableParallelism() });
  return { setId: located.id, from: fetched.from.name, reports: [report], durationMs: Date.now() - started };
}
