/**
 * Reads a dotenv file the way Mastodon does (Ruby's dotenv): `KEY=value` lines, optional `export `,
 * `#` comments outside quotes, single quotes literal, double quotes with backslash escapes (`\n`,
 * `\r`, `\"`, `\\`, `\$`) and possibly several lines, `$VAR` / `${VAR}` substitution in unquoted
 * and double-quoted values. A malformed line is an ENV_FILE_INVALID error naming the file and the
 * line number, never the value (it may be a password).
 */
import { PipelineError } from './errors.js';

export interface EnvEntry {
  value: string;
  line: number;
}

function invalid(file: string, line: number, why: string): PipelineError {
  return new PipelineError('ENV_FILE_INVALID', `${file} line ${line}: ${why}`, {
    hint: `Fix line ${line} of ${file}: each line must be KEY=value, KEY='value' or KEY="value" (quote values containing spaces or #).`,
    details: { file, line },
  });
}

/** Parses dotenv text. `lookup` supplies variables for `${VAR}` not defined earlier in the file. */
export function parseEnvFile(text: string, file = '.env', lookup: (name: string) => string | undefined = () => undefined): Map<string, EnvEntry> {
  const out = new Map<string, EnvEntry>();
  const src = text.replace(/\r\n?/g, '\n');
  let i = 0;
  let line = 1;
  const n = src.length;
  const resolveVar = (name: string) => out.get(name)?.value ?? lookup(name) ?? '';

  while (i < n) {
    // Skip blank space and empty lines.
    const c = src[i]!;
    if (c === '\n') {
      line++;
      i++;
      continue;
    }
    if (c === ' ' || c === '\t') {
      i++;
      continue;
    }
    const startLine = line;
    if (c === '#') {
      while (i < n && src[i] !== '\n') i++;
      continue;
    }
    let rest = src.slice(i, src.indexOf('\n', i) === -1 ? n : src.indexOf('\n', i));
    const exportMatch = /^export[ \t]+/.exec(rest);
    if (exportMatch) {
      i += exportMatch[0].length;
      rest = rest.slice(exportMatch[0].length);
    }
    const keyMatch = /^[A-Za-z_][A-Za-z0-9_.]*/.exec(rest);
    if (!keyMatch) throw invalid(file, startLine, 'expected a variable name (letters, digits, "_") at the start of the line');
    const key = keyMatch[0];
    i += key.length;
    while (i < n && (src[i] === ' ' || src[i] === '\t')) i++;
    if (i >= n || src[i] === '\n' || src[i] === '#') {
      if (exportMatch) continue; // `export KEY` re-exports an existing variable
      throw invalid(file, startLine, 'the line has no "=" (expected KEY=value)');
    }
    if (src[i] === '=') i++;
    else if (src[i] === ':' && (src[i + 1] === ' ' || src[i + 1] === '\t')) i++;
    else throw invalid(file, startLine, `expected "=" after "${key}"`);
    while (i < n && (src[i] === ' ' || src[i] === '\t')) i++;

    let value = '';
    const q = src[i];
    if (q === "'") {
      const end = src.indexOf("'", i + 1);
      if (end === -1) throw invalid(file, startLine, `the single-quoted value of ${key} is never closed`);
      value = src.slice(i + 1, end);
      for (const ch of value) if (ch === '\n') line++;
      i = end + 1;
    } else if (q === '"') {
      i++;
      let closed = false;
      while (i < n) {
        const ch = src[i]!;
        if (ch === '\\' && i + 1 < n) {
          const next = src[i + 1]!;
          if (next === 'n') value += '\n';
          else if (next === 'r') value += '\r';
          else if (next === '$') value += '\u0000$'; // escaped dollar: kept literal below
          else {
            if (next === '\n') line++;
            value += next;
          }
          i += 2;
          continue;
        }
        if (ch === '"') {
          closed = true;
          i++;
          break;
        }
        if (ch === '\n') line++;
        value += ch;
        i++;
      }
      if (!closed) throw invalid(file, startLine, `the double-quoted value of ${key} is never closed`);
      value = expand(value, resolveVar);
    } else {
      let raw = '';
      while (i < n && src[i] !== '\n' && src[i] !== '#') {
        if (src[i] === '\\' && i + 1 < n && src[i + 1] !== '\n') {
          raw += src[i + 1] === '$' ? '\u0000$' : src[i + 1];
          i += 2;
          continue;
        }
        raw += src[i];
        i++;
      }
      value = expand(raw.replace(/[ \t]+$/, ''), resolveVar);
    }
    // After the value: spaces, an optional comment, then the end of the line.
    while (i < n && (src[i] === ' ' || src[i] === '\t')) i++;
    if (i < n && src[i] === '#') while (i < n && src[i] !== '\n') i++;
    if (i < n && src[i] !== '\n') throw invalid(file, startLine, `unexpected text after the value of ${key} (quote the whole value)`);
    out.set(key, { value, line: startLine });
  }
  return out;
}

/** `$VAR` and `${VAR}` substitution; `\u0000$` marks an escaped, literal dollar. */
function expand(value: string, resolveVar: (name: string) => string): string {
  return value
    .replace(/(\u0000)?\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))/g, (match, escaped: string | undefined, braced?: string, bare?: string) =>
      escaped ? match.slice(1) : resolveVar((braced ?? bare)!),
    )
    .replace(/\u0000\$/g, '$');
}
