/**
 * The exec helper's promises about chains and errors: an OS pipe between two children carries
 * every byte (through no private Node.js internals), a child whose reader went away is stopped
 * at once, and a failure names its cause: PostgreSQL's ERROR/FATAL lines wherever they are in
 * stderr, a full disk with the path being written.
 */
import { existsSync, readFileSync, statSync, utimesSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { exec, pgErrorLines, settleChain } from './exec.js';
import { isPipelineError } from './errors.js';

describe('exec chains', () => {
  it('pipes one child into the next over an OS pipe, every byte, without reading private handles', async () => {
    const consumer = exec('sha256sum', [], { stdin: { fromProcess: true } });
    const producer = exec('seq', ['1', '3000000'], { stdout: { pipeTo: consumer } });
    const [, got] = await Promise.all([producer, consumer]);
    const expected = await exec('sh', ['-c', 'seq 1 3000000 | sha256sum']);
    expect(got.stdout).toBe(expected.stdout);
    expect(readFileSync(new URL('./exec.ts', import.meta.url), 'utf8')).not.toMatch(/_handle/);
  });

  it('gives a file to a child as its stdin descriptor (the child reads it itself); a missing file is one clear error', async () => {
    const file = new URL('./exec.ts', import.meta.url).pathname;
    const got = await exec('sh', ['-c', 'readlink /proc/self/fd/0; sha256sum'], { stdin: { file } });
    const [fd0, sum] = got.stdout.trim().split('\n');
    expect(fd0).toBe(file);
    expect(sum).toBe((await exec('sha256sum', [file])).stdout.trim().replace(`  ${file}`, '  -'));
    const missing = await exec('cat', [], { stdin: { file: `${file}.missing` } }).catch((e: unknown) => e);
    expect(isPipelineError(missing) && missing.message).toMatch(/ENOENT.*exec\.ts\.missing|exec\.ts\.missing.*ENOENT/);
  });

  it('writes a stdout file the child fills itself: new ones 0600, content replaced, an empty one never truncated', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'exec-file-'));
    try {
      const fresh = join(dir, 'fresh');
      await exec('echo', ['one'], { stdout: { file: fresh } });
      expect(readFileSync(fresh, 'utf8')).toBe('one\n');
      expect(statSync(fresh).mode & 0o777).toBe(0o600);
      await exec('echo', ['2'], { stdout: { file: fresh } });
      expect(readFileSync(fresh, 'utf8')).toBe('2\n');
      // Truncating (even an empty file) would make ext4 write the whole file back on close; its
      // mtime shows whether it happened.
      const empty = join(dir, 'empty');
      writeFileSync(empty, '');
      utimesSync(empty, 946684800, 946684800);
      await exec('true', [], { stdout: { file: empty } });
      expect(statSync(empty).mtimeMs).toBe(946684800000);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  it('stops a child whose reader went away instead of leaving it blocked on a full pipe', async () => {
    const child = exec('yes', [], { stdout: 'stream', label: 'yes' });
    for await (const _chunk of child.stdout!) break; // the reader gives up (a failed file write does the same)
    const error = await child.then(
      () => undefined,
      (e: unknown) => e,
    );
    expect(isPipelineError(error) && error.details?.stopped).toBe(true);
    expect((error as Error).message).toMatch(/yes was stopped .* because another part of its chain failed/);
    // Gone (reaped), not merely signalled.
    expect(existsSync(`/proc/${child.pid}`)).toBe(false);
  });
});

describe('settleChain', () => {
  const later = (ms: number, error?: Error) => new Promise<string>((resolve, reject) => setTimeout(() => (error ? reject(error) : resolve('ok')), ms));

  it('throws the earliest failure that is not a consequence, and stops the others once', async () => {
    let stops = 0;
    const cause = Object.assign(new Error('zstd was killed by SIGKILL'), { details: { signal: 'SIGKILL' } });
    const consequence = new Error('pg_dump exited with code 1: could not write to output file: Broken pipe');
    const stopped = Object.assign(new Error('tar was stopped'), { details: { stopped: true } });
    await expect(settleChain([later(30, consequence), later(10, cause), later(20, stopped)] as const, () => stops++)).rejects.toBe(cause);
    expect(stops).toBe(1);
  });

  it('falls back to the first failure when all of them are consequences, and returns every value otherwise', async () => {
    const a = Object.assign(new Error('a was stopped'), { details: { stopped: true } });
    await expect(settleChain([later(5, a), later(10, new Error('EPIPE'))] as const, () => {})).rejects.toBe(a);
    await expect(settleChain([later(5), later(1)] as const, () => {})).resolves.toEqual(['ok', 'ok']);
  });

  it('a writer whose reader exited on its own is the consequence, even when it fails first (a socket pair says ECONNRESET, not EPIPE)', async () => {
    // Node's stdio pipes are socket pairs: `cat` writing into a reader that left reads
    // "Connection reset by peer". The reader's own exit is the cause, whichever settles first.
    const reset = new Error('cat (corrupt-reader) exited with code 1: cat: write error: Connection reset by peer');
    const cause = new Error('the stream is corrupt');
    await expect(settleChain([later(1, reset), later(20, cause)] as const, () => {})).rejects.toBe(cause);
    const reader = exec('sh', ['-c', 'head -c 1000 >/dev/null; exit 7'], { stdin: { fromProcess: true }, label: 'reader' });
    const writer = exec('cat', ['/dev/zero'], { stdout: { pipeTo: reader }, label: 'cat' });
    const error = await settleChain([writer, reader] as const, () => {}).catch((e: unknown) => e);
    expect((error as Error).message).toMatch(/^reader exited with code 7/);
  });

  it('a member stopped after it had failed on its own with a full disk is the cause, not a consequence of the stop', async () => {
    // The file's tee hits ENOSPC and exits; gpg, writing into it, notices first (Broken pipe), and
    // stopping the chain then reaches a tee that is already gone. Here the "tee" says its words
    // and exits with its own code when the stop arrives, so the order is not left to chance.
    const tee = exec('sh', ['-c', 'trap \'kill $!; echo "tee: standard output: No space left on device" >&2; exit 1\' TERM; sleep 30 >/dev/null 2>&1 & wait'], { label: 'tee', writes: '/x/db.dump.gpg' });
    const gpg = later(300, new Error('gpg exited with code 2: gpg: [stdout]: write error: Broken pipe'));
    const error = await settleChain([gpg, tee] as const, () => tee.kill()).catch((e: unknown) => e);
    expect(isPipelineError(error) && error.code).toBe('NO_SPACE');
    expect((error as Error).message).toMatch(/^tee ran out of disk space writing \/x\/db\.dump\.gpg/);
  });

  it('names every member an interrupted run stopped, in the chain\'s order, whichever noticed first', async () => {
    for (let round = 0; round < 3; round++) {
      const abort = new AbortController();
      const tar = exec('sleep', ['30'], { label: 'tar', signal: abort.signal });
      const gpg = exec('sleep', ['30'], { label: 'gpg', signal: abort.signal });
      setTimeout(() => abort.abort(), 50);
      const error = await settleChain([tar, gpg] as const, () => {}).catch((e: unknown) => e);
      expect(isPipelineError(error) && error.code).toBe('ABORTED');
      expect((error as Error).message).toBe('tar | gpg were stopped because the run was interrupted');
    }
  });
});

describe('exec errors name the cause', () => {
  const failing = (script: string, options: Parameters<typeof exec>[2] = {}) =>
    exec('sh', ['-c', script], options).then(
      () => {
        throw new Error('expected a failure');
      },
      (e: unknown) => e as Error & { code: string; details: Record<string, unknown> },
    );

  it('shows a PostgreSQL client error line that is far from the end of its stderr', async () => {
    const error = await failing(
      `echo 'pg_restore: error: could not execute query: ERROR:  permission denied for schema public' >&2
       echo 'Command was: CREATE FUNCTION public.f() RETURNS int' >&2
       for i in $(seq 1 40); do echo "    body line $i" >&2; done; exit 1`,
      { label: 'pg_restore' },
    );
    expect(error.code).toBe('EXEC_FAILED');
    expect(error.message).toContain('permission denied for schema public');
    expect(error.message).not.toContain('body line 40');
    // Kept for the error parsers (connection errors, lock timeouts) even though it left the tail.
    expect(error.details.stderr).toContain('permission denied for schema public');
    expect(error.details.errors).toEqual(['pg_restore: error: could not execute query: ERROR:  permission denied for schema public']);
  });

  it('keeps the error lines of a stderr far longer than it keeps, and never kills a talkative child', async () => {
    const error = await failing(`echo 'psql:restore.sql:3: FATAL:  terminating connection' >&2; head -c 6000000 /dev/zero | tr '\\0' 'x' | fold -w 100 >&2; exit 3`, { label: 'psql' });
    expect(error.message).toContain('exited with code 3');
    expect(error.message).toContain('FATAL:  terminating connection');
  });

  it('turns a program that ran out of space into NO_SPACE naming the path it writes', async () => {
    const error = await failing(`echo 'zstd: error 70 : Write error : cannot write block : No space left on device' >&2; exit 70`, { label: 'zstd', writes: '/srv/work/set/x.dump.zst' });
    expect(error.code).toBe('NO_SPACE');
    expect(error.message).toBe('zstd ran out of disk space writing /srv/work/set/x.dump.zst (ENOSPC): zstd: error 70 : Write error : cannot write block : No space left on device');
  });

  it.each([
    ['psql:file.sql:12: ERROR:  relation "x" does not exist', true],
    ['pg_dump: error: query failed: ERROR:  permission denied for table accounts', true],
    ['FATAL:  password authentication failed for user "m"', true],
    ['    RAISE NOTICE \'an ERROR:  inside a function body\';', false],
    ['pg_restore: warning: errors ignored on restore: 3', false],
    ['ERRORS: none', false],
  ])('pgErrorLines(%j) -> %s', (line, expected) => {
    expect(pgErrorLines(line).length > 0).toBe(expected);
  });
});
