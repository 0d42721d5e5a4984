/**
 * The retention policy, as pure logic: which backup sets to keep and which to delete, and why.
 *
 * Grandfather-father-son like restic's and borg's `forget`/`prune`: for each rule (last, daily,
 * weekly, monthly, yearly) walk the complete sets newest → oldest and keep the newest set of each
 * of the N most recent distinct calendar buckets that hold a set. A set kept by any rule is kept.
 * Buckets are calendar days, ISO weeks, months and years in a configurable IANA time zone, computed
 * with `Intl.DateTimeFormat` from each set's instant, so DST changes and month ends need no special
 * cases: a set at 00:30 local time on 27 October belongs to 27 October whatever the UTC offset.
 *
 * Safety rules, applied before the buckets:
 * - only complete sets (valid manifest, every artifact present with its size) count as backups
 *   and fill buckets;
 * - damaged sets (a manifest that cannot be read, a missing or wrong-sized artifact) are never
 *   deleted by the policy: they are kept and reported, so a person looks at them;
 * - the newest complete set is never deleted (even with an empty policy, even when the clock is
 *   earlier than that set's time), nor is the newest complete *verified* set;
 * - sets dated in the future relative to `now` are kept and fill no bucket (a wrong clock must
 *   never cost a backup);
 * - incomplete sets younger than `incompleteGraceHours` may still be being written: kept; older
 *   ones are leftovers of interrupted runs: deleted;
 * - ids in `protect` (the set of the current run) are always kept.
 */

export interface RetentionPolicy {
  /** Keep the N newest complete sets. */
  keepLast?: number;
  /** Keep the newest set of each of the N most recent days that hold a set. */
  keepDaily?: number;
  /** … of each of the N most recent ISO weeks (Monday–Sunday). */
  keepWeekly?: number;
  /** … of each of the N most recent calendar months. */
  keepMonthly?: number;
  /** … of each of the N most recent calendar years. */
  keepYearly?: number;
  /** Incomplete sets older than this many hours are deleted (default 24). */
  incompleteGraceHours?: number;
}

export interface PolicySet {
  id: string;
  /** When the set was made (from its id). */
  time: Date;
  /** It has a valid manifest and every artifact it lists. */
  complete: boolean;
  /** It has a manifest but is not complete (unreadable manifest, missing or wrong-sized artifact). Never deleted by the policy. */
  damaged?: boolean;
  /** Its manifest says it was verified. */
  verified?: boolean;
  /** Last write seen by the destination (age of an incomplete set); defaults to `time`. */
  modifiedAt?: Date;
}

export interface RetentionDecision {
  id: string;
  time: Date;
  action: 'keep' | 'delete';
  /** Why: `daily 2026-11-24`, `weekly 2026-W48`, `last 2/7`, `newest complete set`… Never empty. */
  reasons: string[];
}

export interface RetentionOptions {
  now: Date;
  /** IANA time zone of the calendar buckets (default UTC). */
  timezone?: string;
  /** Set ids that are always kept (the current run's set). */
  protect?: readonly string[];
}

export const DEFAULT_INCOMPLETE_GRACE_HOURS = 24;

export type BucketKind = 'daily' | 'weekly' | 'monthly' | 'yearly';

const BUCKET_RULES: ReadonlyArray<[BucketKind, keyof RetentionPolicy]> = [
  ['daily', 'keepDaily'],
  ['weekly', 'keepWeekly'],
  ['monthly', 'keepMonthly'],
  ['yearly', 'keepYearly'],
];

const formatters = new Map<string, Intl.DateTimeFormat>();

/** The calendar date of an instant in a time zone. Throws RangeError for an unknown zone. */
export function localDate(time: Date, timezone: string): { year: number; month: number; day: number } {
  let f = formatters.get(timezone);
  if (!f) {
    f = new Intl.DateTimeFormat('en-US', { timeZone: timezone, year: 'numeric', month: 'numeric', day: 'numeric', calendar: 'gregory', numberingSystem: 'latn' });
    formatters.set(timezone, f);
  }
  const parts = Object.fromEntries(f.formatToParts(time).map((p) => [p.type, p.value]));
  return { year: Number(parts.year), month: Number(parts.month), day: Number(parts.day) };
}

/** ISO 8601 week-numbering year and week of a calendar date. */
export function isoWeek(year: number, month: number, day: number): { year: number; week: number } {
  const DAY = 86_400_000;
  const date = Date.UTC(year, month - 1, day);
  const weekday = (new Date(date).getUTCDay() + 6) % 7; // Monday = 0
  const thursday = new Date(date + (3 - weekday) * DAY); // the week belongs to its Thursday's year
  const weekYear = thursday.getUTCFullYear();
  const week = 1 + Math.floor((thursday.getTime() - Date.UTC(weekYear, 0, 1)) / (7 * DAY));
  return { year: weekYear, week };
}

const pad = (n: number, width = 2) => String(n).padStart(width, '0');

/** The bucket label of an instant: `2026-11-24`, `2026-W48`, `2026-11`, `2026`. */
export function bucketOf(kind: BucketKind, time: Date, timezone: string): string {
  const { year, month, day } = localDate(time, timezone);
  switch (kind) {
    case 'daily':
      return `${pad(year, 4)}-${pad(month)}-${pad(day)}`;
    case 'weekly': {
      const w = isoWeek(year, month, day);
      return `${pad(w.year, 4)}-W${pad(w.week)}`;
    }
    case 'monthly':
      return `${pad(year, 4)}-${pad(month)}`;
    case 'yearly':
      return pad(year, 4);
  }
}

/** Whether the policy keeps anything by itself (beyond the safety rules). */
export function policyKeepsAnything(policy: RetentionPolicy): boolean {
  return [policy.keepLast, ...BUCKET_RULES.map(([, key]) => policy[key])].some((n) => (n ?? 0) > 0);
}

function count(policy: RetentionPolicy, key: keyof RetentionPolicy): number {
  const n = policy[key] ?? 0;
  if (!Number.isInteger(n) || n < 0) throw new RangeError(`${key} must be a whole number ≥ 0 (got ${n})`);
  return n;
}

/**
 * Decides, for every set, keep or delete with the reasons. Returns one decision per input set,
 * oldest first (ties by id).
 */
export function decideRetention(sets: readonly PolicySet[], policy: RetentionPolicy, options: RetentionOptions): RetentionDecision[] {
  const timezone = options.timezone ?? 'UTC';
  localDate(new Date(0), timezone); // fail early on an unknown zone
  const now = options.now.getTime();
  const graceMs = (policy.incompleteGraceHours ?? DEFAULT_INCOMPLETE_GRACE_HOURS) * 3_600_000;
  const protect = new Set(options.protect ?? []);
  const ordered = [...sets].sort((a, b) => a.time.getTime() - b.time.getTime() || a.id.localeCompare(b.id));
  const reasons = new Map<string, string[]>(ordered.map((s) => [s.id, []]));
  const keep = (s: PolicySet, reason: string) => reasons.get(s.id)!.push(reason);
  const deleteReason = new Map<string, string>();

  const complete = ordered.filter((s) => s.complete);
  const newestComplete = complete.at(-1);
  const newestVerified = complete.filter((s) => s.verified).at(-1);

  for (const s of ordered) {
    if (protect.has(s.id)) keep(s, 'current run');
    if (s.time.getTime() > now) keep(s, 'dated in the future');
    if (s === newestComplete) keep(s, 'newest complete set');
    if (s === newestVerified && s !== newestComplete) keep(s, 'newest verified set');
    if (!s.complete && s.damaged) keep(s, 'damaged: kept for a person to inspect');
    else if (!s.complete && s.time.getTime() <= now) {
      const age = now - (s.modifiedAt ?? s.time).getTime();
      const hours = Math.floor(age / 3_600_000);
      if (age < graceMs) keep(s, `incomplete, ${hours} h old: within the ${graceMs / 3_600_000} h grace period`);
      else deleteReason.set(s.id, `incomplete (interrupted run), ${hours} h old`);
    }
  }

  // Only complete sets that are not in the future fill the buckets, newest first.
  const candidates = complete.filter((s) => s.time.getTime() <= now).reverse();
  const last = count(policy, 'keepLast');
  candidates.slice(0, last).forEach((s, i) => keep(s, `last ${i + 1}/${last}`));
  for (const [kind, key] of BUCKET_RULES) {
    let remaining = count(policy, key);
    const seen = new Set<string>();
    for (const s of candidates) {
      if (remaining === 0) break;
      const bucket = bucketOf(kind, s.time, timezone);
      if (seen.has(bucket)) continue;
      seen.add(bucket);
      keep(s, `${kind} ${bucket}`);
      remaining--;
    }
  }

  return ordered.map((s) => {
    const why = reasons.get(s.id)!;
    if (why.length > 0) return { id: s.id, time: s.time, action: 'keep', reasons: why };
    return { id: s.id, time: s.time, action: 'delete', reasons: [deleteReason.get(s.id) ?? 'not kept by any rule of the policy'] };
  });
}
