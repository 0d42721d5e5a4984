/**
 * A tiny glob matcher for output files (Node 20 has no `fs.glob`, and no new dependency is worth
 * it): `*` and `?` within one path segment, `**` across segments, `{a,b}` alternatives.
 */
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';

export function globToRegExp(pattern: string): RegExp {
  let re = '';
  let inBraces = 0;
  for (let i = 0; i < pattern.length; i++) {
    const c = pattern[i]!;
    if (c === '*' && pattern[i + 1] === '*') {
      const slash = pattern[i + 2] === '/';
      re += slash ? '(?:[^/]*/)*' : '.*';
      i += slash ? 2 : 1;
    } else if (c === '*') re += '[^/]*';
    else if (c === '?') re += '[^/]';
    else if (c === '{') {
      inBraces++;
      re += '(?:';
    } else if (c === '}' && inBraces > 0) {
      inBraces--;
      re += ')';
    } else if (c === ',' && inBraces > 0) re += '|';
    else re += c.replace(/[.+^${}()|[\]\\]/g, '\\$&');
  }
  return new RegExp(`^${re}$`);
}

/** Regular files under `root` (relative paths with `/`, sorted) matching any pattern. Symlinks and hidden files are skipped. */
export async function findOutputs(root: string, patterns: readonly string[]): Promise<string[]> {
  const matchers = patterns.map(globToRegExp);
  const found: string[] = [];
  const walk = async (dir: string, prefix: string): Promise<void> => {
    for (const entry of await readdir(dir, { withFileTypes: true })) {
      if (entry.name.startsWith('.') || entry.name.endsWith('.partial')) continue;
      const rel = prefix + entry.name;
      if (entry.isDirectory()) await walk(join(dir, entry.name), `${rel}/`);
      else if (entry.isFile() && matchers.some((m) => m.test(rel))) found.push(rel);
    }
  };
  await walk(root, '');
  return found.sort();
}
