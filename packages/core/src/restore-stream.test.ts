/**
 * The restore's checked chain with real programs, both ways a stored copy arrives: as a stream
 * (`checkedChain`, `Destination.read`) and as a local file (`checkedFileChain`,
 * `Destination.localFile`, hashed and decrypted in OS processes). The same promises hold for both:
 * the end is held until both sha256 match, a damaged copy is told from a failing program even when
 * the program stopped reading at once, a reader that goes away does not stop the checks, and an
 * interruption stops everything. The file chain also keeps the stored bytes out of this process.
 */
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { text } from 'node:stream/consumers';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { PipelineError } from './errors.js';
import { exec } from './exec.js';
import { checkedChain, checkedFileChain, isDamagedCopy, isFetchFailure, type CheckedChain, type StreamFilter } from './restore-stream.js';

const SIZE = 48 * 1024 * 1024;
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

/** This process's own reads (every thread's counter; /proc/self/io would add its reaped children's). */
async function bytesRead(): Promise<number> {
  let total = 0;
  for (const task of await readdir('/proc/self/task')) {
    const io = await readFile(`/proc/self/task/${task}/io`, 'utf8').catch(() => '');
    total += Number(/^rchar: (\d+)$/m.exec(io)?.[1] ?? 0);
  }
  return total;
}

describe('the checked restore chain', () => {
  let dir: string;
  let stored: string;
  let storedDigest: { bytes: number; sha256: string };
  let plainBytes: Buffer;
  // The "decrypting" program: gzip, whose output from stdin is the same every time and far smaller
  // than its input (what this process reads of the chain is then mostly the plaintext).
  const filter: StreamFilter = { command: 'gzip', args: ['-1', '-c', '-n'], label: 'gzip' };

  beforeAll(async () => {
    dir = await mkdtemp(join(tmpdir(), 'bp-restore-stream-'));
    stored = join(dir, 'stored');
    // Compressible but not trivial: random lines repeated within gzip's 32 KiB window.
    const lines = Array.from({ length: 512 }, () => randomBytes(24).toString('base64')).join('\n');
    const content = Buffer.alloc(SIZE);
    for (let off = 0; off < SIZE; off += lines.length) content.write(lines, off);
    await writeFile(stored, content);
    storedDigest = { bytes: SIZE, sha256: sha(content) };
    const { stdout } = await exec('sh', ['-c', `gzip -1 -c -n < '${stored}' | base64 -w0`]);
    plainBytes = Buffer.from(stdout, 'base64');
  });
  afterAll(async () => {
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const plain = () => ({ bytes: plainBytes.length, sha256: sha(plainBytes) });
  const ways: Array<[string, (o: { stored: { bytes: number; sha256: string }; plain?: { bytes: number; sha256: string }; filter?: StreamFilter; file?: string }) => Promise<CheckedChain>]> = [
    ['a stream (checkedChain)', async (o) => checkedChain({ ...o, source: createReadStream(o.file ?? stored), copy: 'here/set/stored', name: 'db.dump', exec })],
    ['a local file (checkedFileChain)', (o) => checkedFileChain({ ...o, file: o.file ?? stored, tmpDir: dir, copy: 'here/set/stored', name: 'db.dump', exec })],
  ];

  for (const [way, open] of ways) {
    describe(way, () => {
      it('gives the program\'s output, and its end only once both sha256 matched', async () => {
        const chain = await open({ stored: storedDigest, plain: plain(), filter });
        const chunks: Buffer[] = [];
        for await (const c of chain.stream) chunks.push(c as Buffer);
        await expect(chain.checked).resolves.toBeUndefined();
        expect(sha(Buffer.concat(chunks))).toBe(plain().sha256);
      });

      it('a damaged copy is CHECKSUM_MISMATCH about the copy, even when the program failed without reading a byte', async () => {
        const damaged = { ...storedDigest, sha256: '0'.repeat(64) };
        const quitter: StreamFilter = { command: 'sh', args: ['-c', 'exit 3'], label: 'quitter' };
        for (const f of [filter, quitter]) {
          const chain = await open({ stored: damaged, plain: plain(), filter: f });
          await expect(text(chain.stream)).rejects.toThrow();
          const error = await chain.checked.catch((e: unknown) => e);
          expect(isDamagedCopy(error)).toBe(true);
        }
        // A good copy and a failing program: the program's failure, not damage.
        const chain = await open({ stored: storedDigest, plain: plain(), filter: quitter });
        await expect(text(chain.stream)).rejects.toThrow();
        const error = await chain.checked.catch((e: unknown) => e);
        expect(error).toBeInstanceOf(PipelineError);
        expect(isDamagedCopy(error)).toBe(false);
        expect((error as PipelineError).message).toMatch(/quitter exited with code 3/);
      });

      it('content that is not what was backed up is CHECKSUM_MISMATCH of the plaintext, not of the copy', async () => {
        const chain = await open({ stored: storedDigest, plain: { ...plain(), sha256: 'f'.repeat(64) }, filter });
        await expect(text(chain.stream)).rejects.toThrow(/decrypts to content that does not match/);
        const error = await chain.checked.catch((e: unknown) => e);
        expect((error as PipelineError).code).toBe('CHECKSUM_MISMATCH');
        expect(isDamagedCopy(error)).toBe(false);
      });

      it('a reader that goes away early does not stop the checks: the whole copy is still hashed', async () => {
        const damaged = { ...storedDigest, sha256: '0'.repeat(64) };
        for (const [digest, ok] of [[storedDigest, true], [damaged, false]] as const) {
          const chain = await open({ stored: digest, plain: plain(), filter });
          await new Promise<void>((resolve) => chain.stream.once('data', () => resolve()));
          chain.stream.destroy();
          const error = await chain.checked.then(() => undefined, (e: unknown) => e);
          if (ok) expect(error).toBeUndefined();
          else expect(isDamagedCopy(error)).toBe(true);
        }
      });

      it('a copy that cannot be read is a fetch failure (another copy may do better), never damage', async () => {
        const chain = await open({ stored: storedDigest, plain: plain(), filter, file: join(dir, 'missing') });
        await expect(text(chain.stream)).rejects.toThrow();
        const error = await chain.checked.catch((e: unknown) => e);
        expect(isFetchFailure(error)).toBe(true);
        expect(isDamagedCopy(error)).toBe(false);
      });

      it('stop() ends everything at once: ABORTED', async () => {
        const chain = await open({ stored: storedDigest, plain: plain(), filter });
        chain.stop();
        await expect(chain.checked).rejects.toMatchObject({ code: 'ABORTED' });
      });
    });
  }

  it('from a local file, no byte of the stored copy passes through this process', async () => {
    const before = await bytesRead();
    const chain = await checkedFileChain({ file: stored, tmpDir: dir, stored: storedDigest, plain: plain(), filter, copy: 'here/set/stored', name: 'db.dump', exec });
    const out = Buffer.concat(await chain.stream.toArray());
    await chain.checked;
    const read = (await bytesRead()) - before;
    expect(sha(out)).toBe(plain().sha256);
    // The plaintext, and little else; the stream way reads the 48 MiB copy itself.
    expect(plainBytes.length).toBeLessThan(SIZE / 8);
    expect(read).toBeLessThan(plainBytes.length + 4 * 1024 * 1024);
    // The named pipes are gone once the chain is.
    await new Promise((r) => setTimeout(r, 100));
    expect((await readdir(dir)).filter((n) => n.startsWith('restore-stream-'))).toEqual([]);
  });
});
