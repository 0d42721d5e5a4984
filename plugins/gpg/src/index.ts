/**
 * The `gpg` stage: encrypts every artifact with GnuPG before anything is shipped — to public keys
 * (`recipients`, `recipientFiles`), to a passphrase (`passphraseFile`), or both.
 *
 * preflight: every recipient must be in the keyring, unique, able to encrypt, not expired, not
 *            revoked; the passphrase file must exist. All before any dump starts.
 * transformFilter: offers `gpg --encrypt` as a filter the core splices into the producer's stream
 *            (one pass: the plaintext file never exists); not with `keepPlaintext`.
 * transform: (the fallback, for artifacts not streamed) streams the file through `gpg` into
 *            `NAME.gpg` (hashing both sides on the way), renames it into place atomically, and
 *            removes the plaintext unless `keepPlaintext`.
 *
 * Passphrases only ever travel in files (`--passphrase-file`), never in argv, and are registered
 * as secrets so no log line or error can show them. `decrypt()` is the inverse, for `restore`.
 */
import { createReadStream } from 'node:fs';
import { mkdir, readFile, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Readable, Writable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import {
  declaredErrors,
  definePlugin,
  displayCommand,
  exec,
  isPipelineError,
  DigestStream,
  writeFileAtomic,
  PipelineError,
  z,
  type Artifact,
  type ExecOptions,
  type FileDigest,
  type PluginApi,
  type RunContext,
  type SecretRegistry,
  type StreamFilter,
} from '@backup-pipeline/core';

export const GPG_ERRORS = {
  GPG_RECIPIENT_UNKNOWN: 'Import the recipient\'s public key into the keyring (gpg --import KEY.asc), point `gnupgHome` at the right keyring, or use `recipientFiles`.',
  GPG_RECIPIENT_EXPIRED: 'Extend the key\'s expiry (gpg --quick-set-expire FPR 1y, also for its encryption subkey) and re-export it, or use another key.',
  GPG_RECIPIENT_REVOKED: 'The key was revoked: encrypt to a new key, and make sure its owner can still decrypt old backups.',
  GPG_RECIPIENT_UNUSABLE: 'The key has no usable encryption (sub)key, or is disabled: add an encryption subkey or use another key.',
  GPG_RECIPIENT_AMBIGUOUS: 'Several keys match: name the recipient by its full fingerprint.',
  GPG_RECIPIENT_FILE_MISSING: 'Fix the path in `recipientFiles` (relative paths are relative to the config file).',
  GPG_RECIPIENT_FILE_INVALID: 'The file must hold an OpenPGP public key (gpg --armor --export FPR > key.asc).',
  GPG_PASSPHRASE_FILE_MISSING: 'Create the passphrase file (one line, mode 0600) or fix `passphraseFile`.',
  GPG_ENCRYPT_FAILED: 'See gpg\'s message above.',
  GPG_DECRYPT_FAILED: 'Check that the secret key (gnupgHome) or the passphrase file matches what the set was encrypted with.',
} as const;
export type GpgErrorCode = keyof typeof GPG_ERRORS;

const gpgError = declaredErrors(GPG_ERRORS);

/** A value left from a template (`pipeline init`'s REPLACE-WITH-…-FINGERPRINT, a README's ADMIN_KEY_FINGERPRINT). */
export function isPlaceholderRecipient(value: string): boolean {
  return /REPLACE[-_ ]?WITH|^<.*>$/i.test(value) || (!value.includes('@') && /FINGERPRINT/i.test(value));
}

const Recipient = z
  .string()
  .min(1)
  .refine((value) => !isPlaceholderRecipient(value), {
    error: (issue) =>
      `"${String(issue.input)}" is a placeholder: put the full fingerprint of the public key of the admin who will restore (gpg --import KEY.asc, then gpg --list-keys --fingerprint), or their e-mail address`,
  });

export const GpgOptions = z
  .object({
    recipients: z
      .array(Recipient)
      .default([])
      .describe('Public keys to encrypt to: full fingerprints (best) or e-mail addresses, looked up in the keyring (`gnupgHome`).'),
    recipientFiles: z
      .array(z.string().min(1))
      .default([])
      .describe('Files holding public keys (armored or binary); every key in them becomes a recipient. They are imported into a private temporary keyring, never into yours.'),
    gnupgHome: z.string().min(1).optional().describe('GnuPG home with the recipients\' public keys (default: $GNUPGHOME or ~/.gnupg).'),
    passphraseFile: z
      .string()
      .min(1)
      .optional()
      .describe('File whose first line is a passphrase for symmetric encryption (AES256). With recipients too, either the passphrase or a recipient key decrypts.'),
    keepPlaintext: z.boolean().default(false).describe('Keep the unencrypted artifact in the work dir (it is never shipped). Default: removed once encrypted.'),
    compressLevel: z
      .number()
      .int()
      .min(0)
      .max(9)
      .optional()
      .describe('gpg compression level (0–9) for artifacts that are not already compressed; compressed artifacts always use 0 (no double compression).'),
  })
  .strict()
  .refine((o) => o.recipients.length > 0 || o.recipientFiles.length > 0 || o.passphraseFile !== undefined, {
    message: 'give recipients, recipientFiles or passphraseFile',
    path: ['recipients'],
  });
export type GpgOptions = z.output<typeof GpgOptions>;

/** One key of a `--with-colons` listing. */
export interface ColonKey {
  fingerprint: string;
  validity: string;
  /** Key-wide capabilities (upper case = usable). */
  capabilities: string;
  expires?: Date;
  uids: string[];
  /** Encryption-capable (sub)keys with their validity. */
  encryptionKeys: Array<{ validity: string; expires?: Date }>;
}

/** Parses `gpg --with-colons --list-keys` output. */
export function parseColonKeys(text: string): ColonKey[] {
  const keys: ColonKey[] = [];
  let current: ColonKey | undefined;
  let lastRecord = '';
  for (const line of text.split('\n')) {
    const f = line.split(':');
    const date = (s: string | undefined) => (s ? new Date(Number(s) * 1000) : undefined);
    if (f[0] === 'pub') {
      current = { fingerprint: '', validity: f[1] ?? '', capabilities: f[11] ?? '', expires: date(f[6]), uids: [], encryptionKeys: [] };
      keys.push(current);
      if ((f[11] ?? '').includes('e')) current.encryptionKeys.push({ validity: f[1] ?? '', expires: date(f[6]) });
    } else if (f[0] === 'sub' && current) {
      if ((f[11] ?? '').includes('e')) current.encryptionKeys.push({ validity: f[1] ?? '', expires: date(f[6]) });
    } else if (f[0] === 'fpr' && current && lastRecord === 'pub') {
      current.fingerprint = f[9] ?? '';
    } else if (f[0] === 'uid' && current) {
      current.uids.push(f[9] ?? '');
    }
    if (f[0]) lastRecord = f[0];
  }
  return keys;
}

/** Why a key cannot be encrypted to, or undefined when it can. */
export function keyProblem(key: ColonKey, now = new Date()): { code: GpgErrorCode; why: string } | undefined {
  if (key.validity === 'r') return { code: 'GPG_RECIPIENT_REVOKED', why: 'is revoked' };
  if (key.validity === 'e' || (key.expires && key.expires <= now)) return { code: 'GPG_RECIPIENT_EXPIRED', why: `expired on ${key.expires?.toISOString().slice(0, 10) ?? '?'}` };
  if (key.validity === 'd' || key.capabilities.includes('D')) return { code: 'GPG_RECIPIENT_UNUSABLE', why: 'is disabled' };
  if (key.validity === 'i') return { code: 'GPG_RECIPIENT_UNUSABLE', why: 'is invalid' };
  const usable = key.encryptionKeys.filter((k) => !['e', 'r', 'i', 'd'].includes(k.validity) && !(k.expires && k.expires <= now));
  if (usable.length === 0 || !key.capabilities.includes('E')) {
    if (key.encryptionKeys.some((k) => k.validity === 'e' || (k.expires && k.expires <= now))) return { code: 'GPG_RECIPIENT_EXPIRED', why: 'has only expired encryption subkeys' };
    if (key.encryptionKeys.some((k) => k.validity === 'r')) return { code: 'GPG_RECIPIENT_REVOKED', why: 'has only revoked encryption subkeys' };
    return { code: 'GPG_RECIPIENT_UNUSABLE', why: 'has no encryption subkey' };
  }
  return undefined;
}

export interface EncryptPlan {
  /** Primary-key fingerprints to encrypt to. */
  fingerprints: string[];
  /** Passphrase file for symmetric encryption. */
  passphraseFile?: string;
  /** `-z` level, or undefined for gpg's default. */
  compressLevel?: number;
}

/** gpg's argv for encrypting stdin to stdout. Never holds a passphrase (only its file's path). */
export function encryptArgs(plan: EncryptPlan): string[] {
  const args = ['--batch', '--no-tty', '--yes', '--trust-model', 'always'];
  if (plan.fingerprints.length > 0) {
    args.push('--encrypt');
    for (const fpr of plan.fingerprints) args.push('--recipient', fpr);
  }
  if (plan.passphraseFile) args.push('--symmetric', '--cipher-algo', 'AES256', '--pinentry-mode', 'loopback', '--no-symkey-cache', '--passphrase-file', plan.passphraseFile);
  if (plan.compressLevel !== undefined) args.push('-z', String(plan.compressLevel));
  args.push('--output', '-');
  return args;
}

/** Runs gpg with `stdout` streamed into `path` by the core's atomic writer (hashed on the way); removed when gpg failed. */
async function gpgToFile(args: string[], path: string, options: ExecOptions, onFailure: (error: unknown) => PipelineError): Promise<FileDigest> {
  const child = exec('gpg', args, { ...options, stdout: 'stream', label: 'gpg' });
  // A failed write (a full disk) destroys gpg's stdout, and exec stops gpg at once: the write's
  // error is then the cause, gpg's "stopped" only its consequence.
  const [ran, written] = await Promise.allSettled([child, writeFileAtomic(path, child.stdout!, { signal: options.signal })]);
  if (written.status === 'rejected' && (ran.status === 'fulfilled' || wasStopped(ran.reason))) throw written.reason;
  if (ran.status === 'rejected') {
    await rm(path, { force: true });
    throw onFailure(ran.reason);
  }
  if (written.status === 'rejected') throw written.reason;
  return written.value;
}

/** A process exec stopped because another part of its chain failed first. */
function wasStopped(error: unknown): boolean {
  return isPipelineError(error) && error.details?.stopped === true;
}

const wrapExecError = (code: 'GPG_ENCRYPT_FAILED' | 'GPG_DECRYPT_FAILED', what: string) => (error: unknown) => {
  if (isPipelineError(error) && (error.code === 'ABORTED' || error.code === 'EXEC_NOT_FOUND')) return error;
  const message = error instanceof Error ? error.message : String(error);
  return gpgError(code, `${what}: ${message}`, { cause: error, details: isPipelineError(error) ? error.details : undefined });
};

export interface DecryptOptions {
  /** A file path (written atomically, 0600) or a writable stream. */
  to: string | Writable;
  /** GnuPG home holding the secret key (default: $GNUPGHOME or ~/.gnupg). */
  gnupgHome?: string;
  /** Passphrase file for a symmetrically encrypted file. */
  passphraseFile?: string;
  signal?: AbortSignal;
  secrets?: SecretRegistry;
}

/**
 * gpg as a stream filter (ciphertext on stdin, plaintext on stdout) for the `decryptFilter` hook:
 * the restore's one pass. The passphrase stays in its file (registered as a secret), never in argv.
 */
export async function decryptFilter(name: string, options: Omit<DecryptOptions, 'to' | 'signal'>): Promise<StreamFilter> {
  const args = ['--batch', '--no-tty', '--yes'];
  if (options.passphraseFile) {
    options.secrets?.add(await readPassphrase(options.passphraseFile));
    args.push('--pinentry-mode', 'loopback', '--no-symkey-cache', '--passphrase-file', options.passphraseFile);
  }
  args.push('--decrypt', '--output', '-');
  return { command: 'gpg', args, env: options.gnupgHome ? { GNUPGHOME: options.gnupgHome } : {}, label: 'gpg --decrypt', failure: wrapExecError('GPG_DECRYPT_FAILED', `decrypting ${name} failed`) };
}

/** Decrypts a gpg-encrypted file to a file or a stream; resolves with the plaintext's size and sha256. */
export async function decrypt(input: string, options: DecryptOptions): Promise<FileDigest> {
  const args = ['--batch', '--no-tty', '--yes'];
  if (options.passphraseFile) {
    const passphrase = await readPassphrase(options.passphraseFile);
    options.secrets?.add(passphrase);
    args.push('--pinentry-mode', 'loopback', '--no-symkey-cache', '--passphrase-file', options.passphraseFile);
  }
  args.push('--decrypt', '--output', '-', '--', input);
  const execOptions: ExecOptions = { env: options.gnupgHome ? { GNUPGHOME: options.gnupgHome } : {}, signal: options.signal, secrets: options.secrets };
  const fail = wrapExecError('GPG_DECRYPT_FAILED', `decrypting ${input} failed`);
  if (typeof options.to === 'string') return gpgToFile(args, options.to, execOptions, fail);
  const digest = new DigestStream();
  const child = exec('gpg', args, { ...execOptions, stdout: 'stream', label: 'gpg' });
  const [ran, copied] = await Promise.allSettled([child, pipeline(child.stdout!, digest, options.to)]);
  if (copied.status === 'rejected' && (ran.status === 'fulfilled' || wasStopped(ran.reason))) throw copied.reason;
  if (ran.status === 'rejected') throw fail(ran.reason);
  if (copied.status === 'rejected') throw copied.reason;
  return digest.digest();
}

async function readPassphrase(file: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (error) {
    throw gpgError('GPG_PASSPHRASE_FILE_MISSING', `passphrase file ${file} cannot be read (${(error as NodeJS.ErrnoException).code ?? (error as Error).message})`, { cause: error });
  }
  const first = text.split(/\r?\n/)[0] ?? '';
  if (!first) throw gpgError('GPG_PASSPHRASE_FILE_MISSING', `passphrase file ${file} is empty`);
  return first;
}

interface Prepared extends EncryptPlan {
  home?: string;
  symmetric: boolean;
}

async function gpgVersion(ctx: RunContext, env: Record<string, string>): Promise<string> {
  const out = await ctx.exec('gpg', ['--version'], { env, label: 'gpg' });
  return /gpg \(GnuPG\) (\S+)/.exec(out.stdout)?.[1] ?? out.stdout.split('\n')[0] ?? '?';
}

/** Finds the one usable key of `recipient`, or throws the matching GPG_RECIPIENT_* error. */
async function findRecipient(ctx: RunContext, env: Record<string, string>, recipient: string, where: string): Promise<ColonKey> {
  const out = await ctx.exec('gpg', ['--batch', '--no-tty', '--with-colons', '--fixed-list-mode', '--list-keys', '--', recipient], { env, okExitCodes: [0, 2], label: 'gpg' });
  const keys = parseColonKeys(out.stdout);
  if (out.exitCode !== 0 || keys.length === 0) {
    throw gpgError('GPG_RECIPIENT_UNKNOWN', `recipient "${recipient}" is not in the keyring ${where}`);
  }
  const problems = keys.map((k) => ({ key: k, problem: keyProblem(k) }));
  const usable = problems.filter((p) => !p.problem);
  if (usable.length === 1) return usable[0]!.key;
  if (usable.length > 1) {
    throw gpgError('GPG_RECIPIENT_AMBIGUOUS', `recipient "${recipient}" matches ${usable.length} keys (${usable.map((u) => u.key.fingerprint).join(', ')})`);
  }
  const { key, problem } = problems[0]!;
  throw gpgError(problem!.code, `recipient "${recipient}" (${key.fingerprint}) ${problem!.why}`);
}

async function prepare(options: GpgOptions, api: PluginApi, ctx: RunContext): Promise<Prepared> {
  const passphraseFile = options.passphraseFile ? api.resolvePath(options.passphraseFile) : undefined;
  if (passphraseFile) {
    ctx.secrets.add(await readPassphrase(passphraseFile));
    const mode = (await stat(passphraseFile)).mode;
    if (mode & 0o077) ctx.log.warn(`passphrase file ${passphraseFile} is readable by other users (mode ${(mode & 0o777).toString(8)}); chmod 600 it`);
  }
  const sourceHome = options.gnupgHome ? api.resolvePath(options.gnupgHome) : process.env.GNUPGHOME;
  const sourceEnv: Record<string, string> = sourceHome ? { GNUPGHOME: sourceHome } : {};
  const useTemp = options.recipientFiles.length > 0 || options.recipients.length === 0;
  let home = sourceHome;
  if (useTemp) {
    // A private keyring for this run: recipient files are imported here, never into the user's keyring.
    home = join(ctx.tmpDir, `gnupg-${api.name}-${Math.random().toString(36).slice(2, 8)}`);
    await mkdir(home, { recursive: true, mode: 0o700 });
    const tempHome = home;
    ctx.defer(() => exec('gpgconf', ['--kill', 'all'], { env: { GNUPGHOME: tempHome } }).catch(() => {}));
  }
  const env: Record<string, string> = home ? { GNUPGHOME: home } : {};
  ctx.tools.gpg = await gpgVersion(ctx, env);
  const where = home ?? '~/.gnupg';

  const wanted: string[] = [...options.recipients];
  if (options.recipientFiles.length > 0) {
    if (options.recipients.length > 0) {
      // Named recipients come from the user's keyring, copied into the private one.
      const exported = await ctx.exec('gpg', ['--batch', '--no-tty', '--armor', '--export', '--', ...options.recipients], { env: sourceEnv, label: 'gpg' });
      if (exported.stdout.trim()) await ctx.exec('gpg', ['--batch', '--no-tty', '--import'], { env, stdin: exported.stdout, label: 'gpg' });
    }
    for (const f of options.recipientFiles) {
      const file = api.resolvePath(f);
      if (!(await stat(file).catch(() => undefined))) throw gpgError('GPG_RECIPIENT_FILE_MISSING', `recipient file ${file} does not exist`);
      const shown = await ctx.exec('gpg', ['--batch', '--no-tty', '--with-colons', '--import-options', 'show-only', '--import', '--', file], { env, label: 'gpg', okExitCodes: [0, 2] });
      const keys = parseColonKeys(shown.stdout).filter((k) => k.fingerprint);
      if (keys.length === 0) throw gpgError('GPG_RECIPIENT_FILE_INVALID', `recipient file ${file} holds no public key`);
      await ctx.exec('gpg', ['--batch', '--no-tty', '--import', '--', file], { env, label: 'gpg' });
      wanted.push(...keys.map((k) => k.fingerprint));
    }
  }

  const fingerprints: string[] = [];
  for (const recipient of wanted) {
    const key = await findRecipient(ctx, env, recipient, where);
    if (!fingerprints.includes(key.fingerprint)) fingerprints.push(key.fingerprint);
    const soon = key.encryptionKeys.map((k) => k.expires).filter((d): d is Date => !!d).sort((a, b) => b.getTime() - a.getTime())[0];
    if (soon && soon.getTime() - Date.now() < 30 * 86_400_000) {
      ctx.log.warn(`gpg key ${key.fingerprint} of recipient "${recipient}" expires on ${soon.toISOString().slice(0, 10)}; extend it before backups start failing`);
    }
  }
  return { home, fingerprints, passphraseFile, symmetric: passphraseFile !== undefined, compressLevel: options.compressLevel };
}

async function encrypt(artifact: Artifact, prepared: Prepared, options: GpgOptions, ctx: RunContext): Promise<Artifact> {
  if (artifact.encryption) {
    ctx.log.info(`${artifact.name} is already encrypted; left as it is`);
    return artifact;
  }
  const plan: EncryptPlan = { ...prepared, compressLevel: artifact.compression !== 'none' ? 0 : prepared.compressLevel };
  const name = `${artifact.name}.gpg`;
  const out = join(dirname(artifact.path), name);
  // Hash the plaintext as gpg reads it: the file must still be what verify saw.
  const plainDigest = new DigestStream();
  const input = createReadStream(artifact.path);
  input.on('error', (e) => plainDigest.destroy(e));
  const stdin: Readable = input.pipe(plainDigest);
  const started = Date.now();
  const written = await gpgToFile(
    encryptArgs(plan),
    out,
    { env: prepared.home ? { GNUPGHOME: prepared.home } : {}, stdin, signal: ctx.signal, secrets: ctx.secrets },
    wrapExecError('GPG_ENCRYPT_FAILED', `encrypting ${artifact.name} failed`),
  );
  const plain = plainDigest.digest();
  if (plain.sha256 !== artifact.sha256 || plain.bytes !== artifact.bytes) {
    await rm(out, { force: true });
    throw new PipelineError('CHECKSUM_MISMATCH', `${artifact.name} changed after it was verified (sha256 ${plain.sha256}, expected ${artifact.sha256})`, {
      hint: 'Something modified the staging folder during the run; run it again.',
    });
  }
  if (!options.keepPlaintext) await rm(artifact.path, { force: true });
  ctx.log.info({ artifact: name, bytes: written.bytes, ms: Date.now() - started }, `encrypted ${artifact.name}`);
  return {
    ...artifact,
    name,
    path: out,
    bytes: written.bytes,
    sha256: written.sha256,
    encryption: { method: 'gpg', recipients: prepared.fingerprints, symmetric: prepared.symmetric },
    plain: { name: artifact.name, bytes: artifact.bytes, sha256: artifact.sha256 },
  };
}

export default definePlugin({
  name: 'gpg',
  description: 'Encrypts every artifact with GnuPG (public keys and/or a passphrase) before it is shipped.',
  options: GpgOptions,
  apply(hooks, options, api) {
    let prepared: Prepared | undefined;
    hooks.preflight.tapPromise('gpg', async (ctx) => {
      prepared = await prepare(options, api, ctx);
    });
    hooks.plan.tapPromise('gpg', async (plan, ctx) => {
      if (!prepared) return;
      const what = [prepared.fingerprints.length > 0 && `to ${prepared.fingerprints.join(', ')}`, prepared.symmetric && 'with the passphrase file'].filter(Boolean).join(' and ');
      plan.add({ plugin: 'gpg', hook: 'transform', description: `encrypt each artifact ${what}`, command: displayCommand('gpg', encryptArgs(prepared), ctx.secrets) });
    });
    hooks.transform.tapPromise('gpg', async (artifact, ctx) => {
      if (!prepared) throw new PipelineError('PLUGIN_FAILED', 'gpg: transform ran before preflight');
      return encrypt(artifact, prepared, options, ctx);
    });
    // One pass: gpg encrypts the stream while it is made (no plaintext file, no second read).
    // keepPlaintext needs the plaintext file, so it keeps the file-based transform.
    hooks.transformFilter.tapPromise('gpg', async (request) => {
      if (!prepared || options.keepPlaintext) return;
      const p = prepared;
      const name = request.artifact.name;
      request.offer({
        command: 'gpg',
        args: encryptArgs({ ...p, compressLevel: request.artifact.compression !== 'none' ? 0 : p.compressLevel }),
        env: p.home ? { GNUPGHOME: p.home } : {},
        label: 'gpg',
        rename: (n) => `${n}.gpg`,
        encryption: { method: 'gpg', recipients: p.fingerprints, symmetric: p.symmetric },
        fail: wrapExecError('GPG_ENCRYPT_FAILED', `encrypting ${name} failed`),
      });
    });
    // The restore half: the secret key is in `gnupgHome` (or $GNUPGHOME), a passphrase in `passphraseFile`.
    // As a stream (one pass: the core splices gpg between the fetch and the restore) …
    hooks.decryptFilter.for('gpg').tapPromise('gpg', async (artifact, ctx) =>
      decryptFilter(artifact.name, {
        gnupgHome: options.gnupgHome ? api.resolvePath(options.gnupgHome) : undefined,
        passphraseFile: options.passphraseFile ? api.resolvePath(options.passphraseFile) : undefined,
        secrets: ctx.secrets,
      }),
    );
    // … and into a file, for callers that hold one.
    hooks.decrypt.for('gpg').tapPromise('gpg', async (artifact, ctx) => {
      const to = join(ctx.tmpDir, `plain-${artifact.plain?.name ?? `${artifact.name}.out`}`);
      const digest = await decrypt(artifact.path, {
        to,
        gnupgHome: options.gnupgHome ? api.resolvePath(options.gnupgHome) : undefined,
        passphraseFile: options.passphraseFile ? api.resolvePath(options.passphraseFile) : undefined,
        signal: ctx.signal,
        secrets: ctx.secrets,
      });
      return { ...artifact, name: artifact.plain?.name ?? artifact.name, path: to, bytes: digest.bytes, sha256: digest.sha256, encryption: undefined, plain: undefined };
    });
  },
  restoreOptions: ['gnupgHome', 'passphraseFile'],
  errors: GPG_ERRORS,
  // gpg takes lock files in its home even to encrypt (ProtectHome=read-only would stop it).
  writablePaths: (options, { resolvePath }) => [options.gnupgHome ? resolvePath(options.gnupgHome) : process.env.GNUPGHOME ?? resolvePath('~/.gnupg')],
});
