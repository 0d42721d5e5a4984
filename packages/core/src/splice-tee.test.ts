/**
 * The core's splicing tee (libexec/splice-tee.pl) with real pipes, FIFOs and files: every output
 * gets every byte, in order, whatever it is (a FIFO, a socket pair from Node.js, a file opened for
 * appending, a plain file); a reader that leaves is dropped like `tee -p` drops it; a write error
 * fails with the system's own words.
 */
import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { SPLICE_TEE } from './artifact-stream.js';
import { exec, type ExecOptions } from './exec.js';

const SIZE = 8 * 1024 * 1024 + 12345; // many pieces, and a last one that is not a whole page
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('splice-tee', () => {
  let dir: string;
  let source: string;
  let data: Buffer;
  const fifo = async (name: string) => (await exec('mkfifo', ['-m', '600', join(dir, name)]), join(dir, name));
  /** Starts `splice-tee outputs…` fed by `cat source` over a Node.js socket pair (as the core connects them). */
  const run = (outputs: string[], stdout: ExecOptions['stdout']) => {
    const tee = exec('perl', [SPLICE_TEE, '--', ...outputs], { stdin: { fromProcess: true }, stdout, label: 'tee' });
    const producer = exec('cat', ['--', source], { stdout: { pipeTo: tee }, label: 'cat' });
    return { tee, producer };
  };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bp-splice-tee-'));
    source = join(dir, 'source');
    data = randomBytes(SIZE);
    await writeFile(source, data);
  });
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  it('runs on this system (--check)', async () => {
    await expect(exec('perl', [SPLICE_TEE, '--check'])).resolves.toMatchObject({ exitCode: 0 });
  });

  it('FIFOs, a plain file and an appended file all get every byte; a reader that leaves early is dropped', async () => {
    const [full, early] = [await fifo('full'), await fifo('early')];
    const plainFile = join(dir, 'plain-file');
    const appended = join(dir, 'appended');
    await writeFile(appended, '');
    const fullReader = exec('sha256sum', ['-b', full], { label: 'sha256sum' });
    const earlyReader = exec('head', ['-c', '16', early], { stdout: { file: join(dir, 'first-16') }, label: 'head' });
    const { tee, producer } = run([full, early, plainFile], { file: appended, append: true });
    const [fullOut] = await Promise.all([fullReader, earlyReader, tee, producer]);
    expect(fullOut.stdout.slice(0, 64)).toBe(sha(data));
    expect(await readFile(join(dir, 'first-16'))).toEqual(data.subarray(0, 16));
    expect(sha(await readFile(plainFile))).toBe(sha(data)); // not a pipe: staged through one of its own
    expect(sha(await readFile(appended))).toBe(sha(data)); // splice cannot append: read and written
  });

  it('standard output\'s reader leaving does not cut the other outputs short; the exit is 0 as with tee -p', async () => {
    const full = await fifo('full-2');
    const fullReader = exec('sha256sum', ['-b', full], { label: 'sha256sum' });
    const head = exec('head', ['-c', '10'], { stdin: { fromProcess: true }, stdout: { file: join(dir, 'first-10') }, label: 'head' });
    const { tee, producer } = run([full], { pipeTo: head });
    const [fullOut] = await Promise.all([fullReader, head, tee, producer.catch(() => undefined)]);
    expect(fullOut.stdout.slice(0, 64)).toBe(sha(data));
    expect(await readFile(join(dir, 'first-10'))).toEqual(data.subarray(0, 10));
  });

  it('a write error fails with the system\'s words (a full disk)', async () => {
    const { tee, producer } = run([], { file: '/dev/full' });
    const [teeOut] = await Promise.allSettled([tee, producer]);
    expect(teeOut.status).toBe('rejected');
    expect(String((teeOut as PromiseRejectedResult).reason.message)).toMatch(/splice-tee: standard output: No space left on device/);
  });
});
