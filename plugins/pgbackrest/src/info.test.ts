import { describe, expect, it } from 'vitest';
import { parseInfo, parseJsonBigIntSafe, quoteBigIntegers } from './info.js';
import { planExpire } from './retention.js';
import type { InfoBackup } from './info.js';

// A real `pgbackrest info --output=json` of this test harness (system id > 2^53).
const REAL = '[{"archive":[{"database":{"id":1,"repo-key":1},"id":"15-1","max":"000000010000000000000004","min":"000000010000000000000001"}],"backup":[{"archive":{"start":"000000010000000000000003","stop":"000000010000000000000004"},"backrest":{"format":5,"version":"2.45"},"database":{"id":1,"repo-key":1},"error":false,"info":{"delta":22988177,"repository":{"delta":3042152,"size":3042152},"size":22988177},"label":"20261202-011928F","lsn":{"start":"0/3000028","stop":"0/4000050"},"prior":null,"reference":null,"timestamp":{"start":1796174368,"stop":1796174370},"type":"full"}],"cipher":"none","db":[{"id":1,"repo-key":1,"system-id":7714510157116286372,"version":"15"}],"name":"main","repo":[{"cipher":"none","key":1,"status":{"code":0,"message":"ok"}}],"status":{"code":0,"lock":{"backup":{"held":false}},"message":"ok"}}]';

describe('bigint-safe info parsing', () => {
  it('keeps a real 64-bit system id exact (JSON.parse would round it)', () => {
    expect(String((JSON.parse(REAL) as Array<{ db: Array<{ 'system-id': number }> }>)[0]!.db[0]!['system-id'])).not.toBe('7714510157116286372');
    const info = parseInfo(REAL, 'main');
    expect(info.db[0]!['system-id']).toBe('7714510157116286372');
    expect(info.backup[0]!.info.size).toBe(22988177); // safe integers stay numbers
  });
  it.each([
    ['{"a":"7714510157116286372"}', { a: '7714510157116286372' }], // inside a string: untouched
    ['{"a":"x\\"9007199254740993"}', { a: 'x"9007199254740993' }], // escaped quote inside a string
    ['[9007199254740991,9007199254740993,-9007199254740993]', [9007199254740991, '9007199254740993', '-9007199254740993']],
    ['{"f":1.5e3,"n":null}', { f: 1500, n: null }],
  ])('%s', (text, expected) => {
    expect(parseJsonBigIntSafe(text)).toEqual(expected);
  });
  it('quotes only what needs it', () => expect(quoteBigIntegers('{"a":12,"b":18446744073709551615}')).toBe('{"a":12,"b":"18446744073709551615"}'));
});

const b = (label: string, stop: number, type: InfoBackup['type'], prior: string | null = null, reference: string[] = []): InfoBackup =>
  ({ label, type, prior, reference, timestamp: { start: stop - 1, stop }, archive: { start: null, stop: null }, info: { size: 1, delta: 1, repository: { size: 1, delta: 1 } }, database: { id: 1 } }) as InfoBackup;

describe('planExpire', () => {
  const F1 = b('F1', 10, 'full');
  const D1 = b('D1', 20, 'diff', 'F1', ['F1']);
  const I1 = b('I1', 30, 'incr', 'D1', ['F1', 'D1']);
  const F2 = b('F2', 40, 'full');
  it('expires what no set needs, keeps what a kept backup builds on', () => {
    const plan = planExpire([F1, D1, I1, F2], new Map([['F2', ['s4']]]));
    expect(plan.expire.map((e) => e.id)).toEqual(['F1', 'D1', 'I1']);
    const kept = planExpire([F1, D1, I1, F2], new Map([['I1', ['s3']], ['F2', ['s4']]]));
    expect(kept.expire).toEqual([]);
  });
  it('never expires newer backups than the newest recorded one, nor anything when no set records a backup', () => {
    expect(planExpire([F1, D1, I1, F2], new Map([['F1', ['s1']]])).expire).toEqual([]);
    expect(planExpire([F1, F2], new Map()).expire).toEqual([]);
  });
});
