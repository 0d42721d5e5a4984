/**
 * A run's private scratch folder, where the next run can find it after a crash.
 *
 * Every run keeps its temporary files (the private PGPASSFILE with the cleartext password, gpg's
 * temporary keyring, a directory-format dump, fetched and decrypted artifacts of a restore) in
 * `<workDir>/.runs/<pid>-<random>/` (0700), with an `owner.json` naming its process. Its child
 * processes carry `BACKUP_PIPELINE_RUN=<that folder's name>` in their environment (set for the
 * whole process, so every child inherits it, however it is started, and so do their own children:
 * ssh under rsync, a daemonized gpg-agent).
 *
 * When a run starts, it looks at the other folders there: one whose owner is no longer running
 * on this host (a `kill -9`, a power cut, an OOM kill) is recovered: the processes still marked
 * with its name are ended (SIGTERM, then SIGKILL) and the folder is removed with the password file
 * in it. The work dir is used rather than $TMPDIR because it is the one place every later run sees
 * (systemd's PrivateTmp gives each service run its own /tmp; a manual run's /tmp is not the
 * timer's).
 */
import { mkdir, mkdtemp, readdir, readFile, rm, rmdir } from 'node:fs/promises';
import { hostname, tmpdir } from 'node:os';
import { randomBytes } from 'node:crypto';
import { basename, isAbsolute, join } from 'node:path';
import type { Logger } from 'pino';
import { DIR_MODE, writeFileAtomic } from './atomic-file.js';
import { ownerAlive, processStartTime } from './lock.js';

/** The environment variable that marks every child process of a run. */
export const RUN_MARKER = 'BACKUP_PIPELINE_RUN';
export const RUNS_DIR = '.runs';

export interface RunScratchOwner {
  pid: number;
  host: string;
  startedAt: string;
  procStart?: number;
  pipeline?: string;
  command?: string;
}

export interface RunScratch {
  /** The folder (ctx.tmpDir). */
  dir: string;
  /** Removes the folder (and `.runs` when it is empty) and unmarks this process. */
  remove(): Promise<void>;
}

export interface RecoveredRun {
  dir: string;
  owner?: RunScratchOwner;
  /** Processes of the dead run that were still running, now ended. */
  ended: number[];
}

const NAME = /^(\d+)-[A-Za-z0-9]{6}$/;

function parseOwner(text: string): RunScratchOwner | undefined {
  try {
    const o = JSON.parse(text) as Partial<RunScratchOwner>;
    if (!Number.isInteger(o.pid) || typeof o.host !== 'string' || typeof o.startedAt !== 'string') return undefined;
    return o as RunScratchOwner;
  } catch {
    return undefined;
  }
}

/** Pids of the processes whose environment holds `BACKUP_PIPELINE_RUN=<name>` (Linux /proc). */
export async function markedProcesses(name: string): Promise<number[]> {
  const needle = Buffer.from(`${RUN_MARKER}=${name}\0`);
  const found: number[] = [];
  for (const entry of await readdir('/proc').catch(() => [] as string[])) {
    if (!/^\d+$/.test(entry)) continue;
    const pid = Number(entry);
    if (pid === process.pid) continue;
    const environ = await readFile(`/proc/${pid}/environ`).catch(() => undefined);
    if (!environ) continue;
    // Entries are NUL-separated: match a whole entry, at the start or after a NUL.
    const at = environ.indexOf(needle);
    if (at === 0 || (at > 0 && environ[at - 1] === 0)) found.push(pid);
  }
  return found;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function isRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Ends the processes marked with `name`: SIGTERM, up to 3 s to exit, then SIGKILL. */
export async function endMarkedProcesses(name: string): Promise<number[]> {
  const pids = await markedProcesses(name);
  for (const pid of pids) {
    try {
      process.kill(pid, 'SIGTERM');
    } catch {
      // already gone
    }
  }
  for (let i = 0; i < 30 && pids.some(isRunning); i++) await sleep(100);
  for (const pid of pids.filter(isRunning)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  // Children that a SIGTERMed parent started on its way out.
  for (const pid of await markedProcesses(name)) {
    try {
      process.kill(pid, 'SIGKILL');
    } catch {
      // already gone
    }
  }
  return pids;
}

/** Notes of folders a run keeps outside its scratch folder: `outside-<random>` files holding one absolute path each. */
const OUTSIDE_NOTE = /^outside-[0-9a-f]{8}$/;
/** Only folders named like this are removed from a note (a tampered note cannot aim elsewhere). */
const OUTSIDE_NAME = /^bp-scratch-[A-Za-z0-9]+$/;

/**
 * Notes that `folder` (named `bp-scratch-…`) belongs to the run whose scratch folder is `runDir`:
 * the run's own cleanup and crash recovery remove it with the scratch folder. For what cannot live
 * inside it (a scratch cluster run as the postgres user, which cannot reach a root-only work dir).
 */
export async function noteOutsideFolder(runDir: string, folder: string): Promise<void> {
  if (!isAbsolute(folder) || !OUTSIDE_NAME.test(basename(folder))) throw new Error(`not a folder a run may keep outside its scratch folder: ${folder}`);
  await writeFileAtomic(join(runDir, `outside-${randomBytes(4).toString('hex')}`), folder + '\n');
}

async function removeOutsideFolders(runDir: string): Promise<void> {
  for (const note of await readdir(runDir).catch(() => [] as string[])) {
    if (!OUTSIDE_NOTE.test(note)) continue;
    const folder = (await readFile(join(runDir, note), 'utf8').catch(() => '')).trim();
    if (isAbsolute(folder) && OUTSIDE_NAME.test(basename(folder))) await rm(folder, { recursive: true, force: true }).catch(() => {});
  }
}

/** Recovers the scratch folders of runs that died on this host: ends their processes, removes the folders. */
export async function recoverDeadRuns(runsDir: string, log?: Logger): Promise<RecoveredRun[]> {
  const recovered: RecoveredRun[] = [];
  const me = hostname();
  for (const name of await readdir(runsDir).catch(() => [] as string[])) {
    const m = NAME.exec(name);
    if (!m) continue;
    const dir = join(runsDir, name);
    const owner = parseOwner(await readFile(join(dir, 'owner.json'), 'utf8').catch(() => ''));
    const pid = Number(m[1]);
    // A folder without a readable owner: its pid alone decides (it died before writing owner.json).
    if (owner && owner.host !== me) continue;
    const ownerPid = owner?.pid ?? pid;
    if (ownerAlive({ pid: ownerPid, procStart: owner?.procStart })) continue; // running (this process included)
    const ended = await endMarkedProcesses(name);
    await removeOutsideFolders(dir);
    await rm(dir, { recursive: true, force: true });
    recovered.push({ dir, owner, ended });
    log?.warn(
      { runDir: dir, deadPid: owner?.pid ?? pid, startedAt: owner?.startedAt, ended },
      `recovered after a crashed run (pid ${owner?.pid ?? pid}${owner?.startedAt ? `, started ${owner.startedAt}` : ''}, no longer running): removed its scratch folder ${dir} with any password file in it${ended.length > 0 ? `, ended ${ended.length} of its processes still running (pids ${ended.join(', ')})` : ''}`,
    );
  }
  return recovered;
}

/**
 * Creates this run's scratch folder under `<workDir>/.runs/`, after recovering those of dead runs.
 * A dry run (which must touch nothing) gets a folder in $TMPDIR instead, unmarked.
 */
export async function createRunScratch(workDir: string, options: { dryRun?: boolean; log?: Logger; pipeline?: string; command?: string } = {}): Promise<RunScratch> {
  if (options.dryRun) {
    const dir = await mkdtemp(join(tmpdir(), 'backup-pipeline-'));
    return { dir, remove: () => rm(dir, { recursive: true, force: true }) };
  }
  const runsDir = join(workDir, RUNS_DIR);
  let dir = '';
  try {
    await mkdir(workDir, { recursive: true, mode: DIR_MODE });
    await recoverDeadRuns(runsDir, options.log);
    for (let attempt = 0; ; attempt++) {
      try {
        // Not recursive: on a read-only file system a recursive mkdir says ENOENT, this one EROFS.
        await mkdir(runsDir, { mode: DIR_MODE }).catch((error: NodeJS.ErrnoException) => {
          if (error.code !== 'EEXIST') throw error;
        });
        dir = await mkdtemp(join(runsDir, `${process.pid}-`));
        break;
      } catch (error) {
        // Another run removed the empty `.runs` in between: make it again.
        if ((error as NodeJS.ErrnoException).code !== 'ENOENT' || attempt >= 3) throw error;
      }
    }
  } catch (error) {
    // A work dir this user cannot write (a restore run by another user on a new server): $TMPDIR,
    // which a later run may not see after a crash. A backup run fails at its lock anyway.
    if (!['EACCES', 'EPERM', 'EROFS'].includes((error as NodeJS.ErrnoException).code ?? '')) throw error;
    options.log?.warn({ workDir, err: (error as Error).message }, `cannot use ${runsDir} for this run's temporary files (${(error as NodeJS.ErrnoException).code}); using $TMPDIR instead`);
    dir = await mkdtemp(join(tmpdir(), 'backup-pipeline-'));
    return { dir, remove: () => rm(dir, { recursive: true, force: true }) };
  }
  const owner: RunScratchOwner = { pid: process.pid, host: hostname(), startedAt: new Date().toISOString(), procStart: processStartTime(process.pid), pipeline: options.pipeline, command: options.command };
  await writeFileAtomic(join(dir, 'owner.json'), JSON.stringify(owner) + '\n');
  const name = basename(dir);
  const previous = process.env[RUN_MARKER];
  process.env[RUN_MARKER] = name;
  return {
    dir,
    remove: async () => {
      if (process.env[RUN_MARKER] === name) {
        if (previous === undefined) delete process.env[RUN_MARKER];
        else process.env[RUN_MARKER] = previous;
      }
      await removeOutsideFolders(dir);
      await rm(dir, { recursive: true, force: true });
      await rmdir(runsDir).catch(() => {}); // only when empty; another run's folder keeps it
    },
  };
}
