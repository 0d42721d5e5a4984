/**
 * The `age` stage: encrypts every artifact with the age tool (Debian's `age`) before anything is
 * shipped, to age public keys (`age1…`) or ssh public keys — and decrypts them again for restore
 * and verify with `identityFile`, which only the restoring host needs.
 *
 * preflight: age is installed, every recipient and recipients file is valid (a zero-byte test
 *            encryption to all of them), before any dump starts.
 * transformFilter: offers `age --encrypt` as a filter the core splices into the producer's stream
 *            (one pass: the plaintext file never exists); not with `keepPlaintext`.
 * transform: (the fallback) streams the file through `age -e` into `NAME.age`, hashing both sides on the way
 *            (the plaintext must still be what verify saw), atomically, mode 0600; the plaintext
 *            is removed unless `keepPlaintext`.
 * decrypt:   `age -d -i identityFile` (tapped for the method `age`) into the restore's private folder.
 *
 * age does not compress, so compressed dumps are not compressed twice. There is no passphrase
 * mode: unattended encryption needs only public keys.
 */
import { createReadStream } from 'node:fs';
import { readFile, rm, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Readable } from 'node:stream';
import {
  declaredErrors,
  definePlugin,
  DigestStream,
  displayCommand,
  isPipelineError,
  PipelineError,
  writeFileAtomic,
  z,
  type Artifact,
  type ExecOptions,
  type FileDigest,
  type PluginApi,
  type RunContext,
  type StreamFilter,
} from '@backup-pipeline/core';

export const AGE_ERRORS = {
  AGE_RECIPIENT_INVALID: 'Give age public keys (age1…, from `age-keygen -y KEYFILE`) or ssh public keys (ssh-ed25519 …, ssh-rsa …).',
  AGE_RECIPIENT_FILE_MISSING: 'Fix the path in `recipientFiles` (relative paths are relative to the config file).',
  AGE_IDENTITY_MISSING: 'Set `identityFile` in the age stage of the restoring host\'s config, or pass `-o identityFile=PATH` to restore/verify.',
  AGE_ENCRYPT_FAILED: 'See age\'s message above.',
  AGE_DECRYPT_FAILED: 'Check that `identityFile` holds the secret key (AGE-SECRET-KEY-1…) of one of the recipients the set was encrypted to (see `pipeline list --json`).',
} as const;
export type AgeErrorCode = keyof typeof AGE_ERRORS;

const ageError = declaredErrors(AGE_ERRORS);

/** An age X25519 public key, or an ssh public key age accepts. */
export const AGE_RECIPIENT = /^(age1[02-9ac-hj-np-z]{58}|ssh-ed25519 [A-Za-z0-9+/=]+( .*)?|ssh-rsa [A-Za-z0-9+/=]+( .*)?)$/;

export const AgeOptions = z
  .object({
    recipients: z
      .array(z.string().regex(AGE_RECIPIENT, 'an age public key (age1…) or an ssh public key (ssh-ed25519 …, ssh-rsa …)'))
      .default([])
      .describe('Public keys to encrypt to: age keys (`age1…`) or ssh public keys (`ssh-ed25519 AAAA…`). Any one of them decrypts.'),
    recipientFiles: z
      .array(z.string().min(1))
      .default([])
      .describe('Files listing recipients, one per line (`#` comments), as `age -R` reads them.'),
    identityFile: z
      .string()
      .min(1)
      .optional()
      .describe('The secret key file (`AGE-SECRET-KEY-1…`, or an ssh private key) used by `restore` and `verify` to decrypt. Read only there: the backup host never needs it.'),
    keepPlaintext: z.boolean().default(false).describe('Keep the unencrypted artifact in the work dir (it is never shipped). Default: removed once encrypted.'),
  })
  .strict()
  .refine((o) => o.recipients.length > 0 || o.recipientFiles.length > 0, { message: 'give recipients or recipientFiles', path: ['recipients'] });
export type AgeOptions = z.output<typeof AgeOptions>;

/** age's argv for encrypting stdin to stdout. Holds public keys and file paths only. */
export function encryptArgs(recipients: readonly string[], recipientFiles: readonly string[]): string[] {
  return ['--encrypt', ...recipients.flatMap((r) => ['-r', r]), ...recipientFiles.flatMap((f) => ['-R', f])];
}

/** The recipients listed in a recipients file (comments and blank lines skipped). */
export function parseRecipientsFile(text: string): string[] {
  return text
    .split(/\r?\n/)
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'));
}

/** Runs age with stdout written atomically (0600, hashed on the way); nothing left behind when age fails. */
async function ageToFile(args: string[], path: string, options: ExecOptions, onFailure: (error: unknown) => PipelineError, ctx: Pick<RunContext, 'exec'>): Promise<FileDigest> {
  const child = ctx.exec('age', args, { ...options, stdout: 'stream', label: 'age', writes: path });
  const [ran, written] = await Promise.allSettled([child, writeFileAtomic(path, child.stdout!, { signal: options.signal })]);
  if (ran.status === 'rejected') {
    await rm(path, { force: true });
    throw onFailure(ran.reason);
  }
  if (written.status === 'rejected') throw written.reason;
  return written.value;
}

const wrap = (code: 'AGE_ENCRYPT_FAILED' | 'AGE_DECRYPT_FAILED', what: string) => (error: unknown) => {
  if (isPipelineError(error) && ['ABORTED', 'EXEC_NOT_FOUND', 'NO_SPACE'].includes(error.code)) return error;
  return ageError(code, `${what}: ${error instanceof Error ? error.message : String(error)}`, { cause: error, details: isPipelineError(error) ? error.details : undefined });
};

interface Prepared {
  recipientFiles: string[];
  /** Every public key encrypted to (for the manifest). */
  publicKeys: string[];
}

async function prepare(options: AgeOptions, api: PluginApi, ctx: RunContext): Promise<Prepared> {
  const version = await ctx.exec('age', ['--version'], { label: 'age' });
  ctx.tools.age = version.stdout.trim();
  const recipientFiles: string[] = [];
  const publicKeys = [...options.recipients];
  for (const f of options.recipientFiles) {
    const file = api.resolvePath(f);
    const text = await readFile(file, 'utf8').catch((error: NodeJS.ErrnoException) => {
      throw ageError('AGE_RECIPIENT_FILE_MISSING', `recipients file ${file} cannot be read (${error.code ?? error.message})`);
    });
    const listed = parseRecipientsFile(text);
    const bad = listed.filter((r) => !AGE_RECIPIENT.test(r));
    if (listed.length === 0 || bad.length > 0) {
      throw ageError('AGE_RECIPIENT_INVALID', `recipients file ${file} ${listed.length === 0 ? 'lists no recipient' : `has lines that are not recipients: ${bad.map((b) => b.slice(0, 20)).join(', ')}`}`);
    }
    recipientFiles.push(file);
    publicKeys.push(...listed);
  }
  // A zero-byte encryption to every recipient: age itself rejects a key it cannot use.
  await ctx.exec('age', encryptArgs(options.recipients, recipientFiles), { stdin: '', label: 'age (recipient check)' }).catch((error: unknown) => {
    throw ageError('AGE_RECIPIENT_INVALID', `age refuses the recipients: ${(error as Error).message}`, { cause: error });
  });
  return { recipientFiles, publicKeys: [...new Set(publicKeys)] };
}

async function encrypt(artifact: Artifact, prepared: Prepared, options: AgeOptions, ctx: RunContext): Promise<Artifact> {
  if (artifact.encryption) {
    ctx.log.info(`${artifact.name} is already encrypted (${artifact.encryption.method}); left as it is`);
    return artifact;
  }
  const name = `${artifact.name}.age`;
  const out = join(dirname(artifact.path), name);
  const plainDigest = new DigestStream();
  const input = createReadStream(artifact.path);
  input.on('error', (e) => plainDigest.destroy(e));
  const stdin: Readable = input.pipe(plainDigest);
  const started = Date.now();
  const written = await ageToFile(encryptArgs(options.recipients, prepared.recipientFiles), out, { stdin, signal: ctx.signal }, wrap('AGE_ENCRYPT_FAILED', `encrypting ${artifact.name} failed`), ctx);
  const plain = plainDigest.digest();
  if (plain.sha256 !== artifact.sha256 || plain.bytes !== artifact.bytes) {
    await rm(out, { force: true });
    throw new PipelineError('CHECKSUM_MISMATCH', `${artifact.name} changed after it was verified (sha256 ${plain.sha256}, expected ${artifact.sha256})`, {
      hint: 'Something modified the staging folder during the run; run it again.',
    });
  }
  if (!options.keepPlaintext) await rm(artifact.path, { force: true });
  ctx.log.info({ artifact: name, bytes: written.bytes, ms: Date.now() - started }, `encrypted ${artifact.name} with age`);
  return {
    ...artifact,
    name,
    path: out,
    bytes: written.bytes,
    sha256: written.sha256,
    encryption: { method: 'age', recipients: prepared.publicKeys, symmetric: false },
    plain: { name: artifact.name, bytes: artifact.bytes, sha256: artifact.sha256 },
  };
}

/** Decrypts an age file into `to` (0600) with the identity file; resolves with the plaintext's size and sha256. */
export async function decryptFile(input: string, to: string, identityFile: string, ctx: Pick<RunContext, 'exec' | 'signal'>): Promise<FileDigest> {
  if (!(await stat(identityFile).catch(() => undefined))?.isFile()) {
    throw ageError('AGE_IDENTITY_MISSING', `identity file ${identityFile} does not exist`);
  }
  return ageToFile(['--decrypt', '-i', identityFile, '--', input], to, { signal: ctx.signal }, wrap('AGE_DECRYPT_FAILED', `decrypting ${input} failed`), ctx);
}

/** age as a stream filter (ciphertext on stdin, plaintext on stdout) for the `decryptFilter` hook. The identity stays in its file. */
export async function decryptFilter(name: string, identityFile: string): Promise<StreamFilter> {
  if (!(await stat(identityFile).catch(() => undefined))?.isFile()) {
    throw ageError('AGE_IDENTITY_MISSING', `identity file ${identityFile} does not exist`);
  }
  return { command: 'age', args: ['--decrypt', '-i', identityFile], label: 'age --decrypt', failure: wrap('AGE_DECRYPT_FAILED', `decrypting ${name} failed`) };
}

export default definePlugin({
  name: 'age',
  description: 'Encrypts every artifact with age (age1… or ssh public keys) before it is shipped; decrypts with identityFile on restore.',
  options: AgeOptions,
  restoreOptions: ['identityFile'],
  errors: AGE_ERRORS,
  apply(hooks, options, api) {
    let prepared: Prepared | undefined;
    hooks.preflight.tapPromise('age', async (ctx) => {
      prepared = await prepare(options, api, ctx);
    });
    hooks.plan.tapPromise('age', async (plan, ctx) => {
      if (!prepared) return;
      plan.add({ hook: 'transform', description: `encrypt each artifact with age to ${prepared.publicKeys.length} recipient(s)`, command: displayCommand('age', encryptArgs(options.recipients, prepared.recipientFiles), ctx.secrets) });
    });
    hooks.transform.tapPromise('age', async (artifact, ctx) => {
      if (!prepared) throw new PipelineError('PLUGIN_FAILED', 'age: transform ran before preflight');
      return encrypt(artifact, prepared, options, ctx);
    });
    // One pass: age encrypts the stream while it is made (no plaintext file, no second read).
    hooks.transformFilter.tapPromise('age', async (request) => {
      if (!prepared || options.keepPlaintext) return;
      const name = request.artifact.name;
      request.offer({
        command: 'age',
        args: encryptArgs(options.recipients, prepared.recipientFiles),
        label: 'age',
        rename: (n) => `${n}.age`,
        encryption: { method: 'age', recipients: prepared.publicKeys, symmetric: false },
        fail: wrap('AGE_ENCRYPT_FAILED', `encrypting ${name} failed`),
      });
    });
    // One pass: the core splices `age -d` between the fetch and the restore.
    hooks.decryptFilter.for('age').tapPromise('age', async (artifact) => {
      if (!options.identityFile) {
        throw ageError('AGE_IDENTITY_MISSING', `${artifact.name} is encrypted with age and the age stage has no identityFile`);
      }
      return decryptFilter(artifact.name, api.resolvePath(options.identityFile));
    });
    // Into a file, for callers that hold one.
    hooks.decrypt.for('age').tapPromise('age', async (artifact, ctx) => {
      if (!options.identityFile) {
        throw ageError('AGE_IDENTITY_MISSING', `${artifact.name} is encrypted with age and the age stage has no identityFile`);
      }
      const to = join(ctx.tmpDir, `plain-${artifact.plain?.name ?? `${artifact.name}.out`}`);
      const digest = await decryptFile(artifact.path, to, api.resolvePath(options.identityFile), ctx);
      return { ...artifact, name: artifact.plain?.name ?? artifact.name, path: to, bytes: digest.bytes, sha256: digest.sha256, encryption: undefined, plain: undefined };
    });
  },
});
