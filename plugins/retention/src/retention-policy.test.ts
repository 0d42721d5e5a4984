import { describe, expect, it } from 'vitest';
import { bucketOf, decideRetention, isoWeek, policyKeepsAnything, type PolicySet, type RetentionPolicy } from './retention-policy.js';

/** `2026-03-29T00:30Z` → a set whose id and time are that instant. Flags: `i` incomplete, `v` verified. */
function set(iso: string, flags = ''): PolicySet {
  const time = new Date(iso);
  return { id: `${time.toISOString().replace(/[-:]/g, '').replace(/\.\d+Z$/, 'Z')}-db`, time, complete: !flags.includes('i'), verified: flags.includes('v') };
}

interface Case {
  name: string;
  timezone?: string;
  now: string;
  policy: RetentionPolicy;
  sets: Array<string | [string, string]>;
  /** Instants of the sets that must survive. */
  keep: string[];
  /** Expected reasons of some sets (by instant). */
  reasons?: Record<string, string[]>;
  protect?: string[];
}

const cases: Case[] = [
  {
    name: 'empty policy keeps only the newest complete set',
    now: '2026-11-25T12:00:00Z',
    policy: {},
    sets: ['2026-11-22T01:00:00Z', '2026-11-23T01:00:00Z', '2026-11-24T01:00:00Z'],
    keep: ['2026-11-24T01:00:00Z'],
    reasons: { '2026-11-24T01:00:00Z': ['newest complete set'], '2026-11-23T01:00:00Z': ['not kept by any rule of the policy'] },
  },
  {
    name: 'keepLast 0 still keeps the newest complete set',
    now: '2026-11-25T12:00:00Z',
    policy: { keepLast: 0, keepDaily: 0 },
    sets: ['2026-11-23T01:00:00Z', '2026-11-24T01:00:00Z'],
    keep: ['2026-11-24T01:00:00Z'],
  },
  {
    name: 'keepLast counts complete sets only',
    now: '2026-11-25T12:00:00Z',
    policy: { keepLast: 2 },
    sets: ['2026-11-21T01:00:00Z', '2026-11-22T01:00:00Z', ['2026-11-23T01:00:00Z', 'i'], '2026-11-24T01:00:00Z'],
    keep: ['2026-11-22T01:00:00Z', '2026-11-24T01:00:00Z'],
    reasons: { '2026-11-24T01:00:00Z': ['newest complete set', 'last 1/2'], '2026-11-22T01:00:00Z': ['last 2/2'] },
  },
  {
    name: 'keepDaily keeps the newest set of each day',
    now: '2026-11-25T12:00:00Z',
    policy: { keepDaily: 2 },
    sets: ['2026-11-22T23:00:00Z', '2026-11-23T01:00:00Z', '2026-11-23T13:00:00Z', '2026-11-24T01:00:00Z', '2026-11-24T02:00:00Z'],
    keep: ['2026-11-23T13:00:00Z', '2026-11-24T02:00:00Z'],
    reasons: { '2026-11-23T13:00:00Z': ['daily 2026-11-23'] },
  },
  {
    name: 'daily buckets skip days without a set (N most recent days that hold one)',
    now: '2026-11-25T12:00:00Z',
    policy: { keepDaily: 3 },
    sets: ['2026-11-01T01:00:00Z', '2026-11-10T01:00:00Z', '2026-11-11T01:00:00Z', '2026-11-24T01:00:00Z'],
    keep: ['2026-11-10T01:00:00Z', '2026-11-11T01:00:00Z', '2026-11-24T01:00:00Z'],
  },
  {
    name: 'DST starts (Europe/Berlin, Sunday 29 March 2026): days follow local midnight',
    timezone: 'Europe/Berlin',
    now: '2026-04-01T00:00:00Z',
    policy: { keepDaily: 3 },
    // 23:30Z on the 27th = 00:30 CET on the 28th; 23:30Z on the 28th = 00:30 CET on the 29th;
    // 21:59Z on the 29th = 23:59 CEST on the 29th; 22:30Z on the 29th = 00:30 CEST on the 30th.
    sets: ['2026-03-27T23:30:00Z', '2026-03-28T23:30:00Z', '2026-03-29T21:59:00Z', '2026-03-29T22:30:00Z'],
    keep: ['2026-03-27T23:30:00Z', '2026-03-29T21:59:00Z', '2026-03-29T22:30:00Z'],
    reasons: { '2026-03-27T23:30:00Z': ['daily 2026-03-28'], '2026-03-29T21:59:00Z': ['daily 2026-03-29'], '2026-03-29T22:30:00Z': ['newest complete set', 'daily 2026-03-30'] },
  },
  {
    name: 'the same sets in UTC fall in other days',
    timezone: 'UTC',
    now: '2026-04-01T00:00:00Z',
    policy: { keepDaily: 3 },
    sets: ['2026-03-27T23:30:00Z', '2026-03-28T23:30:00Z', '2026-03-29T21:59:00Z', '2026-03-29T22:30:00Z'],
    keep: ['2026-03-27T23:30:00Z', '2026-03-28T23:30:00Z', '2026-03-29T22:30:00Z'],
  },
  {
    name: 'DST ends (Europe/Berlin, Sunday 25 October 2026): the repeated hour stays in one day',
    timezone: 'Europe/Berlin',
    now: '2026-10-27T00:00:00Z',
    policy: { keepDaily: 2 },
    // 00:30 CEST, 02:30 CEST, 02:30 CET (repeated), 23:59 CET on the 25th; 00:00 CET on the 26th.
    sets: ['2026-10-24T22:30:00Z', '2026-10-25T00:30:00Z', '2026-10-25T01:30:00Z', '2026-10-25T22:59:00Z', '2026-10-25T23:00:00Z'],
    keep: ['2026-10-25T22:59:00Z', '2026-10-25T23:00:00Z'],
    reasons: { '2026-10-25T22:59:00Z': ['daily 2026-10-25'], '2026-10-25T23:00:00Z': ['newest complete set', 'daily 2026-10-26'] },
  },
  {
    name: 'DST ends: hourly sets across the repeated hour, keepLast orders by instant',
    timezone: 'Europe/Berlin',
    now: '2026-10-27T00:00:00Z',
    policy: { keepLast: 2 },
    sets: ['2026-10-25T00:00:00Z', '2026-10-25T00:30:00Z', '2026-10-25T01:00:00Z', '2026-10-25T01:30:00Z'],
    keep: ['2026-10-25T01:00:00Z', '2026-10-25T01:30:00Z'],
  },
  {
    name: 'month end in Berlin: 23:30Z on 31 January is 1 February',
    timezone: 'Europe/Berlin',
    now: '2026-03-01T00:00:00Z',
    policy: { keepMonthly: 2 },
    sets: ['2026-01-15T12:00:00Z', '2026-01-31T22:30:00Z', '2026-01-31T23:30:00Z', '2026-02-27T12:00:00Z'],
    keep: ['2026-01-31T22:30:00Z', '2026-02-27T12:00:00Z'],
    reasons: { '2026-01-31T22:30:00Z': ['monthly 2026-01'] },
  },
  {
    name: 'month end in UTC: the same sets',
    timezone: 'UTC',
    now: '2026-03-01T00:00:00Z',
    policy: { keepMonthly: 2 },
    sets: ['2026-01-15T12:00:00Z', '2026-01-31T22:30:00Z', '2026-01-31T23:30:00Z', '2026-02-27T12:00:00Z'],
    keep: ['2026-01-31T23:30:00Z', '2026-02-27T12:00:00Z'],
  },
  {
    name: 'leap day and a zone west of UTC (America/New_York)',
    timezone: 'America/New_York',
    now: '2028-03-10T00:00:00Z',
    policy: { keepDaily: 2, keepMonthly: 2 },
    // 02:00Z on 1 March = 21:00 EST on 29 February.
    sets: ['2028-02-28T12:00:00Z', '2028-02-29T12:00:00Z', '2028-03-01T02:00:00Z', '2028-03-01T06:00:00Z'],
    keep: ['2028-03-01T02:00:00Z', '2028-03-01T06:00:00Z'],
    reasons: { '2028-03-01T02:00:00Z': ['daily 2028-02-29', 'monthly 2028-02'], '2028-03-01T06:00:00Z': ['newest complete set', 'daily 2028-03-01', 'monthly 2028-03'] },
  },
  {
    name: 'year boundary: New Year in Tokyo comes 9 hours before UTC',
    timezone: 'Asia/Tokyo',
    now: '2027-02-01T00:00:00Z',
    policy: { keepYearly: 3 },
    sets: ['2025-06-01T00:00:00Z', '2025-12-31T14:00:00Z', '2025-12-31T16:00:00Z', '2026-12-31T14:59:00Z', '2026-12-31T15:00:00Z'],
    keep: ['2025-12-31T14:00:00Z', '2026-12-31T14:59:00Z', '2026-12-31T15:00:00Z'],
    reasons: { '2025-12-31T14:00:00Z': ['yearly 2025'], '2026-12-31T14:59:00Z': ['yearly 2026'], '2026-12-31T15:00:00Z': ['newest complete set', 'yearly 2027'] },
  },
  {
    name: 'ISO week 53 of 2026 spans the new year (28 Dec 2026 – 3 Jan 2027)',
    now: '2027-01-10T00:00:00Z',
    policy: { keepWeekly: 2 },
    sets: ['2026-12-27T12:00:00Z', '2026-12-28T12:00:00Z', '2027-01-03T12:00:00Z', '2027-01-04T12:00:00Z'],
    keep: ['2027-01-03T12:00:00Z', '2027-01-04T12:00:00Z'],
    reasons: { '2027-01-03T12:00:00Z': ['weekly 2026-W53'], '2027-01-04T12:00:00Z': ['newest complete set', 'weekly 2027-W01'] },
  },
  {
    name: 'weekly in Berlin: Sunday 23:30Z is already Monday',
    timezone: 'Europe/Berlin',
    now: '2026-12-01T00:00:00Z',
    policy: { keepWeekly: 2 },
    sets: ['2026-11-15T12:00:00Z', '2026-11-22T22:00:00Z', '2026-11-22T23:30:00Z'],
    keep: ['2026-11-22T22:00:00Z', '2026-11-22T23:30:00Z'],
    reasons: { '2026-11-22T22:00:00Z': ['weekly 2026-W47'], '2026-11-22T23:30:00Z': ['newest complete set', 'weekly 2026-W48'] },
  },
  {
    name: 'clock earlier than the newest set: future sets kept, fill no bucket, newest never deleted',
    now: '2026-11-20T00:00:00Z',
    policy: { keepLast: 1 },
    sets: ['2026-11-18T01:00:00Z', '2026-11-19T01:00:00Z', '2026-11-23T01:00:00Z', '2026-11-24T01:00:00Z'],
    keep: ['2026-11-19T01:00:00Z', '2026-11-23T01:00:00Z', '2026-11-24T01:00:00Z'],
    reasons: { '2026-11-24T01:00:00Z': ['dated in the future', 'newest complete set'], '2026-11-19T01:00:00Z': ['last 1/1'] },
  },
  {
    name: 'clock earlier than every set: nothing is deleted',
    now: '2020-01-01T00:00:00Z',
    policy: { keepLast: 1 },
    sets: ['2026-11-18T01:00:00Z', ['2026-11-19T01:00:00Z', 'i'], '2026-11-24T01:00:00Z'],
    keep: ['2026-11-18T01:00:00Z', '2026-11-19T01:00:00Z', '2026-11-24T01:00:00Z'],
  },
  {
    name: 'incomplete sets: deleted after the grace period, kept within it, never counted',
    now: '2026-11-25T12:00:00Z',
    policy: { keepLast: 1 },
    sets: ['2026-11-23T01:00:00Z', ['2026-11-24T01:00:00Z', 'i'], ['2026-11-25T10:00:00Z', 'i']],
    keep: ['2026-11-23T01:00:00Z', '2026-11-25T10:00:00Z'],
    reasons: { '2026-11-24T01:00:00Z': ['incomplete (interrupted run), 35 h old'], '2026-11-25T10:00:00Z': ['incomplete, 2 h old: within the 24 h grace period'] },
  },
  {
    name: 'incompleteGraceHours 0 deletes every past incomplete set',
    now: '2026-11-25T12:00:00Z',
    policy: { keepLast: 5, incompleteGraceHours: 0 },
    sets: ['2026-11-23T01:00:00Z', ['2026-11-25T11:59:00Z', 'i']],
    keep: ['2026-11-23T01:00:00Z'],
  },
  {
    name: 'no complete set at all: incomplete ones within grace kept, others deleted',
    now: '2026-11-25T12:00:00Z',
    policy: { keepLast: 3 },
    sets: [['2026-11-20T01:00:00Z', 'i'], ['2026-11-25T11:00:00Z', 'i']],
    keep: ['2026-11-25T11:00:00Z'],
  },
  {
    name: 'the newest verified set is kept even when newer unverified sets exist',
    now: '2026-11-25T12:00:00Z',
    policy: { keepLast: 1 },
    sets: [['2026-11-21T01:00:00Z', 'v'], ['2026-11-22T01:00:00Z', 'v'], '2026-11-23T01:00:00Z', '2026-11-24T01:00:00Z'],
    keep: ['2026-11-22T01:00:00Z', '2026-11-24T01:00:00Z'],
    reasons: { '2026-11-22T01:00:00Z': ['newest verified set'] },
  },
  {
    name: 'protected ids (the current run) are kept',
    now: '2026-11-25T12:00:00Z',
    policy: { keepLast: 1 },
    sets: ['2026-11-22T01:00:00Z', '2026-11-23T01:00:00Z', '2026-11-24T01:00:00Z'],
    protect: ['20261122T010000Z-db'],
    keep: ['2026-11-22T01:00:00Z', '2026-11-24T01:00:00Z'],
    reasons: { '2026-11-22T01:00:00Z': ['current run'] },
  },
  {
    name: 'GFS: rules overlap and a set kept by several rules lists every reason',
    now: '2026-12-01T00:00:00Z',
    policy: { keepDaily: 2, keepWeekly: 2, keepMonthly: 2 },
    sets: ['2026-10-15T01:00:00Z', '2026-10-31T01:00:00Z', '2026-11-20T01:00:00Z', '2026-11-26T01:00:00Z', '2026-11-29T01:00:00Z', '2026-11-30T01:00:00Z'],
    keep: ['2026-10-31T01:00:00Z', '2026-11-29T01:00:00Z', '2026-11-30T01:00:00Z'],
    reasons: {
      '2026-11-30T01:00:00Z': ['newest complete set', 'daily 2026-11-30', 'weekly 2026-W49', 'monthly 2026-11'],
      '2026-11-29T01:00:00Z': ['daily 2026-11-29', 'weekly 2026-W48'],
      '2026-10-31T01:00:00Z': ['monthly 2026-10'],
    },
  },
];

describe('decideRetention', () => {
  it.each(cases)('$name', (c) => {
    const sets = c.sets.map((s) => (typeof s === 'string' ? set(s) : set(s[0], s[1])));
    // Input order must not matter.
    const decisions = decideRetention([...sets].reverse(), c.policy, { now: new Date(c.now), timezone: c.timezone, protect: c.protect });
    expect(decisions.map((d) => d.time.toISOString())).toEqual(sets.map((s) => s.time.toISOString()));
    const kept = decisions.filter((d) => d.action === 'keep').map((d) => d.time.toISOString());
    expect(kept).toEqual(c.keep.map((k) => new Date(k).toISOString()));
    for (const d of decisions) expect(d.reasons.length).toBeGreaterThan(0);
    for (const [instant, reasons] of Object.entries(c.reasons ?? {})) {
      expect(decisions.find((d) => d.time.getTime() === new Date(instant).getTime())?.reasons, instant).toEqual(reasons);
    }
  });

  it('rejects an unknown time zone and negative counts', () => {
    expect(() => decideRetention([], { keepLast: 1 }, { now: new Date(), timezone: 'Mars/Olympus' })).toThrow(RangeError);
    expect(() => decideRetention([set('2026-01-01T00:00:00Z')], { keepDaily: -1 }, { now: new Date() })).toThrow(/keepDaily/);
  });
});

describe('calendar buckets', () => {
  it.each([
    [2026, 12, 28, '2026-W53'],
    [2027, 1, 3, '2026-W53'],
    [2027, 1, 4, '2027-W01'],
    [2021, 1, 1, '2020-W53'],
    [2024, 12, 30, '2025-W01'],
    [2026, 1, 1, '2026-W01'],
    [2026, 11, 25, '2026-W48'],
  ])('ISO week of %i-%i-%i is %s', (y, m, d, expected) => {
    const w = isoWeek(y, m, d);
    expect(`${w.year}-W${String(w.week).padStart(2, '0')}`).toBe(expected);
  });

  it.each([
    ['daily', '2026-03-29T00:59:59Z', 'Europe/Berlin', '2026-03-29'],
    ['daily', '2026-10-25T22:00:00Z', 'Europe/Berlin', '2026-10-25'],
    ['daily', '2026-10-25T23:00:00Z', 'Europe/Berlin', '2026-10-26'],
    ['monthly', '2026-04-30T22:00:00Z', 'Europe/Berlin', '2026-05'],
    ['monthly', '2026-04-30T21:59:59Z', 'Europe/Berlin', '2026-04'],
    ['yearly', '2026-12-31T23:00:00Z', 'Europe/Berlin', '2027'],
    ['weekly', '2027-01-03T23:00:00Z', 'Europe/Berlin', '2027-W01'],
    ['daily', '2026-11-01T04:30:00Z', 'America/New_York', '2026-11-01'],
  ] as const)('%s bucket of %s in %s is %s', (kind, instant, tz, expected) => {
    expect(bucketOf(kind, new Date(instant), tz)).toBe(expected);
  });

  it('policyKeepsAnything', () => {
    expect(policyKeepsAnything({})).toBe(false);
    expect(policyKeepsAnything({ keepLast: 0, incompleteGraceHours: 5 })).toBe(false);
    expect(policyKeepsAnything({ keepYearly: 1 })).toBe(true);
  });
});
