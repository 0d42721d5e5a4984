import { access, readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { exec } from '@backup-pipeline/core';
import { describe, expect, it } from 'vitest';
import { createGpgHome } from './gpg-home.js';

describe('createGpgHome', () => {
  it('makes a private home with a usable key, an expired key, a passphrase file, and cleans up without leaving an agent', async () => {
    const g = await createGpgHome();
    try {
      expect(g.fingerprint).toMatch(/^[0-9A-F]{40}$/);
      expect(g.env.GNUPGHOME).toBe(g.home);
      const keys = await g.gpg(['--with-colons', '--list-keys', g.fingerprint]);
      expect(keys).toMatch(/^pub:u:/m);

      const expired = await g.createExpiredKey();
      const listed = await g.gpg(['--with-colons', '--list-keys', expired.fingerprint]);
      expect(listed).toMatch(/^pub:e:/m);

      const pub = join(g.home, 'pub.asc');
      await g.exportPublicKey(pub);
      expect(await readFile(pub, 'utf8')).toContain('BEGIN PGP PUBLIC KEY BLOCK');

      const { path, passphrase } = await g.createSymmetricPassphraseFile();
      expect((await readFile(path, 'utf8')).trim()).toBe(passphrase);

      // Encrypt to the key and decrypt with the agent.
      const plain = join(g.home, 'plain.txt');
      await writeFile(plain, 'hello\n');
      await exec('gpg', ['--batch', '--no-tty', '--trust-model', 'always', '-r', g.fingerprint, '-o', plain + '.gpg', '--encrypt', plain], { env: g.env });
      const out = await exec('gpg', ['--batch', '--no-tty', '--decrypt', plain + '.gpg'], { env: g.env });
      expect(out.stdout).toBe('hello\n');
    } finally {
      await g.cleanup();
    }
    await expect(access(g.home)).rejects.toThrow();
    const ps = await exec('ps', ['-eo', 'args']);
    expect(ps.stdout).not.toContain(g.home);
    await rm(g.home, { recursive: true, force: true });
  });
});
