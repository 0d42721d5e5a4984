import { createHash } from 'node:crypto';
import { access, mkdtemp, readFile, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writable } from 'node:stream';
import { createLogger, resolveConfig, Runner, type PipelineError, type RunResult } from '@backup-pipeline/core';
import { createGpgHome, type GpgHome } from '@backup-pipeline/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { decrypt, encryptArgs, GpgOptions, keyProblem, parseColonKeys } from './index.js';

const CONTENT = 'CREATE TABLE accounts (id bigint);\n'.repeat(20_000);
const SHA = createHash('sha256').update(CONTENT).digest('hex');

let g: GpgHome;
let dir: string;
let producer: string;
let n = 0;

beforeAll(async () => {
  g = await createGpgHome();
  dir = await mkdtemp(join(tmpdir(), 'gpg-plugin-'));
  producer = join(dir, 'producer.mjs');
  const core = import.meta.resolve('@backup-pipeline/core');
  await writeFile(
    producer,
    `import { definePlugin, writeFileAtomic, z } from ${JSON.stringify(core)};
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
export default definePlugin({
  name: 'test-producer',
  description: 'test',
  options: z.object({ flag: z.string(), compression: z.string().default('none') }),
  apply(hooks, options) {
    hooks.produce.tapPromise('test-producer', async (ctx) => {
      await writeFile(options.flag, 'produced');
      const path = join(ctx.setDir, 'db.sql');
      const d = await writeFileAtomic(path, ${JSON.stringify(CONTENT)});
      ctx.addArtifact({ name: 'db.sql', path, kind: 'database', format: 'pg-plain', compression: options.compression, meta: {}, ...d });
    });
  },
});
`,
  );
});
afterAll(async () => {
  await g?.cleanup();
  await rm(dir, { recursive: true, force: true });
});

async function run(gpg: Record<string, unknown>, compression = 'none', dryRun = false) {
  const id = ++n;
  const flag = join(dir, `produced-${id}`);
  const config = await resolveConfig(join(dir, `pipeline-${id}.yaml`), {
    workDir: join(dir, `work-${id}`),
    pipelines: { nightly: { source: 'mastodon', stages: [{ use: producer, flag, compression }, { use: join(import.meta.dirname, 'index.ts'), ...gpg }] } },
  });
  const lines: string[] = [];
  const log = await createLogger({ secrets: config.secrets, format: 'json', level: 'debug', write: (l) => void lines.push(l) });
  let result: RunResult | undefined;
  let error: PipelineError | undefined;
  try {
    result = await new Runner(config, log).run('nightly', { dryRun });
  } catch (e) {
    error = e as PipelineError;
  }
  const produced = await access(flag).then(
    () => true,
    () => false,
  );
  const setDir = result && !dryRun ? join(config.workDir, result.summary.setId) : '';
  return { result, error, produced, lines, setDir };
}

describe('gpg stage through the runner', () => {
  it('encrypts to a recipient by e-mail; decrypting gives the original bytes', async () => {
    const { result, setDir, error } = await run({ recipients: [g.email], gnupgHome: g.home });
    expect(error).toBeUndefined();
    const [artifact] = result!.manifest!.artifacts;
    expect(artifact).toMatchObject({
      name: 'db.sql.gpg',
      encryption: { method: 'gpg', recipients: [g.fingerprint], symmetric: false },
      plain: { name: 'db.sql', bytes: CONTENT.length, sha256: SHA },
    });
    expect(result!.manifest!.tools.gpg).toMatch(/^\d+\.\d+/);
    expect(await readdir(setDir)).toEqual(['db.sql.gpg', 'manifest.json'].sort());
    const encrypted = join(setDir, 'db.sql.gpg');
    expect(createHash('sha256').update(await readFile(encrypted)).digest('hex')).toBe(artifact!.sha256);

    const out = join(dir, 'decrypted.sql');
    const digest = await decrypt(encrypted, { to: out, gnupgHome: g.home });
    expect(digest).toEqual({ bytes: CONTENT.length, sha256: SHA });
    expect(await readFile(out, 'utf8')).toBe(CONTENT);

    const chunks: Buffer[] = [];
    await decrypt(encrypted, { to: new Writable({ write: (c, _e, cb) => (chunks.push(c), cb()) }), gnupgHome: g.home });
    expect(Buffer.concat(chunks).toString()).toBe(CONTENT);
  });

  it('keeps the plaintext only with keepPlaintext', async () => {
    const { setDir } = await run({ recipients: [g.fingerprint], gnupgHome: g.home, keepPlaintext: true }, 'gzip');
    expect((await readdir(setDir)).sort()).toEqual(['db.sql', 'db.sql.gpg', 'manifest.json']);
  });

  it('fails in preflight with GPG_RECIPIENT_UNKNOWN naming the recipient, before anything is produced', async () => {
    const { error, produced } = await run({ recipients: ['nobody@example.invalid'], gnupgHome: g.home });
    expect(error).toMatchObject({ code: 'GPG_RECIPIENT_UNKNOWN', plugin: 'gpg', hook: 'preflight' });
    expect(error!.message).toContain('nobody@example.invalid');
    expect(produced).toBe(false);
  });

  it('fails in preflight with GPG_RECIPIENT_EXPIRED for an expired key', async () => {
    const expired = await g.createExpiredKey();
    const { error, produced } = await run({ recipients: [expired.email], gnupgHome: g.home });
    expect(error).toMatchObject({ code: 'GPG_RECIPIENT_EXPIRED', hook: 'preflight' });
    expect(error!.message).toContain(expired.email);
    expect(produced).toBe(false);
  });

  it('fails with GPG_PASSPHRASE_FILE_MISSING before anything is produced', async () => {
    const { error, produced } = await run({ passphraseFile: join(dir, 'no-such-passphrase') });
    expect(error).toMatchObject({ code: 'GPG_PASSPHRASE_FILE_MISSING', hook: 'preflight' });
    expect(produced).toBe(false);
  });

  it('encrypts symmetrically with a passphrase file; the passphrase is in no argv, log line or manifest', async () => {
    const { path, passphrase } = await g.createSymmetricPassphraseFile();
    const { result, setDir, lines, error } = await run({ passphraseFile: path });
    expect(error).toBeUndefined();
    expect(result!.manifest!.artifacts[0]!.encryption).toEqual({ method: 'gpg', recipients: [], symmetric: true });
    expect(lines.length).toBeGreaterThan(0);
    expect(lines.join('\n')).not.toContain(passphrase);
    expect(JSON.stringify(result!.manifest)).not.toContain(passphrase);
    expect(encryptArgs({ fingerprints: [], passphraseFile: path }).join(' ')).not.toContain(passphrase);
    const out = join(dir, 'sym.sql');
    await decrypt(join(setDir, 'db.sql.gpg'), { to: out, passphraseFile: path });
    expect(await readFile(out, 'utf8')).toBe(CONTENT);
    // A wrong passphrase fails with its code.
    const wrong = join(dir, 'wrong-pass');
    await writeFile(wrong, 'not the passphrase\n', { mode: 0o600 });
    await expect(decrypt(join(setDir, 'db.sql.gpg'), { to: join(dir, 'nope'), passphraseFile: wrong })).rejects.toMatchObject({ code: 'GPG_DECRYPT_FAILED' });
    await expect(access(join(dir, 'nope'))).rejects.toThrow();
  });

  it('dry-run: checks recipients and shows the gpg command without a passphrase', async () => {
    const { path, passphrase } = await g.createSymmetricPassphraseFile();
    const { result, produced, error } = await run({ recipients: [g.fingerprint], gnupgHome: g.home, passphraseFile: path }, 'none', true);
    expect(error).toBeUndefined();
    expect(produced).toBe(false);
    const step = result!.plan!.steps.find((s) => s.plugin === 'gpg');
    expect(step?.description).toContain(g.fingerprint);
    expect(step?.command).toContain('--passphrase-file');
    expect(step?.command).not.toContain(passphrase);
  });

  it('encrypts to keys from recipientFiles in a private keyring', async () => {
    const other = await g.createKey('File Recipient');
    const keyFile = join(dir, 'recipient.asc');
    await g.exportPublicKey(keyFile, other.fingerprint);
    const { result, setDir, error } = await run({ recipientFiles: [keyFile] });
    expect(error).toBeUndefined();
    expect(result!.manifest!.artifacts[0]!.encryption!.recipients).toEqual([other.fingerprint]);
    const out = join(dir, 'from-file.sql');
    await decrypt(join(setDir, 'db.sql.gpg'), { to: out, gnupgHome: g.home });
    expect(await readFile(out, 'utf8')).toBe(CONTENT);
  });
});

describe('gpg preflight errors', () => {
  it('GPG_RECIPIENT_REVOKED for a revoked key', async () => {
    const key = await g.createKey('Revoked Test');
    const cert = await readFile(join(g.home, 'openpgp-revocs.d', `${key.fingerprint}.rev`), 'utf8');
    const certFile = join(dir, 'revoke.asc');
    await writeFile(certFile, cert.replace(/^:-----BEGIN/m, '-----BEGIN'));
    await g.gpg(['--import', certFile]);
    const { error, produced } = await run({ recipients: [key.fingerprint], gnupgHome: g.home });
    expect(error).toMatchObject({ code: 'GPG_RECIPIENT_REVOKED', hook: 'preflight' });
    expect(produced).toBe(false);
  });

  it('GPG_RECIPIENT_AMBIGUOUS when a name matches two usable keys', async () => {
    await g.createKey('Twin Admin');
    await g.createKey('Twin Admin');
    const { error } = await run({ recipients: ['Twin Admin'], gnupgHome: g.home });
    expect(error).toMatchObject({ code: 'GPG_RECIPIENT_AMBIGUOUS' });
  });

  it('GPG_RECIPIENT_UNUSABLE for a sign-only key', async () => {
    await g.gpg(['--passphrase', '', '--pinentry-mode', 'loopback', '--quick-gen-key', 'Signer <signer@backup-pipeline.test>', 'ed25519', 'sign', 'never']);
    const { error } = await run({ recipients: ['signer@backup-pipeline.test'], gnupgHome: g.home });
    expect(error).toMatchObject({ code: 'GPG_RECIPIENT_UNUSABLE' });
  });

  it('GPG_RECIPIENT_FILE_MISSING and GPG_RECIPIENT_FILE_INVALID', async () => {
    expect((await run({ recipientFiles: [join(dir, 'absent.asc')] })).error).toMatchObject({ code: 'GPG_RECIPIENT_FILE_MISSING' });
    const junk = join(dir, 'junk.asc');
    await writeFile(junk, 'not a key\n');
    expect((await run({ recipientFiles: [junk] })).error).toMatchObject({ code: 'GPG_RECIPIENT_FILE_INVALID' });
  });
});

describe('gpg pure helpers', () => {
  it('validates options', () => {
    expect(GpgOptions.safeParse({}).success).toBe(false);
    expect(GpgOptions.safeParse({ recipients: ['A'], nope: 1 }).success).toBe(false);
    expect(GpgOptions.safeParse({ recipients: ['A'], compressLevel: 10 }).success).toBe(false);
    expect(GpgOptions.parse({ passphraseFile: '/x' })).toMatchObject({ recipients: [], keepPlaintext: false });
  });

  it('builds argv: -z 0 for compressed input, recipients by fingerprint', () => {
    expect(encryptArgs({ fingerprints: ['AAA', 'BBB'], compressLevel: 0 })).toEqual([
      '--batch', '--no-tty', '--yes', '--trust-model', 'always', '--encrypt', '--recipient', 'AAA', '--recipient', 'BBB', '-z', '0', '--output', '-',
    ]);
  });

  it.each([
    ['pub:u:255:22:K:1:::u:::scESC:\nfpr:::::::::F1:\nsub:u:255:18:S:1::::::e:\n', undefined],
    ['pub:e:255:22:K:1:1577923200::u:::sc:\nfpr:::::::::F1:\nsub:e:255:18:S:1:1577923200:::::e:\n', 'GPG_RECIPIENT_EXPIRED'],
    ['pub:r:255:22:K:1:::u:::sc:\nfpr:::::::::F1:\nsub:r:255:18:S:1::::::e:\n', 'GPG_RECIPIENT_REVOKED'],
    ['pub:u:255:22:K:1:::u:::scSC:\nfpr:::::::::F1:\n', 'GPG_RECIPIENT_UNUSABLE'],
    ['pub:u:255:22:K:1:::u:::scSC:\nfpr:::::::::F1:\nsub:e:255:18:S:1:1577923200:::::e:\n', 'GPG_RECIPIENT_EXPIRED'],
  ])('classifies keys (%#)', (colons, code) => {
    const [key] = parseColonKeys(colons);
    expect(key!.fingerprint).toBe('F1');
    expect(keyProblem(key!)?.code).toBe(code);
  });
});
