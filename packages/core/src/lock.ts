/** One run per pipeline at a time: a lock file holding the pid and host of its owner. */
import { hostname } from 'node:os';
import { dirname } from 'node:path';
import { open, readFile, rm } from 'node:fs/promises';
import { PipelineError } from './errors.js';
import { ensurePrivateDir } from './atomic-file.js';

export interface LockOwner {
  pid: number;
  host: string;
  startedAt: string;
}

export interface Lock {
  path: string;
  release(): Promise<void>;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Takes the lock or throws LOCKED naming its holder. A lock left by a dead process on this host is taken over. */
export async function acquireLock(path: string): Promise<Lock> {
  await ensurePrivateDir(dirname(path));
  const me: LockOwner = { pid: process.pid, host: hostname(), startedAt: new Date().toISOString() };
  for (let attempt = 0; attempt < 2; attempt++) {
    try {
      const handle = await open(path, 'wx', 0o600);
      await handle.writeFile(JSON.stringify(me) + '\n');
      await handle.close();
      return {
        path,
        release: async () => {
          const current = await readOwner(path);
          if (current?.pid === me.pid && current.host === me.host) await rm(path, { force: true });
        },
      };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      const owner = await readOwner(path);
      const stale = owner === undefined || (owner.host === me.host && !alive(owner.pid));
      if (stale && attempt === 0) {
        await rm(path, { force: true });
        continue;
      }
      throw new PipelineError(
        'LOCKED',
        owner
          ? `another run holds the lock ${path}: pid ${owner.pid} on ${owner.host}, started ${owner.startedAt}`
          : `another run holds the lock ${path}`,
        { details: { lock: path, owner } },
      );
    }
  }
  throw new PipelineError('LOCKED', `could not take the lock ${path}`);
}

async function readOwner(path: string): Promise<LockOwner | undefined> {
  try {
    const owner = JSON.parse(await readFile(path, 'utf8')) as LockOwner;
    return typeof owner.pid === 'number' ? owner : undefined;
  } catch {
    return undefined;
  }
}
