/**
 * `pgbackrest info --output=json`, read bigint-safe. pgBackRest prints `system-id` (a 64-bit
 * integer, e.g. 7714510157116286372) as a bare JSON number; `JSON.parse` rounds it to the nearest
 * double (…286000) and Node 20's JSON.parse gives a reviver no access to the source text. So
 * integer literals outside the safe range are quoted textually before parsing, by a small scanner
 * that knows where strings are (a digit run inside a string is left alone).
 */
import { PipelineError } from '@backup-pipeline/core';

/** The text with every integer literal beyond Number.MAX_SAFE_INTEGER turned into a JSON string. */
export function quoteBigIntegers(text: string): string {
  let out = '';
  let i = 0;
  const n = text.length;
  while (i < n) {
    const c = text[i]!;
    if (c === '"') {
      // Copy the whole string literal, escapes included.
      let j = i + 1;
      while (j < n && text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
      out += text.slice(i, j + 1);
      i = j + 1;
      continue;
    }
    if (c === '-' || (c >= '0' && c <= '9')) {
      let j = i + 1;
      while (j < n && /[0-9.eE+-]/.test(text[j]!)) j++;
      const literal = text.slice(i, j);
      const big = /^-?\d+$/.test(literal) && !Number.isSafeInteger(Number(literal));
      out += big ? `"${literal}"` : literal;
      i = j;
      continue;
    }
    out += c;
    i++;
  }
  return out;
}

/** JSON.parse that keeps integers beyond 2^53 exact, as decimal strings. */
export function parseJsonBigIntSafe(text: string): unknown {
  return JSON.parse(quoteBigIntegers(text));
}

export interface InfoBackup {
  label: string;
  type: 'full' | 'diff' | 'incr';
  prior: string | null;
  reference: string[] | null;
  error?: boolean;
  archive: { start: string | null; stop: string | null };
  lsn?: { start: string; stop: string };
  timestamp: { start: number; stop: number };
  info: { size: number; delta: number; repository: { size: number; delta: number } };
  database: { id: number; 'repo-key'?: number };
}

export interface InfoStanza {
  name: string;
  cipher?: string;
  status: { code: number; message: string; lock?: { backup?: { held: boolean } } };
  db: Array<{ id: number; 'system-id': string | number; version: string; 'repo-key'?: number }>;
  archive: Array<{ id: string; min: string | null; max: string | null; database?: { id: number } }>;
  backup: InfoBackup[];
  repo?: Array<{ key: number; cipher: string; status: { code: number; message: string } }>;
}

/** pgBackRest's stanza status codes (info's `status.code`). */
export const STANZA_STATUS = { ok: 0, missingStanzaPath: 1, noBackups: 2, missingStanzaData: 3 } as const;

/** The stanza `name` from info's JSON text, system ids as strings. */
export function parseInfo(text: string, stanza: string): InfoStanza {
  let parsed: unknown;
  try {
    parsed = parseJsonBigIntSafe(text);
  } catch (error) {
    throw new PipelineError('PGBACKREST_INFO_UNREADABLE', `pgbackrest info --output=json printed something that is not JSON: ${(error as Error).message}`, {
      hint: 'Run the same `pgbackrest info --output=json` by hand; a warning on stdout (log-level-console) can break the JSON.',
    });
  }
  const list = Array.isArray(parsed) ? (parsed as InfoStanza[]) : [];
  const found = list.find((s) => s && s.name === stanza);
  if (!found) {
    throw new PipelineError('PGBACKREST_INFO_UNREADABLE', `pgbackrest info lists no stanza "${stanza}"`, { hint: 'Check `stanza` matches the [stanza] section of the pgBackRest config.' });
  }
  for (const db of found.db ?? []) db['system-id'] = String(db['system-id']);
  found.backup ??= [];
  found.archive ??= [];
  return found;
}

/** Labels a backup needs besides itself (its full, and for an incr every backup it builds on). */
export function dependencies(backup: InfoBackup): string[] {
  return [...new Set([...(backup.reference ?? []), ...(backup.prior ? [backup.prior] : [])])];
}
