/**
 * `pipeline init`: writes a commented config for this host from Mastodon's `.env.production`.
 * It reads the connection settings only to describe them in comments: the credentials stage reads
 * the env file again at every run, so no password is ever copied into the config. It never
 * prompts.
 *
 * The config it writes is a working, encrypted backup as written: init generates a gpg key pair
 * for the admin who will restore (the public key stays next to the config as a recipient file,
 * the private key is exported for the admin to move off the server), so the `files` stage with
 * `.env.production` is on from the start. Without gpg it writes a placeholder recipient that
 * fails `pipeline validate` with what to put there, and its last lines say what is not backed up.
 * The time zone of the retention buckets is the host's; the first line points editors at the
 * installed JSON Schema.
 */
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { describeObjectStorage, EXIT, exec, makePathResolver, mastodonObjectStorage, parseEnvFile, PipelineError, writeFileAtomic } from '@backup-pipeline/core';
import type { Command } from 'commander';
import { CLI_DIR } from '../builtins.js';
import { green, output as terminal } from '../output.js';

export interface InitOptions {
  mastodonDir: string;
  output: string;
  force?: boolean;
  /** Also a pipeline of physical backups (pgBackRest) with WAL archiving. */
  physical?: boolean;
  pgDataDir?: string;
  repoPath?: string;
  stanza?: string;
}

/** What `init --physical` needs to know about the server (see `physicalSetup`). */
export interface PhysicalChoices {
  stanza: string;
  /** PostgreSQL's data directory (pg1-path). */
  pgDataDir: string;
  /** The pgBackRest repository folder (repo1-path). */
  repoPath: string;
  /** The server's socket folder (pg1-socket-path), from DB_HOST when it is one. */
  socketDir: string;
  port: string;
  /** The pgBackRest config the server's archive_command and the stage share. */
  configFile: string;
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
  /** Where media is when `s3` (bucket and endpoint, no credentials). */
  objectStorage?: string;
}

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
    s3: mastodonObjectStorage(env) !== undefined,
    ...(mastodonObjectStorage(env) ? { objectStorage: clean(describeObjectStorage(mastodonObjectStorage(env)!)) } : {}),
  };
}

const q = (value: string) => JSON.stringify(value);

/** A name the config (and Intl) accept as an IANA time zone. */
function validZone(zone: string | undefined): string | undefined {
  const z = zone?.trim().replace(/^:/, '');
  if (!z || !/^[A-Za-z0-9_+\-/]+$/.test(z)) return undefined;
  try {
    return new Intl.DateTimeFormat('en', { timeZone: z }).resolvedOptions().timeZone === undefined ? undefined : z;
  } catch {
    return undefined;
  }
}

/** The host's time zone: $TZ, then timedatectl, then /etc/timezone, then what Node.js sees; UTC last. */
export async function detectTimezone(env: NodeJS.ProcessEnv = process.env): Promise<string> {
  const fromEnv = validZone(env.TZ);
  if (fromEnv) return fromEnv;
  const fromSystemd = await exec('timedatectl', ['show', '--property=Timezone', '--value'], { label: 'timedatectl' }).then(
    (r) => validZone(r.stdout),
    () => undefined,
  );
  if (fromSystemd) return fromSystemd;
  const fromFile = validZone(await readFile('/etc/timezone', 'utf8').catch(() => undefined));
  if (fromFile) return fromFile;
  return validZone(Intl.DateTimeFormat().resolvedOptions().timeZone) ?? 'UTC';
}

/** The JSON Schema of the installed CLI (its package ships it; a checkout has it in config/). */
export function schemaFile(): string | undefined {
  return [join(CLI_DIR, '..', '..', 'config', 'schema.json'), join(CLI_DIR, 'schema.json')].find((p) => existsSync(p));
}

/** A key pair init made for the admin who will restore. */
export interface InitKey {
  fingerprint: string;
  /** Armored public key, next to the config: the gpg stage's recipient file. */
  publicKeyFile: string;
  /** Armored private key (0600): to be moved off the server. */
  secretKeyFile: string;
}

/**
 * Generates an ed25519/cv25519 key pair without passphrase in a throwaway keyring, exports both
 * halves next to the config and removes the keyring: the server keeps only the public key.
 * Undefined when gpg is not installed.
 */
export async function generateKey(dir: string, base: string, label: string): Promise<InitKey | undefined> {
  const publicKeyFile = join(dir, `${base}.public-key.asc`);
  const secretKeyFile = join(dir, `${base}.PRIVATE-key.asc`);
  // Never replace a key backups may already be encrypted to: a second init keeps using it.
  for (const file of [publicKeyFile, secretKeyFile]) {
    if (await stat(file).catch(() => undefined)) {
      throw new PipelineError('INIT_EXISTS', `${file} already exists: backups may be encrypted to that key`, {
        hint: 'Keep it: move the files elsewhere first if you really want a new key (and keep the old private key for the old backups).',
        exitCode: EXIT.usage,
      });
    }
  }
  const home = await mkdtemp(join(tmpdir(), 'bp-init-gnupg-'));
  const env = { GNUPGHOME: home };
  const gpg = (args: string[]) => exec('gpg', ['--batch', '--no-tty', ...args], { env, label: 'gpg' });
  try {
    try {
      await gpg(['--version']);
    } catch (error) {
      if ((error as PipelineError).code === 'EXEC_NOT_FOUND') return undefined;
      throw error;
    }
    const uid = `backup-pipeline restore key (${label}) <backup-restore@${label.replace(/[^A-Za-z0-9.-]/g, '-') || 'localhost'}>`;
    await gpg(['--passphrase', '', '--quick-generate-key', uid, 'ed25519', 'cert', 'never']);
    const listed = await gpg(['--with-colons', '--list-keys', uid]);
    const fingerprint = listed.stdout.split('\n').find((l) => l.startsWith('fpr:'))?.split(':')[9];
    if (!fingerprint) throw new PipelineError('INIT_KEY_FAILED', 'gpg generated no key');
    await gpg(['--passphrase', '', '--quick-add-key', fingerprint, 'cv25519', 'encr', 'never']);
    const pub = await gpg(['--armor', '--export', fingerprint]);
    const sec = await gpg(['--pinentry-mode', 'loopback', '--passphrase', '', '--armor', '--export-secret-keys', fingerprint]);
    await writeFileAtomic(publicKeyFile, pub.stdout + '\n', { mode: 0o644 });
    await writeFileAtomic(secretKeyFile, sec.stdout + '\n', { mode: 0o600 });
    return { fingerprint, publicKeyFile, secretKeyFile };
  } finally {
    await exec('gpgconf', ['--kill', 'all'], { env, label: 'gpgconf' }).catch(() => {});
    await rm(home, { recursive: true, force: true });
  }
}

export interface InitChoices {
  timezone: string;
  schema?: string;
  key?: InitKey;
  physical?: PhysicalChoices;
}

/** The physical choices for this instance (defaults of a Debian PostgreSQL 15 host). */
export function physicalChoices(f: InstanceFacts, given: Pick<InitOptions, 'pgDataDir' | 'repoPath' | 'stanza'> = {}): PhysicalChoices {
  return {
    stanza: given.stanza ?? 'mastodon',
    pgDataDir: given.pgDataDir ?? '/var/lib/postgresql/15/main',
    repoPath: given.repoPath ?? '/var/lib/pgbackrest',
    socketDir: f.host.startsWith('/') ? f.host : '/var/run/postgresql',
    port: f.port,
    configFile: '/etc/pgbackrest/pgbackrest.conf',
  };
}

/**
 * What to set up on the PostgreSQL side for `init --physical`: the pgbackrest.conf the server's
 * archive_command and the stage share, the server settings (as ALTER SYSTEM lines), and the
 * commands to run, in order. Pure: printed by init, tested as text.
 */
export function physicalSetup(p: PhysicalChoices): { config: string; sql: string[]; commands: string[] } {
  const config = [
    '[global]',
    `repo1-path=${p.repoPath}`,
    'repo1-retention-full=9999999',
    'compress-type=zst',
    'process-max=2',
    'start-fast=y',
    'log-level-file=info',
    '',
    `[${p.stanza}]`,
    `pg1-path=${p.pgDataDir}`,
    `pg1-socket-path=${p.socketDir}`,
    `pg1-port=${p.port}`,
    '',
  ].join('\n');
  const sql = [
    "ALTER SYSTEM SET wal_level = 'replica';",
    "ALTER SYSTEM SET archive_mode = 'on';",
    `ALTER SYSTEM SET archive_command = 'pgbackrest --stanza=${p.stanza} archive-push %p';`,
    "ALTER SYSTEM SET archive_timeout = '5min';",
    'ALTER SYSTEM SET max_wal_senders = 3;',
  ];
  const commands = [
    `sudo install -d -o postgres -g postgres -m 0750 ${p.repoPath}`,
    `sudo install -d -o postgres -g postgres -m 0750 /var/log/pgbackrest ${dirname(p.configFile)}`,
    `sudo tee ${p.configFile} >/dev/null <<'EOF'\n${config}EOF`,
    `sudo chown postgres:postgres ${p.configFile} && sudo chmod 0640 ${p.configFile}`,
    ...sql.map((line) => `sudo -u postgres psql -c ${JSON.stringify(line)}`),
    'sudo systemctl restart postgresql   # archive_mode and wal_level take effect only at a restart',
    `sudo -u postgres pgbackrest --stanza=${p.stanza} stanza-create`,
    `sudo -u postgres pgbackrest --stanza=${p.stanza} check      # a WAL segment reaches the repository`,
  ];
  return { config, sql, commands };
}

/** The physical pipeline appended to the config by `init --physical`. */
function renderPhysicalPipeline(f: InstanceFacts, p: PhysicalChoices): string {
  return `
  # Physical backups and point-in-time recovery with pgBackRest (docs/physical.md). The server
  # archives every WAL segment into the repository (archive_command, set up as \`pipeline init
  # --physical\` printed); this pipeline takes the backups: a full one on Sunday, an incremental
  # one every other day, each checked with \`pgbackrest verify\` and a restore drill (the backup
  # restored into a private data dir, started with archiving off, row counts compared).
  # Restore to any moment since the oldest kept backup:
  #   pipeline restore --to-time '2026-12-01 14:03:00+00' --data-dir DIR -p physical
  # Keep the nightly dump too (weekly is enough): it restores into any PostgreSQL major version.
  physical:
    description: pgBackRest backups of the whole cluster (full weekly, incremental daily) with WAL archived continuously.
    # A source of its own: retention judges these sets apart from the dump's in the same folders.
    source: mastodon-physical
    stages:
      - use: credentials
        from: mastodon
        envFile: ${q(f.envFile)}
      # Runs after the pgbackrest stage's backup; the pgbackrest stage is listed after it so that it
      # expires, in the repository, exactly the backups no kept set needs any more.
      - use: retention
        keepDaily: 7
        keepWeekly: 4
      - use: pgbackrest
        stanza: ${p.stanza}
        # The file the server's archive_command reads too: one description of the repository.
        configFile: ${q(p.configFile)}
        type: { full: sunday, otherwise: incr }
    destinations: [local]
`;
}

/** The commented YAML config. */
export function renderInitConfig(f: InstanceFacts, choices: InitChoices = { timezone: 'UTC' }): string {
  const media = join(f.mastodonDir, 'public', 'system');
  const connection = f.databaseUrl
    ? `      #   DATABASE_URL is set there: it overrides every DB_* value (its password stays in that file).`
    : `      #   ${f.user}@${f.host}:${f.port}/${f.database}, ${f.hasPassword ? 'with the password in DB_PASS' : 'without a password (peer authentication: run the backup as that Unix user)'}.`;
  const files = [
    `      - use: files`,
    `        envFile: ${q(f.envFile)}`,
    f.s3 ? `        # Media is in object storage (S3_ENABLED=true, ${f.objectStorage ?? 'a bucket'}): no local media folder to archive; back the bucket up with a bucket-copy stage.` : `        # mediaDir: ${q(media)}   # local media (without its re-fetchable cache/): large, so off by default`,
  ];
  const encryption = choices.key
    ? [
        `      # Secrets and encryption. .env.production holds SECRET_KEY_BASE, OTP_SECRET and the`,
        `      # ACTIVE_RECORD_ENCRYPTION_* keys: without it a restored database loses 2FA and its encrypted`,
        `      # columns, so it is backed up with the dump, and only ever shipped encrypted (the files stage`,
        `      # refuses otherwise). Everything is encrypted to the key \`pipeline init\` generated`,
        `      # (${choices.key.fingerprint}); its private half is NOT on this server once you moved it.`,
        `      # To add another admin (or rotate): add their public key file or fingerprint below.`,
        ...files,
        `      - use: gpg`,
        `        recipientFiles:`,
        `          - ${q(choices.key.publicKeyFile)}`,
      ]
    : [
        `      # Secrets and encryption. .env.production holds SECRET_KEY_BASE, OTP_SECRET and the`,
        `      # ACTIVE_RECORD_ENCRYPTION_* keys: without it a restored database loses 2FA and its encrypted`,
        `      # columns. It is only ever shipped encrypted (the files stage refuses otherwise).`,
        `      # gpg was not found when this file was written: install it (apt-get install gnupg), import the`,
        `      # public key of the admin who will restore (gpg --import KEY.asc), put its fingerprint in place`,
        `      # of the placeholder and uncomment the files stage. \`pipeline validate\` fails until then.`,
        ...files.map((l) => l.replace(/^ {6}/, '      # ')),
        `      - use: gpg`,
        `        recipients:`,
        `          - "REPLACE-WITH-THE-RESTORING-ADMIN'S-KEY-FINGERPRINT"`,
      ];
  return `${choices.schema ? `# yaml-language-server: $schema=${choices.schema}\n` : ''}# backup-pipeline config for ${f.localDomain ? `the Mastodon instance ${f.localDomain}` : 'a Mastodon instance'}, written by \`pipeline init\`.
# Check it with:       pipeline validate --config <this file>
# Try it without data: pipeline run --dry-run --config <this file>
# Schedule it:         pipeline schedule systemd nightly --user mastodon --config <this file>
# Every option is described in the config reference (docs/config.md) and \`pipeline plugins\`.

# Staging folder: each run builds its set here; completed sets stay here too (retention applies).
workDir: /var/backups/mastodon/work
# Time zone of the daily/weekly/monthly retention buckets (this host's).
timezone: ${choices.timezone}

# Where sets are shipped: every destination gets a complete copy (artifacts, then manifest.json).
destinations:
  # A second local copy, e.g. on another disk mounted under /var/backups/mastodon.
  local:
    use: local
    path: /var/backups/mastodon/sets
  # An off-site copy over ssh: fill in the host, uncomment, and add "offsite" to the pipeline's
  # destinations below. Everything is encrypted by the gpg stage before it is shipped.
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

      # Prove the dump restores: pg_restore into a throwaway PostgreSQL cluster the run starts
      # itself (socket only, in workDir, always removed; needs the postgresql-<major> server
      # package, no CREATEDB, no load on the server), then compare every table's row count.
      # restoreInto: server restores into a scratch database on the server instead (CREATEDB).
      - use: verify
        restoreTest: true

${encryption.join('\n')}

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
${choices.physical ? renderPhysicalPipeline(f, choices.physical) : ''}`;
}

export default async function init(command: Command): Promise<number> {
  const options = command.opts<InitOptions>();
  // `~` as a shell would expand it, relative paths from here.
  const here = makePathResolver(process.cwd());
  const mastodonDir = here(options.mastodonDir);
  const envFile = join(mastodonDir, '.env.production');
  const output = here(options.output);

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
  const base = output.replace(/^.*\//, '').replace(/\.(ya?ml|json)$/, '');
  const key = await generateKey(dirname(output), base, facts.localDomain ?? 'mastodon');
  const choices: InitChoices = { timezone: await detectTimezone(), schema: schemaFile(), key, ...(options.physical ? { physical: physicalChoices(facts, options) } : {}) };
  await writeFileAtomic(output, renderInitConfig(facts, choices), { mode: 0o600 });
  const w = (line = '') => terminal.stdout(line + '\n');
  w(`${green('wrote')} ${output} (time zone ${choices.timezone})`);
  if (key) {
    w(`${green('wrote')} ${key.publicKeyFile} (the public key: backups are encrypted to it)`);
    w(`${green('wrote')} ${key.secretKeyFile} (the PRIVATE key, fingerprint ${key.fingerprint})`);
  }
  if (facts.s3) {
    w(`Media is in object storage (S3_ENABLED=true, ${facts.objectStorage}): this config backs up no media.`);
    w(`  Copy the bucket to another account or provider with a bucket-copy stage (plugins/bucket-copy/README.md).`);
  }
  if (choices.physical) {
    const setup = physicalSetup(choices.physical);
    w();
    w(`Physical backups (pipeline "physical"): set up WAL archiving on the PostgreSQL server first, as root:`);
    for (const line of setup.commands) w(`  ${line}`);
    w(`The PostgreSQL settings, for postgresql.conf instead of ALTER SYSTEM:`);
    for (const line of setup.sql) w(`  ${line.replace(/^ALTER SYSTEM SET (\w+) = (.*);$/, '$1 = $2')}`);
    w(`Until \`pgbackrest check\` passes, \`pipeline run physical\` stops in preflight and says why.`);
    w(`Then run it as the postgres user (it reads the data dir): sudo -u postgres pipeline run physical --config ${output}`);
    w();
  }
  w(`Next: review it, then\n  pipeline validate --config ${output}\n  pipeline run --dry-run --config ${output}`);
  w();
  if (key) {
    w(`The private key that decrypts every backup is ${key.secretKeyFile}.`);
    w(`Move it off this server now (a password manager, an offline USB stick), then delete it here:`);
    w(`  shred -u ${key.secretKeyFile}`);
    w(`A backup encrypted to a key that exists only on the server it protects is lost with that server.`);
    w(`Test decryption on another machine: gpg --import ${key.secretKeyFile.replace(/^.*\//, '')}, copy one backup set there, then`);
    w(`  gpg --decrypt <set>/<file>.gpg > /dev/null && echo decrypts   (or pipeline verify latest --restore-test there)`);
    w(`.env.production is backed up (encrypted) with every dump: the files stage is on.`);
  } else {
    w(`NOT BACKED UP: ${envFile}. Without it a restored database loses 2FA and its encrypted columns.`);
    w(`gpg is not installed, so no key was generated: apt-get install gnupg, put the restoring admin's key`);
    w(`fingerprint in place of the placeholder and uncomment the files stage (validate fails until then).`);
  }
  return 0;
}
