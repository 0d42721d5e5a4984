/** A Mastodon `.env.production` for a test database, quoted the way Ruby's dotenv reads it. */

/** A dotenv double-quoted value: `\`, `"` and `$` escaped (dotenv expands `$VAR` inside double quotes). */
export function dotenvQuote(value: string): string {
  return `"${value.replace(/\\/g, '\\\\').replace(/"/g, '\\"').replace(/\$/g, '\\$')}"`;
}

export interface MastodonEnv {
  host: string;
  port: number;
  database: string;
  user: string;
  password: string;
  /** More `KEY=value` lines (SECRET_KEY_BASE, S3_ENABLED…). */
  extra?: string[];
}

export function mastodonEnvText(env: MastodonEnv): string {
  return [
    'LOCAL_DOMAIN=example.test',
    `DB_HOST=${env.host}`,
    `DB_PORT=${env.port}`,
    `DB_NAME=${env.database}`,
    `DB_USER=${env.user}`,
    `DB_PASS=${dotenvQuote(env.password)}`,
    ...(env.extra ?? []),
    '',
  ].join('\n');
}
