/** The secrets registry, table-driven: what is registered, what `has`, `mask` and `maskDeep` see. */
import { describe, expect, it } from 'vitest';
import { MASK, SecretRegistry } from './secrets.js';

const registry = (...values: Array<string | undefined | null>) => {
  const secrets = new SecretRegistry();
  for (const v of values) secrets.add(v);
  return secrets;
};

describe('SecretRegistry.add', () => {
  it.each([
    ['an empty string', '', 0],
    ['undefined', undefined, 0],
    ['null', null, 0],
    ['a plain value (no JSON or URL form of its own)', 'hunter2', 1],
    ['a value with a quote (JSON form, JSON form escaped again, URL form)', 'a"b', 4],
    ['a value with a space (URL form only)', 'a b', 2],
    ['a value with a newline (JSON form, JSON form escaped again, URL form)', 'a\nb', 4],
  ])('registers %s', (_label, value, size) => {
    expect(registry(value).size).toBe(size);
  });

  it('masks nothing after registering an empty value', () => {
    const secrets = registry('', undefined, null);
    expect(secrets.mask('abc')).toBe('abc');
    expect(secrets.has('abc')).toBe(false);
  });
});

describe('SecretRegistry.has', () => {
  it.each([
    ['the raw value', 'pw=p@ss word"x', true],
    ['its JSON-escaped form', JSON.stringify({ pw: 'p@ss word"x' }), true],
    ['its URL-encoded form', `postgres://u:${encodeURIComponent('p@ss word"x')}@h/db`, true],
    ['a text without it', 'p@ss word', false],
    ['an empty text', '', false],
  ])('finds %s: %s', (_label, text, found) => {
    expect(registry('p@ss word"x').has(text)).toBe(found);
  });

  it('finds nothing in an empty registry', () => {
    expect(new SecretRegistry().has('anything')).toBe(false);
  });
});

describe('SecretRegistry.mask', () => {
  it.each([
    ['raw', 'token p@ss word"x end', `token ${MASK} end`],
    ['JSON-escaped', JSON.stringify({ pw: 'p@ss word"x' }), `{"pw":"${MASK}"}`],
    ['URL-encoded', `postgres://u:${encodeURIComponent('p@ss word"x')}@h/db`, `postgres://u:${MASK}@h/db`],
    ['JSON-escaped inside a JSON line (escaped twice)', JSON.stringify({ msg: `leak ${JSON.stringify('p@ss word"x').slice(1, -1)}` }), `{"msg":"leak ${MASK}"}`],
    ['absent', 'nothing here', 'nothing here'],
    ['empty', '', ''],
  ])('masks the %s form', (_label, text, expected) => {
    expect(registry('p@ss word"x').mask(text)).toBe(expected);
  });

  it('returns the text unchanged with no secrets registered', () => {
    expect(new SecretRegistry().mask('p@ss')).toBe('p@ss');
  });

  it.each([
    ['a set id', 'restored 20261201T014500Z-mastodon into db', 'restored 20261201T014500Z-mastodon into db'],
    ['a set id with milliseconds, twice, around masked text', '20261201T014500123Z-mastodon mastodon 20261202T014500Z-mastodon', `20261201T014500123Z-mastodon ${MASK} 20261202T014500Z-mastodon`],
    ['a path after a set id', 'folder/20261201T014500Z-mastodon/mastodon_production.dump', `folder/20261201T014500Z-mastodon/${MASK}_production.dump`],
    ['text that only looks like an id', '2026-12-01 mastodon', `2026-12-01 ${MASK}`],
  ])('keeps set ids whole when a weak password equals the source: %s', (_label, text, expected) => {
    expect(registry('mastodon').mask(text)).toBe(expected);
  });
});

describe('SecretRegistry.maskDeep', () => {
  it('masks every string inside a JSON value and keeps its shape', () => {
    const secrets = registry('s3cr"et');
    const value = { a: 's3cr"et', list: ['x s3cr"et y', 1, true, null], nested: { url: `u:${encodeURIComponent('s3cr"et')}@h` } };
    expect(secrets.maskDeep(value)).toEqual({ a: MASK, list: [`x ${MASK} y`, 1, true, null], nested: { url: `u:${MASK}@h` } });
    expect(value.a).toBe('s3cr"et'); // the input is not changed
  });

  it('returns the same object when no secret is registered', () => {
    const value = { a: 1 };
    expect(new SecretRegistry().maskDeep(value)).toBe(value);
  });

  it('returns a copy when a secret is registered, even if nothing matched', () => {
    const value = { a: 1 };
    const out = registry('zzz').maskDeep(value);
    expect(out).toEqual(value);
    expect(out).not.toBe(value);
  });
});

describe('SecretRegistry.isSecret', () => {
  it.each([
    ['the value itself', 'p@ss word"x', true],
    ['its JSON-escaped form', JSON.stringify('p@ss word"x').slice(1, -1), true],
    ['its URL-encoded form', encodeURIComponent('p@ss word"x'), true],
    ['a text containing it', 'pw p@ss word"x', false],
    ['a part of it', 'p@ss', false],
    ['the empty string', '', false],
  ])('%s → %s', (_label, value, expected) => {
    expect(registry('p@ss word"x').isSecret(value)).toBe(expected);
  });
});

describe('overlapping secrets', () => {
  it.each([
    ['short first', ['abc', 'abcdef']],
    ['long first', ['abcdef', 'abc']],
    ['three, mixed', ['bcd', 'abcdefg', 'abcd']],
  ])('masks the longest whole (%s)', (_label, values) => {
    const secrets = registry(...values);
    expect(secrets.mask('xabcdefgx abcdef abc')).toBe(values.includes('abcdefg') ? `x${MASK}x ${MASK}ef abc` : `x${MASK}gx ${MASK} ${MASK}`);
  });
});
