/**
 * The one name check. Every name that becomes part of a path — an artifact's file name, the
 * plaintext name an encrypted artifact decrypts to, a name read back from a manifest or a
 * destination listing — passes `nameProblem` before it is joined to a folder, at write and at read.
 */
import { join } from 'node:path';
import { PARTIAL_SUFFIX } from './atomic-file.js';
import { PipelineError } from './errors.js';

/** Longest file name accepted, in UTF-8 bytes (ext4, XFS and S3 key segments all allow this much). */
export const MAX_NAME_BYTES = 200;

/** Characters that look like a slash or a backslash (and are not one), zero-width and direction controls. */
const LOOK_ALIKES = /[\u2215\u2044\u29f8\u29f5\u2571\u2572\uff0f\uff3c\ufe68\u2216\u3033\u2024\u2025\u2026\ufe52\uff0e]/u;
const CONTROLS = /[\p{Cc}\p{Cf}\p{Zl}\p{Zp}\p{Co}]/u;

/** Why `name` cannot be a file of a backup set, or undefined when it can. */
export function nameProblem(name: unknown): string | undefined {
  if (typeof name !== 'string' || name.length === 0) return 'is empty';
  if (Buffer.byteLength(name, 'utf8') > MAX_NAME_BYTES) return `is longer than ${MAX_NAME_BYTES} bytes`;
  if (name.includes('/') || name.includes('\\')) return 'contains a slash';
  if (name.startsWith('.')) return 'is hidden or a relative path (starts with ".")';
  if (CONTROLS.test(name)) return 'contains a control or format character';
  if (LOOK_ALIKES.test(name)) return 'contains a character that looks like a slash or a dot';
  if (name.normalize('NFKC') !== name.normalize('NFC')) return 'contains compatibility characters (NFKC would change it)';
  if (name.endsWith(PARTIAL_SUFFIX)) return `ends with ${PARTIAL_SUFFIX} (a file still being written)`;
  if (name.trim() !== name) return 'starts or ends with white space';
  return undefined;
}

/** Throws unless `name` can be a file of a set (see `nameProblem`). Destinations call it before touching storage. */
export function assertFileName(name: string): void {
  const problem = nameProblem(name);
  if (problem) {
    throw new PipelineError('NAME_INVALID', `${JSON.stringify(name)} is not a valid file name in a backup set: it ${problem}`, {
      hint: 'Names of backup files are one path segment of plain characters; a manifest or listing that holds such a name was not written by backup-pipeline or was tampered with.',
    });
  }
}

/** `dir/name` after the name check: the only way a name read from a manifest or a listing becomes a path. */
export function pathInSet(dir: string, name: string): string {
  assertFileName(name);
  return join(dir, name);
}

/** Identifiers stored in a manifest (kind, format, compression, encryption method): open, but safe. */
export const IDENTIFIER = /^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$/;
