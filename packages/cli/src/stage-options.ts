/**
 * Restore-time options from the command line: `-o key=value` (every stage whose options declare
 * `key`) or `-o plugin.key=value` (that plugin's stages). The core validates them with each
 * plugin's schema. `--gnupg-home` and `--passphrase-file` are kept as short forms of
 * `-o gnupgHome=…` and `-o passphraseFile=…`, resolved against the working directory, and
 * `--restore-into` of `-o restoreInto=…`.
 */
import { resolve } from 'node:path';
import { PipelineError } from '@backup-pipeline/core';

export interface StageOptionFlags {
  option?: string[];
  gnupgHome?: string;
  passphraseFile?: string;
  /** `pipeline verify --restore-into`: the verify stage's `restoreInto`. */
  restoreInto?: string;
  /** `pipeline verify --full`: every file of a tree artifact read back (`verifyAll`). */
  full?: boolean;
}

/** Collects a repeatable commander option. */
export const collect = (value: string, previous: string[] = []): string[] => [...previous, value];

export function stageOptionsFrom(flags: StageOptionFlags): Record<string, unknown> | undefined {
  const out: Record<string, unknown> = {};
  for (const entry of flags.option ?? []) {
    const eq = entry.indexOf('=');
    if (eq <= 0) throw new PipelineError('USAGE', `--option ${entry}: expected key=value or plugin.key=value`);
    const raw = entry.slice(eq + 1);
    let value: unknown = raw;
    // Numbers, booleans and JSON arrays/objects are typed; anything else is a string.
    if (/^(true|false|-?\d+(\.\d+)?|\[.*\]|\{.*\})$/s.test(raw)) {
      try {
        value = JSON.parse(raw);
      } catch {
        value = raw;
      }
    }
    out[entry.slice(0, eq)] = value;
  }
  if (flags.gnupgHome) out.gnupgHome = resolve(flags.gnupgHome);
  if (flags.passphraseFile) out.passphraseFile = resolve(flags.passphraseFile);
  if (flags.restoreInto) out.restoreInto = flags.restoreInto;
  if (flags.full) out.verifyAll = true;
  return Object.keys(out).length > 0 ? out : undefined;
}
