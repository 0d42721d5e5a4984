/** The one name check (names.ts) and the set id check (destination.ts), table-driven with hostile names. */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { assertSetId } from './destination.js';
import { makeSetId, parseSetId } from './manifest.js';
import { IDENTIFIER, MAX_NAME_BYTES, assertFileName, nameProblem, pathInSet } from './names.js';

describe('nameProblem', () => {
  it.each([
    ['an empty name', '', 'is empty'],
    ['a non-string', 42, 'is empty'],
    ['undefined', undefined, 'is empty'],
    ['too long (201 ASCII bytes)', 'a'.repeat(MAX_NAME_BYTES + 1), `is longer than ${MAX_NAME_BYTES} bytes`],
    ['too long in UTF-8 bytes (101 × 2 bytes)', 'é'.repeat(101), `is longer than ${MAX_NAME_BYTES} bytes`],
    ['a path', 'a/b.dump', 'contains a slash'],
    ['a parent path', '../../../../tmp/x/PWNED.dump', 'contains a slash'],
    ['an absolute path', '/etc/passwd', 'contains a slash'],
    ['a backslash', 'a\\b', 'contains a slash'],
    ['a trailing slash', 'dir/', 'contains a slash'],
    ['a hidden file', '.env', 'is hidden or a relative path (starts with ".")'],
    ['dot', '.', 'is hidden or a relative path (starts with ".")'],
    ['dot dot', '..', 'is hidden or a relative path (starts with ".")'],
    ['a NUL', 'a\0b', 'contains a control or format character'],
    ['a newline', 'a\nb', 'contains a control or format character'],
    ['DEL', 'a\x7fb', 'contains a control or format character'],
    ['a zero-width joiner', 'a\u200db', 'contains a control or format character'],
    ['a right-to-left override', 'evil\u202egpj.dump', 'contains a control or format character'],
    ['a line separator', 'a\u2028b', 'contains a control or format character'],
    ['a private-use character', 'a\ue000b', 'contains a control or format character'],
    ['a division slash', 'a\u2215b', 'contains a character that looks like a slash or a dot'],
    ['a fullwidth solidus', 'a\uff0fb', 'contains a character that looks like a slash or a dot'],
    ['a fullwidth reverse solidus', 'a\uff3cb', 'contains a character that looks like a slash or a dot'],
    ['a one-dot leader', '\u2024\u2024', 'contains a character that looks like a slash or a dot'],
    ['a fullwidth full stop', 'a\uff0eb', 'contains a character that looks like a slash or a dot'],
    ['a compatibility ligature', 'ﬁle.dump', 'contains compatibility characters (NFKC would change it)'],
    ['a partial file', 'db.dump.partial', 'ends with .partial (a file still being written)'],
    ['leading white space', ' db.dump', 'starts or ends with white space'],
    ['trailing white space', 'db.dump ', 'starts or ends with white space'],
  ])('refuses %s', (_label, name, problem) => {
    expect(nameProblem(name)).toBe(problem);
  });

  it.each([
    ['a plain name', 'mastodon_production.dump.zst.gpg'],
    ['spaces inside', 'dump with spaces.sql'],
    ['unicode letters', 'données été 名前 ✓.tar'],
    ['shell characters', "it's (1) & $HOME;.txt"],
    ['exactly the longest name', 'a'.repeat(MAX_NAME_BYTES)],
    ['the longest name in UTF-8 bytes (100 × 2 bytes)', 'é'.repeat(100)],
    ['a dot inside', 'a.b'],
    ['a name ending in partial without the dot', 'dump-partial'],
    ['a dot-dot inside', 'a..b'],
  ])('accepts %s', (_label, name) => {
    expect(nameProblem(name)).toBeUndefined();
  });
});

describe('assertFileName and pathInSet', () => {
  it('throws NAME_INVALID naming the name and the problem, with a hint', () => {
    expect(() => assertFileName('../x')).toThrow(expect.objectContaining({ code: 'NAME_INVALID', message: '"../x" is not a valid file name in a backup set: it contains a slash' }));
    try {
      assertFileName('.hidden');
    } catch (error) {
      expect((error as { hint?: string }).hint).toMatch(/one path segment/);
    }
  });

  it('accepts a good name silently', () => {
    expect(() => assertFileName('db.dump')).not.toThrow();
  });

  it('joins a good name to the folder, and refuses a hostile one before joining', () => {
    expect(pathInSet('/srv/set', 'db.dump')).toBe(join('/srv/set', 'db.dump'));
    expect(() => pathInSet('/srv/set', '../../etc/passwd')).toThrow(expect.objectContaining({ code: 'NAME_INVALID' }));
  });
});

describe('IDENTIFIER', () => {
  it.each([
    ['zstd', true],
    ['pg-custom', true],
    ['x.y_z+1', true],
    ['A', true],
    ['a'.repeat(64), true],
    ['a'.repeat(65), false],
    ['', false],
    ['-zstd', false],
    ['.zstd', false],
    ['zs td', false],
    ['zstd/../x', false],
    ['zstd\n', false],
  ])('%j → %s', (value, ok) => {
    expect(IDENTIFIER.test(value)).toBe(ok);
  });
});

describe('assertSetId', () => {
  it.each([
    ['..'],
    ['../x'],
    ['not-a-set'],
    [''],
    ['20300101T000000Z-x/../..'],
    ['20300101T000000Z-x.partial'],
    ['20300101T000000Z-.hidden'],
    ['20301301T000000Z-x'],
    ['20300101T000000Z'],
    ['x20300101T000000Z-x'],
  ])('refuses %j with SET_NOT_FOUND', (id) => {
    expect(() => assertSetId(id)).toThrow(expect.objectContaining({ code: 'SET_NOT_FOUND', message: `"${id}" is not a backup set id` }));
  });

  it.each([['20300101T000000Z-x'], ['20300101T000000123Z-mastodon'], ['20261125T014500Z-my_db.prod-1']])('accepts %j', (id) => {
    expect(() => assertSetId(id)).not.toThrow();
  });
});

describe('set ids', () => {
  it.each([
    ['2026-11-25T01:45:00.000Z', 'mastodon', '20261125T014500Z-mastodon'],
    ['2026-11-25T01:45:00.999Z', 'db', '20261125T014500Z-db'],
    ['2030-01-01T00:00:00Z', 'x', '20300101T000000Z-x'],
  ])('makeSetId(%s, %s) is %s, and parseSetId reads it back', (iso, source, id) => {
    expect(makeSetId(new Date(iso), source)).toBe(id);
    expect(parseSetId(id)).toEqual({ time: new Date(iso.replace(/\.\d+Z$/, 'Z').replace(/(:\d\d)Z$/, '$1.000Z')), source });
  });

  it('reads the millisecond form, and nothing that is not a set id', () => {
    expect(parseSetId('20300101T000000123Z-x')).toEqual({ time: new Date('2030-01-01T00:00:00Z'), source: 'x' });
    for (const bad of ['', 'x', '20300101T000000Z', '20300101T000000Z-', '20300101T000000Z-.x', '20300101T000000Z-a/b', '20301301T000000Z-x', ' 20300101T000000Z-x', '20300101T000000Z-x ']) {
      expect(parseSetId(bad), JSON.stringify(bad)).toBeUndefined();
    }
  });
});
