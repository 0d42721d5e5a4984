/**
 * The credentials stage: resolves where and how to connect (connect hook → `ctx.pg`), then proves
 * it in preflight with one query that also reads the server version, the database size and
 * whether the user may read every table.
 */
import { definePlugin, describePg, pgConnectionError, PipelineError, psql, quoteIdent, z, type PgSource, type RunContext } from '@backup-pipeline/core';
import { resolveCredentials, type CredentialsOptions, type ResolvedCredentials } from './credentials.js';

export { parseEnvFile, type EnvEntry } from './env-file.js';
export { parseDatabaseUrl, resolveCredentials, type CredentialsOptions, type CredentialsFrom, type ResolvedCredentials } from './credentials.js';

export const optionsSchema = z
  .object({
    from: z
      .enum(['mastodon', 'options', 'env', 'pgpass'])
      .default('mastodon')
      .describe("Where the connection settings come from: Mastodon's .env.production (`mastodon`), these options (`options`), libpq variables PGHOST… (`env`), or an existing .pgpass (`pgpass`)."),
    envFile: z.string().min(1).default('~/live/.env.production').describe('Mastodon env file read with `from: mastodon` (DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASS; DATABASE_URL overrides them).'),
    host: z.string().min(1).optional().describe('Host name, IP address or Unix socket folder (`from: options|pgpass`; default localhost).'),
    port: z.number().int().min(1).max(65535).optional().describe('TCP port (`from: options|pgpass`; default 5432).'),
    database: z.string().min(1).optional().describe('Database name (`from: options|pgpass`).'),
    user: z.string().min(1).optional().describe('Database user (`from: options|pgpass`).'),
    password: z.string().optional().describe('Password (`from: options`); write it as a `${file:PATH}` reference, never inline.'),
    passwordFile: z.string().min(1).optional().describe('File holding the password (`from: options`); a trailing newline is ignored.'),
    pgpassFile: z.string().min(1).optional().describe('The .pgpass file to use with `from: pgpass` (default ~/.pgpass).'),
    sslmode: z.enum(['disable', 'allow', 'prefer', 'require', 'verify-ca', 'verify-full']).optional().describe('libpq sslmode (`from: options|pgpass`).'),
    checkPrivileges: z.boolean().default(true).describe('In preflight, check the user may read every table and sequence (pg_read_all_data or owner).'),
  })
  .strict()
  .superRefine((o, ctx) => {
    const only = (key: keyof typeof o, allowed: string[]) => {
      if (o[key] !== undefined && !allowed.includes(o.from)) {
        ctx.addIssue({ code: 'custom', path: [key], message: `only used with from: ${allowed.join(' or ')} (from is ${o.from})` });
      }
    };
    for (const k of ['host', 'port', 'database', 'user', 'sslmode'] as const) only(k, ['options', 'pgpass']);
    only('password', ['options']);
    only('passwordFile', ['options']);
    only('pgpassFile', ['pgpass']);
    if (o.password !== undefined && o.passwordFile !== undefined) ctx.addIssue({ code: 'custom', path: ['passwordFile'], message: 'give password or passwordFile, not both' });
    if (o.from === 'options' || o.from === 'pgpass') {
      for (const k of ['database', 'user'] as const) if (!o[k]) ctx.addIssue({ code: 'custom', path: [k], message: `required with from: ${o.from}` });
    }
  });

export type CredentialsPluginOptions = z.output<typeof optionsSchema>;

interface PreflightFacts {
  serverVersion: string;
  serverVersionNum: number;
  databaseSize: number;
  superuser: boolean;
  readAllData: boolean;
  unreadable: number;
  unreadableSample: string;
}

/** One round trip: proves the connection and reads versions, size and read privileges. */
export async function checkSource(source: PgSource, ctx: Pick<RunContext, 'signal' | 'secrets'>): Promise<PreflightFacts> {
  const sql = `SELECT current_setting('server_version'), current_setting('server_version_num'), pg_database_size(current_database()),
    coalesce((SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false),
    CASE WHEN EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'pg_read_all_data') THEN pg_has_role(current_user, 'pg_read_all_data', 'USAGE') ELSE false END,
    u.n, coalesce(u.sample, '')
  FROM (SELECT count(*) AS n, string_agg(name, ', ') FILTER (WHERE rn <= 5) AS sample FROM (
      SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) AS name, row_number() OVER (ORDER BY n.nspname, c.relname) AS rn
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
      WHERE c.relkind IN ('r', 'p', 'S', 'm') AND n.nspname NOT IN ('pg_catalog', 'information_schema')
        AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'
        AND (NOT has_schema_privilege(n.oid, 'USAGE') OR NOT has_table_privilege(c.oid, 'SELECT'))) t) u`;
  let rows: string[][];
  try {
    rows = await psql(source, sql, { signal: ctx.signal, secrets: ctx.secrets });
  } catch (error) {
    throw pgConnectionError(error, source) ?? error;
  }
  const r = rows[0] ?? [];
  return {
    serverVersion: r[0] ?? '',
    serverVersionNum: Number(r[1]),
    databaseSize: Number(r[2]),
    superuser: r[3] === 't',
    readAllData: r[4] === 't',
    unreadable: Number(r[5] ?? 0),
    unreadableSample: r[6] ?? '',
  };
}

export default definePlugin({
  name: 'credentials',
  description: "Resolves the PostgreSQL connection (Mastodon's .env.production, options, PG* variables or .pgpass) and checks it in preflight.",
  options: optionsSchema,
  apply(hooks, options, api) {
    let resolved: ResolvedCredentials | undefined;
    hooks.connect.tapPromise('credentials', async (ctx) => {
      resolved = await resolveCredentials(options as CredentialsOptions, { secrets: ctx.secrets, tmpDir: ctx.tmpDir, resolvePath: api.resolvePath });
      ctx.pg = resolved.source;
      ctx.log.info({ source: describePg(resolved.source), origin: resolved.origin }, `database source: ${describePg(resolved.source)}`);
    });
    hooks.preflight.tapPromise('credentials', async (ctx) => {
      const source = ctx.pg;
      if (!source) throw new PipelineError('CREDENTIALS_MISSING', 'no database connection was resolved', { hint: 'Put the credentials stage first.' });
      const facts = await checkSource(source, ctx);
      ctx.facts.serverVersion = facts.serverVersion;
      ctx.facts.serverVersionNum = facts.serverVersionNum;
      ctx.facts.database = source.database;
      ctx.facts.databaseSize = facts.databaseSize;
      if (options.checkPrivileges && !facts.superuser && facts.unreadable > 0) {
        const major = Math.floor(facts.serverVersionNum / 10000);
        const grant =
          major >= 14
            ? `GRANT pg_read_all_data TO ${quoteIdent(source.user)};`
            : `GRANT USAGE ON SCHEMA public TO ${quoteIdent(source.user)}; GRANT SELECT ON ALL TABLES IN SCHEMA public TO ${quoteIdent(source.user)}; GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO ${quoteIdent(source.user)};`;
        throw new PipelineError('INSUFFICIENT_PRIVILEGE', `${source.user} cannot read ${facts.unreadable} table(s) or sequence(s) of ${source.database}, e.g. ${facts.unreadableSample}`, {
          hint: `As a superuser, run: ${grant} — or connect as the database owner. (Set checkPrivileges: false to skip this check.)`,
          details: { unreadable: facts.unreadable },
        });
      }
      ctx.log.info({ serverVersion: facts.serverVersion, databaseSize: facts.databaseSize }, `connected to ${describePg(source)} (PostgreSQL ${facts.serverVersion})`);
    });
    hooks.plan.tapPromise('credentials', async (plan, ctx) => {
      const source = ctx.pg ?? resolved?.source;
      plan.add({
        plugin: 'credentials',
        hook: 'connect',
        description: source
          ? `connect to ${describePg(source)} with settings from ${resolved?.origin ?? options.from}${resolved?.hasPassword ? ' (password in a private PGPASSFILE)' : ''}`
          : `resolve credentials from ${options.from}`,
      });
    });
  },
});
