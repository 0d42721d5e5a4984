/**
 * "Tables done of total" for the dump's progress: pg_dump runs one `COPY schema.table … TO stdout`
 * per table, visible in pg_stat_activity under our application name. A poller notes each table
 * it sees being copied; the count of tables seen (those finished, plus the ones in progress) over
 * the number of user tables is the progress. Advisory only: a failed poll is ignored.
 */
import { psql, type PgSource, type RunContext } from '@backup-pipeline/core';

/** `COPY public.accounts (id, username) TO stdout;` → `public.accounts` (quotes removed). */
export function copiedTable(query: string): string | undefined {
  const m = /^COPY\s+((?:"(?:[^"]|"")+"|[^\s.(]+)\.(?:"(?:[^"]|"")+"|[^\s(]+))\s*(?:\(|TO\b)/i.exec(query.trim());
  return m ? m[1]!.replace(/"((?:[^"]|"")+)"/g, (_, name: string) => name.replace(/""/g, '"')) : undefined;
}

const USER_TABLES = `SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
  WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'`;
const COPIES = `SELECT query FROM pg_stat_activity
  WHERE datname = current_database() AND application_name = 'backup-pipeline' AND pid <> pg_backend_pid() AND query ILIKE 'COPY %TO stdout%'`;

export interface TableProgress {
  /** Stops polling and reports the dump complete (every table done) when `finished`. */
  stop(finished: boolean): Promise<void>;
}

export function watchTables(source: PgSource, ctx: Pick<RunContext, 'progress' | 'secrets'>, psqlPath: string, intervalMs = 500): TableProgress {
  const seen = new Set<string>();
  let total: number | undefined;
  let stopped = false;
  let wake: (() => void) | undefined;
  const options = { secrets: ctx.secrets, psqlPath };
  const loop = (async () => {
    total = Number((await psql(source, USER_TABLES, options).catch(() => [['']]))[0]?.[0]) || undefined;
    while (!stopped) {
      const rows = await psql(source, COPIES, options).catch(() => []);
      const before = seen.size;
      for (const [query] of rows) {
        const table = query ? copiedTable(query) : undefined;
        if (table) seen.add(table);
      }
      if (seen.size > before) ctx.progress({ task: 'dump', done: seen.size, total, message: [...seen].at(-1) });
      // stop() may have come while the query ran: check before sleeping, and let stop() cut the sleep short.
      if (stopped) break;
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, intervalMs);
        wake = () => {
          clearTimeout(timer);
          resolve();
        };
      });
    }
  })();
  return {
    async stop(finished) {
      stopped = true;
      wake?.();
      await loop;
      if (finished && total !== undefined) ctx.progress({ task: 'dump', done: total, total, message: 'all tables' });
    },
  };
}
