/** The one-of-each helpers: secrets masking, exec, atomic writes, lock, set ids. */
import { randomBytes } from 'node:crypto';
import { chmod, readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { copyFileAtomic, hashFile, writeFileAtomic } from './atomic-file.js';
import { displayCommand, exec } from './exec.js';
import { acquireLock } from './lock.js';
import { makeSetId, parseSetId } from './manifest.js';
import { escapePgPassField } from './postgres.js';
import { SecretRegistry } from './secrets.js';
import { tempDir } from './test-fixtures.js';

describe('SecretRegistry', () => {
  it.each([
    ['plain', 'pw is hunter2!', 'pw is ***'],
    ['JSON-escaped', JSON.stringify({ pw: 'a"b\\c' }), '{"pw":"***"}'],
    ['URL-encoded', 'postgres://u:a%22b%5Cc@h/db', 'postgres://u:***@h/db'],
    ['several times', 'a"b\\c a"b\\c', '*** ***'],
  ])('masks a secret %s', (_label, text, expected) => {
    const secrets = new SecretRegistry();
    secrets.add(text.startsWith('pw is') ? 'hunter2!' : 'a"b\\c');
    expect(secrets.mask(text)).toBe(expected);
  });

  it('masks the longer of two overlapping secrets whole', () => {
    const secrets = new SecretRegistry();
    secrets.add('abc');
    secrets.add('abcdef');
    expect(secrets.mask('xabcdefx abc')).toBe('x***x ***');
  });
});

describe('exec', () => {
  it('masks secrets in the displayed command and in errors, and keeps the stderr tail', async () => {
    const secrets = new SecretRegistry();
    secrets.add('s3cret');
    expect(displayCommand('tool', ['--token', 's3cret', 'a b'], secrets)).toBe("tool --token *** 'a b'");
    const error = await exec('sh', ['-c', 'echo line1 >&2; echo "bad s3cret" >&2; exit 3', 's3cret'], { secrets }).catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'EXEC_FAILED' });
    expect((error as Error).message).toBe('sh exited with code 3: line1\nbad ***');
    expect(JSON.stringify(error)).not.toContain('s3cret');
    expect((error as { details: { command: string } }).details.command).toContain('***');
  });

  it('ignores stdin by default, never passes PGPASSWORD on, and reports a missing program', async () => {
    const out = await exec('sh', ['-c', 'cat; echo "pw=${PGPASSWORD:-none}"'], { env: { PGPASSWORD: undefined } });
    expect(out.stdout).toBe('pw=none\n');
    process.env.PGPASSWORD = 'leak';
    try {
      expect((await exec('sh', ['-c', 'echo "pw=${PGPASSWORD:-none}"'])).stdout).toBe('pw=none\n');
    } finally {
      delete process.env.PGPASSWORD;
    }
    await expect(exec('/no/such/program', [])).rejects.toMatchObject({ code: 'EXEC_NOT_FOUND' });
  });

  it("keeps a streamed stdout whole when the reader attaches late", async () => {
    const child = exec('sh', ['-c', 'head -c 3000000 /dev/zero'], { stdout: 'stream' });
    await new Promise((r) => setTimeout(r, 300));
    let bytes = 0;
    for await (const chunk of child.stdout!) bytes += (chunk as Buffer).length;
    expect(bytes).toBe(3_000_000);
    await expect(child).resolves.toMatchObject({ exitCode: 0 });
  });

  it('kills the child when the signal aborts', async () => {
    const controller = new AbortController();
    const started = Date.now();
    setTimeout(() => controller.abort(), 100);
    await expect(exec('sleep', ['20'], { signal: controller.signal })).rejects.toMatchObject({ code: 'ABORTED' });
    expect(Date.now() - started).toBeLessThan(6000);
  });
});

describe('writeFileAtomic', () => {
  it('writes 0600 files in 0700 folders and returns size and sha256', async () => {
    const dir = await tempDir();
    const path = join(dir, 'sub', 'f.bin');
    const digest = await writeFileAtomic(path, Readable.from([Buffer.from('hello '), Buffer.from('world')]));
    expect(digest).toEqual({ bytes: 11, sha256: 'b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9' });
    expect((await stat(path)).mode & 0o777).toBe(0o600);
    expect((await stat(join(dir, 'sub'))).mode & 0o777).toBe(0o700);
    expect(await hashFile(path)).toEqual(digest);
  });

  it('leaves neither the file nor a partial behind when the source stream fails', async () => {
    const dir = await tempDir();
    async function* failing() {
      yield Buffer.from('some data');
      throw new Error('disk on fire');
    }
    await expect(writeFileAtomic(join(dir, 'f.bin'), Readable.from(failing()))).rejects.toThrow('disk on fire');
    expect(await readdir(dir)).toEqual([]);
  });

  it('keeps the previous file intact when overwriting fails', async () => {
    const dir = await tempDir();
    const path = join(dir, 'f.txt');
    await writeFileAtomic(path, 'good');
    async function* failing() {
      yield Buffer.from('half');
      throw new Error('interrupted');
    }
    await expect(writeFileAtomic(path, Readable.from(failing()))).rejects.toThrow('interrupted');
    expect(await readFile(path, 'utf8')).toBe('good');
  });
});

describe('copyFileAtomic', () => {
  /** Bytes of `path` in the page cache (util-linux fincore). */
  const cached = async (path: string) => Number((await exec('fincore', ['-b', '-n', '-o', 'RES', path])).stdout.trim());
  // 20 MiB and a bit: not a multiple of dd's 4 MiB blocks or of the disk's sectors.
  const source = async (dir: string) => {
    const path = join(dir, 'staged.bin');
    const bytes = randomBytes(20 * 1024 * 1024 + 1234);
    await writeFile(path, bytes);
    return { path, bytes };
  };

  it('copies past the page cache: the whole file, 0600, and at most its last block left in memory', async () => {
    const dir = await tempDir();
    const from = await source(dir);
    const to = join(dir, 'copy', 'staged.bin');
    expect(await cached(from.path)).toBeGreaterThanOrEqual(from.bytes.length); // fincore sees a file just written
    expect(await copyFileAtomic(from.path, to, from.bytes.length)).toBe(from.bytes.length);
    expect(await cached(to)).toBeLessThanOrEqual(4 * 1024 * 1024);
    expect((await stat(to)).mode & 0o777).toBe(0o600);
    expect((await readFile(to)).equals(from.bytes)).toBe(true);
    expect(await readdir(join(dir, 'copy'))).toEqual(['staged.bin']);
  });

  it('copies through the page cache (copy_file_range) where dd cannot write past it', async () => {
    const dir = await tempDir();
    const from = await source(dir);
    const folder = join(dir, 'copy');
    await writeFile(join(dir, 'dd'), '#!/bin/sh\necho "dd: failed to open: Invalid argument" >&2\nexit 1\n');
    await chmod(join(dir, 'dd'), 0o755);
    const path = process.env.PATH;
    process.env.PATH = `${dir}:${path}`;
    const to = join(folder, 'staged.bin');
    try {
      expect(await copyFileAtomic(from.path, to, from.bytes.length)).toBe(from.bytes.length);
    } finally {
      process.env.PATH = path;
    }
    expect(await cached(to)).toBeGreaterThanOrEqual(from.bytes.length);
    expect((await stat(to)).mode & 0o777).toBe(0o600);
    expect((await readFile(to)).equals(from.bytes)).toBe(true);
    expect(await readdir(folder)).toEqual(['staged.bin']);
  });

  it('leaves no partial behind when the source is shorter than it should be', async () => {
    const dir = await tempDir();
    const from = await source(dir);
    const to = join(dir, 'copy', 'staged.bin');
    await expect(copyFileAtomic(from.path, to, from.bytes.length + 1)).rejects.toMatchObject({ code: 'CHECKSUM_MISMATCH' });
    expect(await readdir(join(dir, 'copy'))).toEqual([]);
  });
});

describe('lock', () => {
  it('refuses a held lock, naming the holder, and takes over a stale one', async () => {
    const dir = await tempDir();
    const path = join(dir, 'nightly.lock');
    const lock = await acquireLock(path);
    await expect(acquireLock(path)).rejects.toMatchObject({ code: 'LOCKED', exitCode: 75 });
    await lock.release();
    // A lock left by a process that no longer exists is stale.
    await writeFile(path, JSON.stringify({ pid: 2 ** 22 + 1, host: (await import('node:os')).hostname(), startedAt: 'then' }));
    const again = await acquireLock(path);
    await again.release();
    expect(await readdir(dir)).toEqual([]);
  });
});

describe('set ids', () => {
  it('sort by time and parse back', () => {
    const id = makeSetId(new Date('2026-11-25T01:45:00.123Z'), 'mastodon');
    expect(id).toBe('20261125T014500Z-mastodon');
    expect(parseSetId(id)).toEqual({ time: new Date('2026-11-25T01:45:00Z'), source: 'mastodon' });
    expect(parseSetId('20261125T014500123Z-mastodon')?.source).toBe('mastodon');
    expect(parseSetId('.locks')).toBeUndefined();
    expect(parseSetId('20261125T014500Z-')).toBeUndefined();
  });
});

describe('pgpass escaping', () => {
  it.each([
    ['plain', 'plain'],
    ['a:b', 'a\\:b'],
    ['back\\slash', 'back\\\\slash'],
    [`it's "#1" pw`, `it's "#1" pw`],
  ])('%s', (input, expected) => expect(escapePgPassField(input)).toBe(expected));
});
