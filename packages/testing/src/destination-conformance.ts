/**
 * The destination conformance suite: every destination plugin (built-in or community) runs it
 * against itself with vitest to prove it keeps the Destination contract and the layout rule.
 *
 *   // src/conformance.test.ts of a destination plugin
 *   import { describeDestinationConformance } from '@backup-pipeline/testing';
 *   describeDestinationConformance('my-destination', async () => {
 *     const server = await startMyServer();                  // a real server, no mocks
 *     return { destination: new MyDestination(server.url), teardown: () => server.stop() };
 *   });
 *
 * `setup` runs once (beforeAll); every case uses its own set ids (source `conformance`, year
 * 2030), so the destination may be shared. What it checks: put/list/get/delete round trip with the
 * sha256 kept; a set without manifest is listed `hasManifest: false` and becomes complete only when
 * the manifest is put last; overwriting is idempotent; a put whose bytes do not match the declared
 * sha256 rejects with CHECKSUM_MISMATCH and leaves nothing readable (get and list); a set whose
 * manifest is corrupt, of another set, or lists a missing or short artifact is `damaged`, never
 * complete, and listing keeps it; deleting a missing set is no error; malformed set ids
 * are refused with SET_NOT_FOUND; put reports progress through onBytes up to the file's size; names with spaces, quotes and unicode survive; a get of a missing file rejects with
 * SET_NOT_FOUND and writes nothing; list returns ids in time order; a 64 MiB file (generated as a
 * stream) round-trips. A destination with the tree capability (`putTree`, `getTree`,
 * `treeEntries`) also passes the tree cases of tree-conformance.ts. A destination that declares the optional `read` streams files back byte for
 * byte (the large one too), fails a missing one with SET_NOT_FOUND, and stops when its reader goes
 * away; one without it skips those cases (restore then fetches with `get`).
 */
import { createHash, randomBytes } from 'node:crypto';
import { createWriteStream } from 'node:fs';
import { link, mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hashFile, listSets, MANIFEST_FORMAT, MANIFEST_NAME, makeSetId, type Destination, type PutSource } from '@backup-pipeline/core';
import { describeTreeConformance } from './tree-conformance.js';

export interface ConformanceSetup {
  destination: Destination;
  teardown(): Promise<void>;
}

export interface ConformanceOptions {
  /** Size of the large-file case (default 64 MiB). */
  largeFileBytes?: number;
  /** Source name used in the set ids this suite makes (default `conformance`). */
  source?: string;
}

/** Writes `bytes` pseudo-random bytes to `path` as a stream (never held whole in memory). */
export async function writeLargeFile(path: string, bytes: number): Promise<PutSource> {
  const hash = createHash('sha256');
  const chunk = 1024 * 1024;
  let left = bytes;
  const seed = randomBytes(chunk);
  let n = 0;
  const source = Readable.from(
    (function* () {
      while (left > 0) {
        const size = Math.min(chunk, left);
        // Vary each chunk cheaply so no two chunks are equal.
        const buf = Buffer.from(seed.subarray(0, size));
        buf.writeUInt32BE(n++, 0);
        hash.update(buf);
        left -= size;
        yield buf;
      }
    })(),
  );
  await pipeline(source, createWriteStream(path, { mode: 0o600 }));
  return { path, bytes, sha256: hash.digest('hex') };
}

export function describeDestinationConformance(name: string, setup: () => Promise<ConformanceSetup>, options: ConformanceOptions = {}): void {
  const source = options.source ?? 'conformance';
  const largeBytes = options.largeFileBytes ?? 64 * 1024 * 1024;

  describe(`destination conformance: ${name}`, () => {
    let d: Destination;
    let teardown: (() => Promise<void>) | undefined;
    let dir: string;
    // Each case uses its own set ids, all distinct, so cases never see each other's sets.
    let clock = Date.UTC(2030, 0, 1, 0, 0, 0);
    const newSetId = () => makeSetId(new Date((clock += 60_000)), source);
    let fileNo = 0;

    const file = async (content: string | Buffer, fileName = `src-${++fileNo}`): Promise<PutSource> => {
      const path = join(dir, fileName);
      await writeFile(path, content, { mode: 0o600 });
      return { path, bytes: Buffer.byteLength(content), sha256: createHash('sha256').update(content).digest('hex') };
    };
    const manifestFor = (setId: string, artifacts: Array<{ name: string } & PutSource>) =>
      file(
        JSON.stringify({
          format: MANIFEST_FORMAT,
          id: setId,
          pipeline: 'conformance',
          source,
          createdAt: new Date().toISOString(),
          completedAt: new Date().toISOString(),
          framework: { name: 'backup-pipeline', version: '0.0.0', node: process.version },
          host: 'conformance',
          artifacts: artifacts.map((a) => ({ name: a.name, kind: 'file', format: 'file', compression: 'none', bytes: a.bytes, sha256: a.sha256, meta: {} })),
          stages: [],
          facts: {},
          tools: {},
          verified: false,
        }),
      );
    const fetch = async (setId: string, fileName: string) => {
      const to = join(dir, `get-${++fileNo}`);
      await d.get(setId, fileName, to);
      return { path: to, ...(await hashFile(to)) };
    };
    const ours = async (ids: string[]) => (await d.list()).filter((s) => ids.includes(s.id));

    beforeAll(async () => {
      dir = await mkdtemp(join(tmpdir(), 'conformance-'));
      const made = await setup();
      d = made.destination;
      teardown = made.teardown;
    });
    afterAll(async () => {
      await teardown?.();
      if (dir) await rm(dir, { recursive: true, force: true });
    });

    it('describes itself in one line', () => {
      const text = d.describe();
      expect(typeof text).toBe('string');
      expect(text.length).toBeGreaterThan(0);
      expect(text).not.toContain('\n');
    });

    it('passes its own check', async () => {
      await d.check?.();
    });

    it('round-trips put, list, get and delete with the sha256 kept', async () => {
      const setId = newSetId();
      const art = await file(randomBytes(100_000));
      await d.put(setId, 'db.dump', art);
      const manifest = await manifestFor(setId, [{ name: 'db.dump', ...art }]);
      await d.put(setId, MANIFEST_NAME, manifest);

      const listed = await ours([setId]);
      expect(listed).toEqual([expect.objectContaining({ id: setId, hasManifest: true })]);
      const modifiedAt = listed[0]!.modifiedAt;
      if (modifiedAt !== undefined) {
        // The time of the last write, used for the incomplete-set grace period: must be a real, recent time.
        expect(modifiedAt).toBeInstanceOf(Date);
        expect(Math.abs(modifiedAt.getTime() - Date.now())).toBeLessThan(36 * 3600_000);
      }
      const got = await fetch(setId, 'db.dump');
      expect(got.sha256).toBe(art.sha256);
      expect(got.bytes).toBe(art.bytes);
      expect((await stat(got.path)).mode & 0o077).toBe(0);
      expect((await fetch(setId, MANIFEST_NAME)).sha256).toBe(manifest.sha256);

      const [info] = (await listSets(d, { scratchDir: dir })).filter((s) => s.id === setId);
      expect(info).toMatchObject({ id: setId, complete: true });

      await d.delete(setId);
      expect(await ours([setId])).toEqual([]);
      await expect(d.get(setId, 'db.dump', join(dir, 'gone'))).rejects.toThrow();
    });

    it('lists a set without manifest as incomplete, then complete once the manifest is put last', async () => {
      const setId = newSetId();
      const a = await file('first artifact\n');
      const b = await file('second artifact\n');
      await d.put(setId, 'a.txt', a);
      await d.put(setId, 'b.txt', b);
      const [before] = await ours([setId]);
      expect(before).toMatchObject({ id: setId, hasManifest: false });
      const [info] = (await listSets(d, { scratchDir: dir })).filter((s) => s.id === setId);
      expect(info?.complete).toBe(false);

      await d.put(setId, MANIFEST_NAME, await manifestFor(setId, [{ name: 'a.txt', ...a }, { name: 'b.txt', ...b }]));
      expect(await ours([setId])).toEqual([expect.objectContaining({ id: setId, hasManifest: true })]);
      const [after] = (await listSets(d, { scratchDir: dir })).filter((s) => s.id === setId);
      expect(after?.complete).toBe(true);
      await d.delete(setId);
    });

    it.each([
      ['not JSON', () => '{"format": "backup-pipeline/manif'],
      ['empty', () => ''],
      ['valid JSON but not a manifest', () => JSON.stringify({ hello: 'world' })],
    ])('lists a set whose manifest is %s as damaged, never complete, and keeps it', async (_label, text) => {
      const setId = newSetId();
      const a = await file('artifact of a set whose manifest rotted\n');
      await d.put(setId, 'a.txt', a);
      await d.put(setId, MANIFEST_NAME, await file(text()));
      const [info] = (await listSets(d, { scratchDir: dir })).filter((s) => s.id === setId);
      expect(info).toMatchObject({ id: setId, hasManifest: true, state: 'damaged', complete: false });
      expect(info!.problem).toMatch(/manifest/);
      // Listing judged it; it did not delete it.
      expect((await fetch(setId, 'a.txt')).sha256).toBe(a.sha256);
      await d.delete(setId);
    });

    it('lists a set whose manifest belongs to another set, or lists a missing or short artifact, as damaged', async () => {
      const other = newSetId();
      const setId = newSetId();
      const a = await file('artifact a\n');
      await d.put(setId, 'a.txt', a);
      await d.put(setId, MANIFEST_NAME, await manifestFor(other, [{ name: 'a.txt', ...a }]));
      const missing = newSetId();
      await d.put(missing, 'a.txt', a);
      await d.put(missing, MANIFEST_NAME, await manifestFor(missing, [{ name: 'a.txt', ...a }, { name: 'b.txt', ...a }]));
      const short = newSetId();
      await d.put(short, 'a.txt', a);
      await d.put(short, MANIFEST_NAME, await manifestFor(short, [{ name: 'a.txt', ...a, bytes: a.bytes + 1 }]));
      const sets = (await listSets(d, { scratchDir: dir })).filter((s) => [setId, missing, short].includes(s.id));
      expect(sets.map((s) => [s.id, s.state, s.complete])).toEqual([
        [setId, 'damaged', false],
        [missing, 'damaged', false],
        [short, 'damaged', false],
      ]);
      for (const id of [setId, missing, short]) await d.delete(id);
    });

    it('overwrites the same file idempotently', async () => {
      const setId = newSetId();
      const one = await file('version one\n');
      await d.put(setId, 'x.txt', one);
      await d.put(setId, 'x.txt', one);
      expect((await fetch(setId, 'x.txt')).sha256).toBe(one.sha256);
      const two = await file('version two, longer than one\n');
      await d.put(setId, 'x.txt', two);
      expect((await fetch(setId, 'x.txt')).sha256).toBe(two.sha256);
      expect(await ours([setId])).toHaveLength(1);
      await d.delete(setId);
    });

    it('stores a whole copy of a staged source that offers a hard link, taken or not, and leaves the source as it was', async () => {
      const setId = newSetId();
      const art = await file(randomBytes(50_000));
      let linked = 0;
      const offered: PutSource = {
        ...art,
        hashedAsWritten: true,
        link: async (to) => {
          await link(art.path, to);
          linked++;
          return true;
        },
      };
      await d.put(setId, 'db.dump', offered);
      expect(linked).toBeLessThanOrEqual(1);
      const got = await fetch(setId, 'db.dump');
      expect(got).toMatchObject({ sha256: art.sha256, bytes: art.bytes });
      await d.delete(setId);
      // The destination's name for it is gone; the staged file (the core's) is not.
      expect(await hashFile(art.path)).toMatchObject({ sha256: art.sha256, bytes: art.bytes });
    });

    it('rejects a put whose source does not match its declared sha256', async () => {
      const setId = newSetId();
      const real = await file('the real content\n');
      await expect(d.put(setId, 'bad.txt', { ...real, sha256: 'f'.repeat(64) })).rejects.toMatchObject({ code: 'CHECKSUM_MISMATCH' });
      await expect(d.get(setId, 'bad.txt', join(dir, 'bad-get'))).rejects.toMatchObject({ code: 'SET_NOT_FOUND' });
      await expect(stat(join(dir, 'bad-get'))).rejects.toThrow();
      // Nothing readable is left under the final name: the listing shows no such file (or no set).
      const [listed] = await ours([setId]);
      if (listed) {
        expect(listed.hasManifest).toBe(false);
        if (listed.files) expect(listed.files.map((f) => f.name)).not.toContain('bad.txt');
      }
      await d.delete(setId);
    });

    it('deletes a missing set without error, and deletes twice', async () => {
      const setId = newSetId();
      await d.delete(setId);
      await d.put(setId, 'y.txt', await file('y\n'));
      await d.delete(setId);
      await d.delete(setId);
      expect(await ours([setId])).toEqual([]);
    });

    it('refuses set ids that are not set ids', async () => {
      const src = await file('z\n');
      const before = (await d.list()).map((s) => s.id);
      for (const bad of ['..', '../x', 'not-a-set', '', '20300101T000000Z-x/../..']) {
        await expect(d.put(bad, 'z.txt', src), `put to ${JSON.stringify(bad)}`).rejects.toMatchObject({ code: 'SET_NOT_FOUND' });
        await expect(d.get(bad, 'z.txt', join(dir, 'refused-get')), `get from ${JSON.stringify(bad)}`).rejects.toMatchObject({ code: 'SET_NOT_FOUND' });
        await expect(d.delete(bad), `delete of ${JSON.stringify(bad)}`).rejects.toMatchObject({ code: 'SET_NOT_FOUND' });
      }
      expect((await d.list()).map((s) => s.id)).toEqual(before);
    });

    it('keeps names with spaces and unicode', async () => {
      const setId = newSetId();
      const names = ['dump with spaces.sql', 'données été 名前 ✓.tar', "it's (1) & $HOME;.txt"];
      for (const n of names) await d.put(setId, n, await file(`content of ${n}\n`));
      for (const n of names) expect((await fetch(setId, n)).sha256).toBe(createHash('sha256').update(`content of ${n}\n`).digest('hex'));
      await d.delete(setId);
    });

    it('rejects a get of a missing file or set with SET_NOT_FOUND', async () => {
      const setId = newSetId();
      await expect(d.get(setId, 'nothing.dump', join(dir, 'missing-1'))).rejects.toMatchObject({ code: 'SET_NOT_FOUND' });
      await d.put(setId, 'present.txt', await file('present\n'));
      await expect(d.get(setId, 'absent.txt', join(dir, 'missing-2'))).rejects.toMatchObject({ code: 'SET_NOT_FOUND' });
      await expect(stat(join(dir, 'missing-2'))).rejects.toThrow();
      await d.delete(setId);
    });

    // The optional streaming read (restore's one pass). A destination without it is fetched with get.
    const readAll = async (setId: string, fileName: string) => {
      const stream = await d.read!(setId, fileName);
      const hash = createHash('sha256');
      let bytes = 0;
      for await (const chunk of stream) {
        hash.update(chunk as Buffer);
        bytes += (chunk as Buffer).length;
      }
      return { bytes, sha256: hash.digest('hex') };
    };

    it('read (if declared) streams a stored file back byte for byte, the large file too', async (test) => {
      if (!d.read) test.skip();
      const setId = newSetId();
      const small = await file(randomBytes(300_000));
      await d.put(setId, 'db.dump', small);
      await d.put(setId, 'name with spaces ü.txt', await file('spaces\n'));
      expect(await readAll(setId, 'db.dump')).toEqual({ bytes: small.bytes, sha256: small.sha256 });
      expect((await readAll(setId, 'name with spaces ü.txt')).sha256).toBe(createHash('sha256').update('spaces\n').digest('hex'));
      const big = await writeLargeFile(join(dir, 'large-read.bin'), largeBytes);
      await d.put(setId, 'large.bin', big);
      await rm(big.path);
      expect(await readAll(setId, 'large.bin')).toEqual({ bytes: big.bytes, sha256: big.sha256 });
      await d.delete(setId);
    });

    it('read (if declared) of a missing file or set fails with SET_NOT_FOUND, from the promise or the stream', async (test) => {
      if (!d.read) test.skip();
      const setId = newSetId();
      await expect(readAll(setId, 'nothing.dump')).rejects.toMatchObject({ code: 'SET_NOT_FOUND' });
      await d.put(setId, 'present.txt', await file('present\n'));
      await expect(readAll(setId, 'absent.txt')).rejects.toMatchObject({ code: 'SET_NOT_FOUND' });
      await expect(d.read!('not-a-set', 'x')).rejects.toMatchObject({ code: 'SET_NOT_FOUND' });
      await d.delete(setId);
    });

    it('read (if declared) stops when its reader goes away, and the destination stays usable', async (test) => {
      if (!d.read) test.skip();
      const setId = newSetId();
      const big = await writeLargeFile(join(dir, 'abandoned.bin'), Math.min(largeBytes, 16 * 1024 * 1024));
      await d.put(setId, 'abandoned.bin', big);
      await rm(big.path);
      const stream = await d.read!(setId, 'abandoned.bin');
      await new Promise<void>((resolve, reject) => {
        stream.once('data', () => resolve());
        stream.once('error', reject);
      });
      stream.destroy();
      await new Promise((resolve) => (stream.closed ? resolve(undefined) : stream.once('close', resolve)));
      expect((await readAll(setId, 'abandoned.bin')).sha256).toBe(big.sha256);
      await d.delete(setId);
    });

    it('localFile (if declared) names a file on this machine holding the stored bytes; a missing file or set is SET_NOT_FOUND', async (test) => {
      if (!d.localFile) test.skip();
      const setId = newSetId();
      const stored = await file(randomBytes(300_000));
      await d.put(setId, 'db.dump', stored);
      const path = await d.localFile!(setId, 'db.dump');
      expect(await hashFile(path)).toEqual({ bytes: stored.bytes, sha256: stored.sha256 });
      await expect(d.localFile!(setId, 'absent.dump')).rejects.toMatchObject({ code: 'SET_NOT_FOUND' });
      await expect(d.localFile!('not-a-set', 'x')).rejects.toMatchObject({ code: 'SET_NOT_FOUND' });
      await d.delete(setId);
    });

    it('lists set ids in time order', async () => {
      const ids = [newSetId(), newSetId(), newSetId()];
      for (const id of [ids[2]!, ids[0]!, ids[1]!]) await d.put(id, MANIFEST_NAME, await manifestFor(id, [{ name: 'a', ...(await file('a')) }]));
      const listed = (await ours(ids)).map((s) => s.id);
      expect(listed).toEqual(ids);
      for (const id of ids) await d.delete(id);
    });

    // The optional tree capability (putTree/getTree/treeEntries): checked when the destination declares it.
    describeTreeConformance(() => ({ d, dir, newSetId }));

    it(`round-trips a large file (${Math.round(largeBytes / 1024 / 1024)} MiB) streamed`, async () => {
      const setId = newSetId();
      const big = await writeLargeFile(join(dir, 'large.bin'), largeBytes);
      const reports: number[] = [];
      await d.put(setId, 'large.bin', big, { onBytes: (b) => reports.push(b) });
      // Progress is reported (at least once), counts up, never beyond the file, and reaches its size.
      expect(reports.length, 'onBytes was never called').toBeGreaterThan(0);
      expect(reports).toEqual([...reports].sort((a, b) => a - b));
      expect(Math.max(...reports)).toBe(big.bytes);
      await rm(big.path);
      const got = await fetch(setId, 'large.bin');
      expect(got).toMatchObject({ bytes: big.bytes, sha256: big.sha256 });
      await rm(got.path);
      await d.delete(setId);
    });
  });
}
