/** A dump whose compression cannot be undone is ARTIFACT_CORRUPT, by every way a restore reads it; a stopped run is not. */
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { exec } from '@backup-pipeline/core';
import { decompressToFile, plaintextInto, plaintextStream, type ReadableArtifact } from './compression.js';

let dir: string;
let corrupt: ReadableArtifact;
const ctx = { exec, signal: new AbortController().signal };
const CORRUPT = { code: 'ARTIFACT_CORRUPT', message: expect.stringMatching(/^db\.dump\.zst cannot be decompressed with zstd: /), hint: 'The file is truncated or corrupt; do not trust this backup.' };

beforeAll(async () => {
  dir = await mkdtemp(join(tmpdir(), 'bp-compression-'));
  const path = join(dir, 'db.dump.zst');
  await writeFile(path, 'not a zstd frame at all', { mode: 0o600 });
  corrupt = { name: 'db.dump.zst', path, format: 'pg-custom', compression: 'zstd' };
});
afterAll(async () => {
  await rm(dir, { recursive: true, force: true });
});

describe('decompressing a corrupt artifact', () => {
  it('plaintextStream: done rejects with ARTIFACT_CORRUPT', async () => {
    const plain = plaintextStream(corrupt, ctx);
    plain.stream.resume();
    await expect(plain.done).rejects.toMatchObject(CORRUPT);
  });

  it('plaintextInto: done rejects with ARTIFACT_CORRUPT', async () => {
    const consumer = exec('cat', [], { stdin: { fromProcess: true }, stdout: 'ignore' });
    const plain = plaintextInto(corrupt, consumer, ctx);
    await expect(plain.done).rejects.toMatchObject(CORRUPT);
    await consumer.catch(() => undefined);
  });

  it('decompressToFile: rejects with ARTIFACT_CORRUPT and leaves no file', async () => {
    const dest = join(dir, 'plain');
    await expect(decompressToFile(corrupt, dest, ctx)).rejects.toMatchObject(CORRUPT);
    await expect(stat(dest)).rejects.toMatchObject({ code: 'ENOENT' });
  });

  it('an interrupted run stays ABORTED, never ARTIFACT_CORRUPT', async () => {
    const controller = new AbortController();
    controller.abort();
    await expect(decompressToFile(corrupt, join(dir, 'stopped'), { exec, signal: controller.signal })).rejects.toMatchObject({ code: 'ABORTED' });
  });
});
