/**
 * `pipeline init`: writes a commented config for this host from Mastodon's `.env.production`.
 * It reads the connection settings only to describe them in comments: the credentials stage reads
 * the env file again at every run, so no password is ever copied into the config. It never
 * prompts; the file it writes passes `pipeline validate` as written (encryption, the off-site copy,
 * notifications and metrics are there, commented out, with what to fill in).
 */
import { readFile, stat } from 'node:fs/promises';
import { homedir } from 'node:os';
import { isAbsolute, join, resolve } from 'node:path';
import { EXIT, parseEnvFile, PipelineError, writeFileAtomic } from '@backup-pipeline/core';
import type { Command } from 'commander';
import { green } from '../output.js';

export interface InitOptions {
  mastodonDir: string;
  output: string;
  force?: boolean;
}

/** What the config's comments may say about the instance: never DB_PASS, never DATABASE_URL. */
export interface InstanceFacts {
  envFile: string;
  mastodonDir: string;
  localDomain?: string;
  host: string;
  port: string;
  database: string;
  user: string;
  hasPassword: boolean;
  databaseUrl: boolean;
  s3: boolean;
}

const expandHome = (path: string) => (path === '~' ? homedir() : path.startsWith('~/') ? join(homedir(), path.slice(2)) : path);
/** One line, printable, short: safe inside a YAML comment. */
const clean = (value: string) => value.replace(/[^\x20-\x7e]/g, '?').slice(0, 200);

export function instanceFacts(text: string, envFile: string, mastodonDir: string): InstanceFacts {
  const env = parseEnvFile(text, envFile);
  const get = (key: string) => env.get(key)?.value;
  const password = get('DB_PASS') ?? '';
  // A value that is the password itself is never repeated (e.g. DB_USER == DB_PASS).
  const safe = (value: string | undefined, fallback: string) => clean(value && value !== password ? value : fallback);
  return {
    envFile,
    mastodonDir,
    localDomain: get('LOCAL_DOMAIN') ? safe(get('LOCAL_DOMAIN'), '') : undefined,
    host: safe(get('DB_HOST'), 'localhost'),
    port: safe(get('DB_PORT'), '5432'),
    database: safe(get('DB_NAME'), 'mastodon_production'),
    user: safe(get('DB_USER'), 'mastodon'),
    hasPassword: password.length > 0,
    databaseUrl: (get('DATABASE_URL') ?? '') !== '',
    s3: get('S3_ENABLED') === 'true',
  };
}

const q = (value: string) => JSON.stringify(value);

/** The commented YAML config. */
export function renderInitConfig(f: InstanceFacts): string {
  const media = join(f.mastodonDir, 'public', 'system');
  const connection = f.databaseUrl
    ? `      #   DATABASE_URL is set there: it overrides every DB_* value (its password stays in that file).`
    : `      #   ${f.user}@${f.host}:${f.port}/${f.database}, ${f.hasPassword ? 'with the password in DB_PASS' : 'without a password (peer authentication: run the backup as that Unix user)'}.`;
  return `# backup-pipeline config for ${f.localDomain ? `the Mastodon instance ${f.localDomain}` : 'a Mastodon instance'}, written by \`pipeline init\`.
# Check it with:       pipeline validate --config <this file>
# Try it without data: pipeline run --dry-run --config <this file>
# Schedule it:         pipeline schedule systemd nightly --user mastodon --config <this file>
# Every option is described in the config reference (docs/config.md) and \`pipeline plugins\`.

# Staging folder: each run builds its set here; completed sets stay here too (retention applies).
workDir: /var/backups/mastodon/work
# Time zone of the daily/weekly/monthly retention buckets.
timezone: UTC

# Where sets are shipped: every destination gets a complete copy (artifacts, then manifest.json).
destinations:
  # A second local copy, e.g. on another disk mounted under /var/backups/mastodon.
  local:
    use: local
    path: /var/backups/mastodon/sets
  # An off-site copy over ssh: fill in the host, uncomment, and add "offsite" to the pipeline's
  # destinations below. Only ship off-site once the gpg stage below is on.
  # offsite:
  #   use: rsync
  #   target: backup@backup.example.org:/srv/backups/mastodon
  #   identityFile: ~/.ssh/id_ed25519_backup
  #   knownHostsFile: ~/.ssh/known_hosts

pipelines:
  nightly:
    description: PostgreSQL dump of Mastodon, verified by a test restore, kept 7 days / 4 weeks / 6 months.
    source: mastodon
    stages:
      # Connection settings, read from Mastodon's env file at every run (no password in this file):
${connection}
      - use: credentials
        from: mastodon
        envFile: ${q(f.envFile)}

      # pg_dump in custom format (restorable in parallel, table by table), compressed with zstd.
      # lockWaitTimeout gives up instead of queueing behind a migration's lock.
      - use: pg-dump
        format: custom
        compression:
          method: zstd
        lockWaitTimeout: 5min

      # Prove the dump restores: pg_restore into a scratch database (created and always dropped),
      # then compare every table's row count. Needs CREATEDB for ${f.user} (Mastodon's install
      # guide creates the user with it); set restoreTest: false otherwise.
      - use: verify
        restoreTest: true

      # Encryption, and the secrets of .env.production (SECRET_KEY_BASE, OTP_SECRET, the
      # ACTIVE_RECORD_ENCRYPTION_* keys): without that file a restored database loses 2FA and its
      # encrypted columns. The files stage refuses to ship it unencrypted, so both come together.
      # To turn them on: import the public key of the admin who will restore (gpg --import KEY.asc),
      # put its fingerprint below in place of the placeholder, and uncomment the two stages.
      # - use: files
      #   envFile: ${q(f.envFile)}
${f.s3 ? `      #   # Media is in object storage (S3_ENABLED=true): there is no local media folder to archive.` : `      #   mediaDir: ${q(media)}   # local media, without its re-fetchable cache/`}
      # - use: gpg
      #   recipients:
      #     - "REPLACE-WITH-THE-RESTORING-ADMIN'S-KEY-FINGERPRINT"

      # Retention: keep the newest set of each of the last 7 days, 4 weeks and 6 months, in the
      # work dir and in every destination. It runs only after every shipment succeeded.
      - use: retention
        keepDaily: 7
        keepWeekly: 4
        keepMonthly: 6

      # Notifications on failure (and success); a failed notification never fails the backup.
      # Keep webhook URLs out of this file with \${file:PATH} or \${ENV} references.
      # - use: notify
      #   webhooks:
      #     - url: \${file:/etc/backup-pipeline/healthchecks-url}
      #       format: healthchecks
      #       on: [start, success, failure]

      # Prometheus metrics for node_exporter's textfile collector (last success, sizes, sets).
      # - use: metrics
      #   path: /var/lib/prometheus/node-exporter/backup_pipeline.prom
    destinations: [local]
`;
}

export default async function init(command: Command): Promise<number> {
  const options = command.opts<InitOptions>();
  const mastodonDir = resolve(expandHome(options.mastodonDir));
  const envFile = join(mastodonDir, '.env.production');
  const output = isAbsolute(expandHome(options.output)) ? expandHome(options.output) : resolve(options.output);

  if (!options.force && (await stat(output).catch(() => undefined))) {
    throw new PipelineError('INIT_EXISTS', `${output} already exists`, {
      hint: 'Pass --force to overwrite it, or --output to write another file.',
      exitCode: EXIT.usage,
    });
  }
  let text: string;
  try {
    text = await readFile(envFile, 'utf8');
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    throw new PipelineError('MASTODON_ENV_NOT_FOUND', `cannot read ${envFile}: ${code === 'ENOENT' ? 'no such file' : (error as Error).message}`, {
      hint: 'Pass --mastodon-dir with the folder of your Mastodon installation (the one holding .env.production), and run as a user who may read it.',
      exitCode: EXIT.usage,
    });
  }
  const facts = instanceFacts(text, envFile, mastodonDir);
  await writeFileAtomic(output, renderInitConfig(facts), { mode: 0o600 });
  process.stdout.write(`${green('wrote')} ${output}\n`);
  process.stdout.write(`Next: review it, then\n  pipeline validate --config ${output}\n  pipeline run --dry-run --config ${output}\n`);
  return 0;
}
