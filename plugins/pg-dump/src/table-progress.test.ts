import { describe, expect, it } from 'vitest';
import { copiedTable } from './table-progress.js';

describe('tables being copied, from pg_stat_activity', () => {
  it.each([
    ['COPY public.accounts (id, username, domain) TO stdout;', 'public.accounts'],
    ['COPY public.statuses TO stdout;', 'public.statuses'],
    ['COPY "Weird Schema"."Tab""le" (id) TO stdout;', 'Weird Schema.Tab"le'],
    ['copy public.follows (id) to stdout;', 'public.follows'],
    ['SELECT count(*) FROM public.accounts', undefined],
    ['COPY (SELECT 1) TO stdout;', undefined],
  ])('%s → %s', (query, table) => expect(copiedTable(query)).toBe(table));
});
