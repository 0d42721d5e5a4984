/**
 * One run per pipeline at a time: a lock file holding the pid and host of its owner.
 *
 * The lock is taken atomically with its owner: the owner is written (and fsynced) to a private
 * temporary file first, which is then hard-linked to the lock path. `link()` fails when the lock
 * exists, so a lock file is never seen without its owner, and a half-written lock can never be
 * mistaken for a stale one. A stale lock (its owner dead on this host) is replaced only under a
 * second lock, `NAME.takeover`, taken the same way, after checking again that the owner is still
 * the dead one, by renaming the new owner over it (the path is never empty in between): two runs
 * that find the same stale lock cannot both take it, and neither can delete a live lock.
 */
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { link, open, readdir, readFile, rename, rm } from 'node:fs/promises';
import { hostname } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { isPipelineError, PipelineError } from './errors.js';
import { ensurePrivateDir, fileSystemError } from './atomic-file.js';

export interface LockOwner {
  pid: number;
  host: string;
  startedAt: string;
  /** The kernel's start time of the owner process (clock ticks since boot, Linux), so a reused pid is not taken for the owner. */
  procStart?: number;
  /** The owner's private scratch folder (`<workDir>/.runs/…`), for a person reading the lock. */
  runDir?: string;
}

export interface Lock {
  path: string;
  /** The dead owner whose stale lock this run took over, if any. */
  takenOver?: LockOwner;
  release(): Promise<void>;
}

/** The start time of process `pid` in clock ticks since boot (field 22 of /proc/PID/stat), when known. */
export function processStartTime(pid: number): number | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    // The command name (field 2) is in parentheses and may hold spaces: count from the last ')'.
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const ticks = Number(fields[19]);
    return Number.isFinite(ticks) ? ticks : undefined;
  } catch {
    return undefined;
  }
}

/** Whether `owner` (a process on this host) is still running: its pid exists and, when recorded, started when it did. */
export function ownerAlive(owner: Pick<LockOwner, 'pid' | 'procStart'>): boolean {
  try {
    process.kill(owner.pid, 0);
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EPERM') return false;
  }
  if (owner.procStart === undefined) return true;
  const now = processStartTime(owner.pid);
  return now === undefined || now === owner.procStart;
}

/** Parses a lock file's text; undefined when it is not a lock owner. The writer checks its own text with it too. */
export function parseLockOwner(text: string): LockOwner | undefined {
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch {
    return undefined;
  }
  const o = value as Partial<LockOwner> | null;
  if (typeof o !== 'object' || o === null) return undefined;
  if (!Number.isInteger(o.pid) || (o.pid as number) <= 0 || typeof o.host !== 'string' || typeof o.startedAt !== 'string') return undefined;
  if (o.procStart !== undefined && !Number.isFinite(o.procStart)) return undefined;
  if (o.runDir !== undefined && typeof o.runDir !== 'string') return undefined;
  return { pid: o.pid as number, host: o.host, startedAt: o.startedAt, procStart: o.procStart, runDir: o.runDir };
}

const sameOwner = (a: LockOwner | undefined, b: LockOwner | undefined) =>
  !!a && !!b && a.pid === b.pid && a.host === b.host && a.startedAt === b.startedAt && a.procStart === b.procStart;

async function readOwner(path: string): Promise<{ exists: boolean; owner?: LockOwner }> {
  try {
    return { exists: true, owner: parseLockOwner(await readFile(path, 'utf8')) };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return { exists: false };
    return { exists: true };
  }
}

/** Writes `owner` to a new private file beside `path` (fsynced), to be linked into place. */
async function ownerFile(path: string, owner: LockOwner): Promise<string> {
  const text = JSON.stringify(owner) + '\n';
  if (!sameOwner(parseLockOwner(text), owner)) throw new Error(`lock owner does not round-trip: ${text}`);
  const temp = join(dirname(path), `.${basename(path)}.${process.pid}.${randomBytes(6).toString('hex')}.tmp`);
  const handle = await open(temp, 'wx', 0o600);
  try {
    await handle.writeFile(text);
    await handle.sync();
  } finally {
    await handle.close();
  }
  return temp;
}

/** `link(temp, path)`: true when taken, false when `path` exists. */
async function tryLink(temp: string, path: string): Promise<boolean> {
  try {
    await link(temp, path);
    return true;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'EEXIST') return false;
    throw error;
  }
}

function lockedError(path: string, owner: LockOwner | undefined, unreadable = false): PipelineError {
  if (unreadable) {
    return new PipelineError('LOCKED', `the lock ${path} exists but names no owner (it is damaged or was not written by backup-pipeline)`, {
      hint: `Make sure no run of this pipeline is in progress, then remove ${path}.`,
      details: { lock: path },
    });
  }
  return new PipelineError(
    'LOCKED',
    owner ? `another run holds the lock ${path}: pid ${owner.pid} on ${owner.host}, started ${owner.startedAt}` : `another run holds the lock ${path}`,
    { details: { lock: path, owner } },
  );
}

export interface AcquireLockOptions {
  /** Recorded with the owner (see LockOwner.runDir). */
  runDir?: string;
}

/**
 * Takes the lock or throws LOCKED naming its holder. A lock left by a dead process on this host
 * is taken over (`takenOver` names it); a lock file that names no owner is kept and reported.
 */
export async function acquireLock(path: string, options: AcquireLockOptions = {}): Promise<Lock> {
  try {
    return await takeLock(path, options);
  } catch (error) {
    // A read-only or full work dir: say so, naming the lock (the core's step, no stage tag names it).
    const named = fileSystemError(error, path, 'creating');
    if (isPipelineError(named) && named !== error) named.message = `taking the lock: ${named.message}`;
    throw named;
  }
}

/** Owner files (`.NAME.PID.HEX.tmp`) left beside the lock by a run killed while taking it. */
async function removeDeadOwnerFiles(dir: string): Promise<void> {
  for (const name of await readdir(dir).catch(() => [] as string[])) {
    const m = /^\..+\.(\d+)\.[0-9a-f]{12}\.tmp$/.exec(name);
    if (m && Number(m[1]) !== process.pid && !ownerAlive({ pid: Number(m[1]) })) await rm(join(dir, name), { force: true });
  }
}

async function takeLock(path: string, options: AcquireLockOptions): Promise<Lock> {
  await ensurePrivateDir(dirname(path));
  await removeDeadOwnerFiles(dirname(path));
  const me: LockOwner = { pid: process.pid, host: hostname(), startedAt: new Date().toISOString(), procStart: processStartTime(process.pid), runDir: options.runDir };
  const temp = await ownerFile(path, me);
  const made = (takenOver?: LockOwner): Lock => ({
    path,
    takenOver,
    release: async () => {
      const current = await readOwner(path);
      if (sameOwner(current.owner, me)) await rm(path, { force: true });
    },
  });
  try {
    for (let attempt = 0; attempt < 3; attempt++) {
      if (await tryLink(temp, path)) return made();
      const { exists, owner } = await readOwner(path);
      if (!exists) continue; // released in between: try again
      if (!owner) throw lockedError(path, undefined, true);
      if (owner.host !== me.host || ownerAlive(owner)) throw lockedError(path, owner);
      // Stale: replace it under the takeover lock, if it still names the same dead owner.
      const takeover = `${path}.takeover`;
      if (!(await tryLink(temp, takeover))) {
        const other = (await readOwner(takeover)).owner;
        if (other && other.host === me.host && !ownerAlive(other) && attempt === 0) {
          // A run died while taking over (a window of microseconds): clear it once.
          const again = (await readOwner(takeover)).owner;
          if (sameOwner(again, other)) await rm(takeover, { force: true });
          continue;
        }
        throw lockedError(path, other ?? owner);
      }
      try {
        const still = (await readOwner(path)).owner;
        if (sameOwner(still, owner)) {
          // Replaced in one step: the lock path never stands empty for another run to take.
          await rename(temp, path);
          return made(owner);
        }
      } finally {
        const held = (await readOwner(takeover)).owner;
        if (sameOwner(held, me)) await rm(takeover, { force: true });
      }
    }
    const { owner } = await readOwner(path);
    throw lockedError(path, owner);
  } finally {
    await rm(temp, { force: true });
  }
}
