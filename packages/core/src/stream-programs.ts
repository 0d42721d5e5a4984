/**
 * The programs the core's byte chains are built of (backup: artifact-stream.ts, restore:
 * restore-stream.ts): a hasher reading a named pipe and a tee, each found once per PATH. Internal:
 * not exported from the package.
 */
import { constants } from 'node:fs';
import { access } from 'node:fs/promises';
import { delimiter, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { PipelineError } from './errors.js';
import { exec, type ExecResult } from './exec.js';

/** A program run on a stream: argv only (never a shell string). */
interface Program {
  command: string;
  args: readonly string[];
  label: string;
}

/** A program looked up once per PATH (the lookup runs again only when PATH changes). */
function perPath(cache: Map<string, Promise<Program>>, find: () => Promise<Program>): Promise<Program> {
  const path = process.env.PATH ?? '';
  let found = cache.get(path);
  if (!found) cache.set(path, (found = find()));
  return found;
}

const hashers = new Map<string, Promise<Program>>();
/** The program that hashes a named pipe: `openssl dgst -sha256 -r`, or `sha256sum` without openssl. */
export const sha256Program = () =>
  perPath(hashers, async () => {
    for (const dir of (process.env.PATH ?? '').split(delimiter).filter(Boolean)) {
      if (await access(join(dir, 'openssl'), constants.X_OK).then(() => true, () => false)) return { command: join(dir, 'openssl'), args: ['dgst', '-sha256', '-r'], label: 'openssl dgst' };
    }
    return { command: 'sha256sum', args: ['-b'], label: 'sha256sum' };
  });

/** The splicing tee shipped with the core (libexec/splice-tee.pl). */
export const SPLICE_TEE = fileURLToPath(new URL('../libexec/splice-tee.pl', import.meta.url));

const tees = new Map<string, Promise<Program>>();
/**
 * The program that copies a stream to named pipes and its stdout (`tee -p` semantics): the core's
 * splice-tee (Perl, part of every Debian system; the kernel's tee(2) and splice(2) move the pages,
 * nothing is copied through it) when it works here, else coreutils' tee.
 */
export const teeProgram = () =>
  perPath(tees, () =>
    exec('perl', [SPLICE_TEE, '--check'], { label: 'splice-tee --check' }).then(
      () => ({ command: 'perl', args: [SPLICE_TEE, '--'], label: 'tee' }),
      () => ({ command: 'tee', args: ['-p', '--'], label: 'tee' }),
    ),
  );

/** The hex digest a hasher printed (`<hex> *<path>`). */
export function digestOf(result: ExecResult, what: string): string {
  const hex = /^([0-9a-f]{64})\b/.exec(result.stdout.trim())?.[1];
  if (!hex) throw new PipelineError('EXEC_FAILED', `the sha256 of ${what} could not be read from ${JSON.stringify(result.stdout.slice(0, 100))}`);
  return hex;
}
