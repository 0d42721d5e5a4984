/**
 * The retention policy's safety rules at their edges: instants exactly at `now` and exactly at the
 * grace period, ties, several verified sets. Written against surviving mutants (npm run mutation).
 */
import { describe, expect, it } from 'vitest';
import { decideRetention, type PolicySet, type RetentionDecision } from './retention-policy.js';

const H = 3_600_000;
const NOW = new Date('2026-11-25T12:00:00Z');
const at = (hoursBeforeNow: number) => new Date(NOW.getTime() - hoursBeforeNow * H);
const set = (id: string, hoursBeforeNow: number, extra: Partial<PolicySet> = {}): PolicySet => ({ id, time: at(hoursBeforeNow), complete: true, ...extra });
const byId = (decisions: RetentionDecision[]) => Object.fromEntries(decisions.map((d) => [d.id, { action: d.action, reasons: d.reasons }]));

describe('decideRetention edges', () => {
  it('a complete set dated exactly now is not "in the future" and fills a keepLast slot', () => {
    const out = byId(decideRetention([set('c', 48), set('b', 24), set('a', 0)], { keepLast: 2 }, { now: NOW }));
    expect(out).toEqual({
      a: { action: 'keep', reasons: ['newest complete set', 'last 1/2'] },
      b: { action: 'keep', reasons: ['last 2/2'] },
      c: { action: 'delete', reasons: ['not kept by any rule of the policy'] },
    });
  });

  it('an incomplete set dated exactly now is within its grace period', () => {
    const out = byId(decideRetention([set('old', 48), set('new', 0, { complete: false })], {}, { now: NOW }));
    expect(out.new).toEqual({ action: 'keep', reasons: ['incomplete, 0 h old: within the 24 h grace period'] });
  });

  it('an incomplete set exactly as old as the grace period is deleted', () => {
    const out = byId(decideRetention([set('good', 1), set('partial', 24, { complete: false })], {}, { now: NOW }));
    expect(out.partial).toEqual({ action: 'delete', reasons: ['incomplete (interrupted run), 24 h old'] });
    expect(out.good!.action).toBe('keep');
  });

  it('the grace period counts from modifiedAt when given', () => {
    const out = byId(decideRetention([set('good', 1), set('partial', 100, { complete: false, modifiedAt: at(2) })], { incompleteGraceHours: 3 }, { now: NOW }));
    expect(out.partial).toEqual({ action: 'keep', reasons: ['incomplete, 2 h old: within the 3 h grace period'] });
  });

  it('a young complete set that no rule keeps is deleted as "not kept", not treated as incomplete', () => {
    const out = byId(decideRetention([set('young', 2), set('newest', 1)], {}, { now: NOW }));
    expect(out.young).toEqual({ action: 'delete', reasons: ['not kept by any rule of the policy'] });
  });

  it('keeps the newest of several verified sets, and no other for being verified', () => {
    const sets = [set('v1', 40, { verified: true }), set('v2', 30, { verified: true }), set('v3', 20, { verified: true }), set('plain', 10)];
    const out = byId(decideRetention(sets, {}, { now: NOW }));
    expect(out).toEqual({
      v1: { action: 'delete', reasons: ['not kept by any rule of the policy'] },
      v2: { action: 'delete', reasons: ['not kept by any rule of the policy'] },
      v3: { action: 'keep', reasons: ['newest verified set'] },
      plain: { action: 'keep', reasons: ['newest complete set'] },
    });
  });

  it('an unverified set is not kept as "newest verified"', () => {
    const out = byId(decideRetention([set('a', 30), set('v', 20, { verified: true }), set('b', 10)], {}, { now: NOW }));
    expect(out.a).toEqual({ action: 'delete', reasons: ['not kept by any rule of the policy'] });
  });

  it('sets with the same instant are ordered by id, and the last by id is the newest', () => {
    const time = at(5);
    const sets: PolicySet[] = [
      { id: 'same-b', time, complete: true },
      { id: 'same-a', time, complete: true },
    ];
    const out = decideRetention(sets, {}, { now: NOW });
    expect(out.map((d) => [d.id, d.action])).toEqual([
      ['same-a', 'delete'],
      ['same-b', 'keep'],
    ]);
  });
  it('the newest complete set that is also verified is kept once, as the newest complete set', () => {
    const out = byId(decideRetention([set('old', 30, { verified: true }), set('newest', 10, { verified: true })], {}, { now: NOW }));
    expect(out.newest).toEqual({ action: 'keep', reasons: ['newest complete set'] });
    expect(out.old!.action).toBe('delete');
  });

  it('a damaged set is kept for a person, whatever its age, and fills no keep slot', () => {
    const out = byId(decideRetention([set('damaged', 1000, { complete: false, damaged: true }), set('good', 20), set('newest', 10)], { keepLast: 2 }, { now: NOW }));
    expect(out.damaged).toEqual({ action: 'keep', reasons: ['damaged: kept for a person to inspect'] });
    expect(out.good).toEqual({ action: 'keep', reasons: ['last 2/2'] });
  });

  it('an incomplete set dated in the future is kept for that reason only (no grace arithmetic)', () => {
    const out = byId(decideRetention([set('good', 10), set('future', -5, { complete: false })], {}, { now: NOW }));
    expect(out.future).toEqual({ action: 'keep', reasons: ['dated in the future'] });
  });
});
