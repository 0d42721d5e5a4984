/**
 * A psql session that holds a repeatable-read transaction open, exports its snapshot for
 * `pg_dump --snapshot=…`, and counts every table's rows inside that same snapshot, so the counts
 * describe exactly the data in the dump even on a busy instance.
 */
import { PassThrough } from 'node:stream';
import { createInterface } from 'node:readline';
import { pgEnv, PipelineError, type ExecProcess, type PgSource, type RunContext } from '@backup-pipeline/core';

const END = '__BP_END_OF_REPLY__';

export class SnapshotSession {
  readonly #stdin = new PassThrough();
  readonly #proc: ExecProcess;
  readonly #lines: string[] = [];
  #waiter: { resolve: () => void; reject: (e: unknown) => void } | undefined;
  #failed: unknown;
  #closed = false;
  snapshot = '';

  private constructor(ctx: Pick<RunContext, 'exec'>, psqlPath: string, source: PgSource) {
    this.#proc = ctx.exec(psqlPath, ['-X', '-q', '-A', '-t', '-F', '\t', '-v', 'ON_ERROR_STOP=1'], {
      env: pgEnv(source),
      stdin: this.#stdin,
      stdout: 'stream',
      label: 'psql (snapshot session)',
    });
    const rl = createInterface({ input: this.#proc.stdout! });
    rl.on('line', (line) => {
      this.#lines.push(line);
      if (line === END) this.#wake();
    });
    this.#proc.then(
      () => this.#fail(new PipelineError('SNAPSHOT_FAILED', 'the snapshot session ended early')),
      (error: unknown) => this.#fail(error),
    );
  }

  #wake(): void {
    const w = this.#waiter;
    this.#waiter = undefined;
    w?.resolve();
  }

  #fail(error: unknown): void {
    if (this.#closed) return;
    this.#failed = error;
    const w = this.#waiter;
    this.#waiter = undefined;
    w?.reject(error);
  }

  /** Sends SQL and psql meta-commands; resolves with the output lines. */
  async #ask(script: string): Promise<string[]> {
    if (this.#failed) throw this.#failed;
    const reply = new Promise<void>((resolve, reject) => (this.#waiter = { resolve, reject }));
    this.#stdin.write(`${script}\n\\echo ${END}\n`);
    await reply;
    const end = this.#lines.indexOf(END);
    return this.#lines.splice(0, end + 1).slice(0, -1);
  }

  static async open(ctx: Pick<RunContext, 'exec'>, psqlPath: string, source: PgSource): Promise<SnapshotSession> {
    const session = new SnapshotSession(ctx, psqlPath, source);
    try {
      const lines = await session.#ask('BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY;\nSELECT pg_export_snapshot();');
      session.snapshot = lines.find((l) => /^[0-9A-F]+-[0-9A-F]+(-\d+)?$/i.test(l.trim()))?.trim() ?? '';
      if (!session.snapshot) throw new PipelineError('SNAPSHOT_FAILED', 'pg_export_snapshot() returned no snapshot id');
      return session;
    } catch (error) {
      session.kill();
      throw error;
    }
  }

  /** Exact row counts of every user table, in the exported snapshot: `{ 'public.accounts': 51 }`. */
  async countRows(): Promise<Record<string, number>> {
    const lines = await this.#ask(
      `SELECT format('SELECT %L, count(*) FROM %I.%I', n.nspname || '.' || c.relname, n.nspname, c.relname)
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
          AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.objid = c.oid AND d.deptype = 'e')
        ORDER BY n.nspname, c.relname \\gexec`,
    );
    const counts: Record<string, number> = {};
    for (const line of lines) {
      const tab = line.lastIndexOf('\t');
      if (tab > 0) counts[line.slice(0, tab)] = Number(line.slice(tab + 1));
    }
    return counts;
  }

  /** Ends the transaction and the session. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    this.#stdin.end('COMMIT;\n\\q\n');
    await this.#proc.catch(() => undefined);
  }

  kill(): void {
    this.#closed = true;
    this.#stdin.end();
    this.#proc.kill();
    this.#proc.catch(() => undefined);
  }
}
