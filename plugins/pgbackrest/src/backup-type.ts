/** Which backup type a run makes: the configured type, or the weekly rule's type for the run's day. */
import { WEEKDAYS, type PgbackrestOptions } from './options.js';

export type BackupType = 'full' | 'diff' | 'incr';

/** The run's weekday in `timezone` (an IANA name), lower case. */
export function weekdayIn(date: Date, timezone: string): (typeof WEEKDAYS)[number] {
  const name = new Intl.DateTimeFormat('en-US', { weekday: 'long', timeZone: timezone }).format(date).toLowerCase();
  return name as (typeof WEEKDAYS)[number];
}

export function backupTypeFor(type: PgbackrestOptions['type'], startedAt: Date, timezone: string): BackupType {
  if (typeof type === 'string') return type;
  return weekdayIn(startedAt, timezone) === type.full ? 'full' : type.otherwise;
}
