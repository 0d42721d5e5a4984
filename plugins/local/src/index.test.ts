import { createHash, randomBytes } from 'node:crypto';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SecretRegistry, createLogger } from '@backup-pipeline/core';
import { describeDestinationConformance } from '@backup-pipeline/testing/conformance';
import { describe, expect, it } from 'vitest';
import plugin from './index.js';

async function make(path: string, configDir: string) {
  const secrets = new SecretRegistry();
  const log = await createLogger({ secrets, level: 'silent' });
  const options = plugin.destination!.options.parse({ path });
  return plugin.destination!.create(options, { name: 'local', log, secrets, configDir, resolvePath: (p) => (p.startsWith('/') ? p : join(configDir, p)) });
}

describeDestinationConformance('local plugin', async () => {
  const root = await mkdtemp(join(tmpdir(), 'plugin-local-'));
  return { destination: await make('sets', root), teardown: () => rm(root, { recursive: true, force: true }) };
});

describe('local options', () => {
  it('rejects unknown options and a missing path', () => {
    expect(plugin.destination!.options.safeParse({ path: '/x', extra: 1 }).success).toBe(false);
    expect(plugin.destination!.options.safeParse({}).success).toBe(false);
  });
  it('resolves a relative path from the config folder', async () => {
    const d = await make('backups', '/srv/conf');
    expect(d.describe()).toBe('local folder /srv/conf/backups');
  });
});

describe('a staged file the core hashed as it wrote it', () => {
  it('is copied by the kernel without being read again (0600, same bytes); any other source is still hashed and checked', async () => {
    const root = await mkdtemp(join(tmpdir(), 'plugin-local-copy-'));
    try {
      const d = await make('sets', root);
      const src = join(root, 'staged.bin');
      const content = randomBytes(3 * 1024 * 1024 + 17);
      await writeFile(src, content, { mode: 0o600 });
      const sha256 = createHash('sha256').update(content).digest('hex');
      const setId = '20300101T000000Z-local';
      let reported = 0;
      await d.put(setId, 'a.bin', { path: src, bytes: content.length, sha256, hashedAsWritten: true }, { onBytes: (b) => (reported = b) });
      const copy = join(root, 'sets', setId, 'a.bin');
      expect((await readFile(copy)).equals(content)).toBe(true);
      expect((await stat(copy)).mode & 0o777).toBe(0o600);
      expect(reported).toBe(content.length);
      // Not read to hash it: the declared sha256 is the core's (a wrong one here is not noticed)…
      await d.put(setId, 'b.bin', { path: src, bytes: content.length, sha256: 'f'.repeat(64), hashedAsWritten: true });
      // …but its size is checked, and nothing is left under the name when it differs.
      await expect(d.put(setId, 'c.bin', { path: src, bytes: content.length + 1, sha256, hashedAsWritten: true })).rejects.toMatchObject({ code: 'CHECKSUM_MISMATCH' });
      expect((await readdir(join(root, 'sets', setId))).sort()).toEqual(['a.bin', 'b.bin']);
      // Without the mark, the copy is hashed on the way and a wrong sha256 refused.
      await expect(d.put(setId, 'd.bin', { path: src, bytes: content.length, sha256: 'f'.repeat(64) })).rejects.toMatchObject({ code: 'CHECKSUM_MISMATCH' });
    } finally {
      await rm(root, { recursive: true, force: true });
    }
  });
});
