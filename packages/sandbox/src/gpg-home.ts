/**
 * A throwaway GnuPG home for tests: a private (0700) folder with one generated key without a
 * passphrase. Every gpg call runs with `--batch --no-tty`; `cleanup()` stops the gpg-agent that
 * gpg started for this home and removes the folder.
 */
import { randomBytes } from 'node:crypto';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { exec } from '@backup-pipeline/core';

export interface GpgKey {
  fingerprint: string;
  email: string;
}

export interface GpgHome extends GpgKey {
  /** The GNUPGHOME folder (0700). */
  home: string;
  /** `{ GNUPGHOME: home }`, for child processes. */
  env: Record<string, string>;
  /** Runs gpg with this home (`--batch --no-tty` added). */
  gpg(args: readonly string[]): Promise<string>;
  /** Writes the armored public key of `fingerprint` (default: the main key) to `path`. */
  exportPublicKey(path: string, fingerprint?: string): Promise<void>;
  /** Generates another key in this home that expired long ago. */
  createExpiredKey(): Promise<GpgKey>;
  /** Generates another usable key in this home. */
  createKey(name?: string): Promise<GpgKey>;
  /** Writes a random passphrase to a 0600 file in this home. */
  createSymmetricPassphraseFile(): Promise<{ path: string; passphrase: string }>;
  cleanup(): Promise<void>;
}

export async function createGpgHome(): Promise<GpgHome> {
  const home = await mkdtemp(join(tmpdir(), 'gpg-home-'));
  const env = { GNUPGHOME: home };
  const gpg = async (args: readonly string[]) => (await exec('gpg', ['--batch', '--no-tty', ...args], { env, label: 'gpg' })).stdout;
  let counter = 0;

  const fingerprintOf = async (email: string): Promise<string> => {
    const out = await gpg(['--with-colons', '--list-keys', '--', `<${email}>`]);
    const fpr = out.split('\n').find((l) => l.startsWith('fpr:'));
    if (!fpr) throw new Error(`no fingerprint for ${email} in ${home}`);
    return fpr.split(':')[9]!;
  };
  const generate = async (name: string, extra: string[] = [], expire = 'never'): Promise<GpgKey> => {
    const email = `${name.toLowerCase().replace(/\W+/g, '-')}-${++counter}@backup-pipeline.test`;
    await gpg([...extra, '--passphrase', '', '--pinentry-mode', 'loopback', '--quick-gen-key', `${name} <${email}>`, 'future-default', 'default', expire]);
    return { email, fingerprint: await fingerprintOf(email) };
  };

  try {
    const main = await generate('Backup Test');
    return {
      home,
      env,
      ...main,
      gpg,
      exportPublicKey: async (path, fingerprint = main.fingerprint) => {
        await gpg(['--armor', '--yes', '--output', path, '--export', fingerprint]);
      },
      // Created in 2020 with a one-day life: long expired today.
      createExpiredKey: () => generate('Expired Test', ['--faked-system-time', '20200101T000000!'], '1d'),
      createKey: (name = 'Other Test') => generate(name),
      createSymmetricPassphraseFile: async () => {
        const passphrase = randomBytes(18).toString('base64url');
        const path = join(home, `passphrase-${++counter}.txt`);
        await writeFile(path, passphrase + '\n', { mode: 0o600 });
        return { path, passphrase };
      },
      cleanup: () => cleanupHome(home),
    };
  } catch (error) {
    await cleanupHome(home);
    throw error;
  }
}

async function cleanupHome(home: string): Promise<void> {
  await exec('gpgconf', ['--kill', 'all'], { env: { GNUPGHOME: home } }).catch(() => {});
  await rm(home, { recursive: true, force: true });
}
