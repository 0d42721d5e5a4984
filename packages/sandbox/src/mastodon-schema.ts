/**
 * A Mastodon-shaped database for tests and benchmarks: the main tables with Mastodon's real column
 * types, NOT NULLs, defaults, indexes (unique and expression ones) and foreign keys; data generated
 * on the server with generate_series (tiny for unit tests, ~1 GB for benchmarks); and a fixed set
 * of hostile text rows (emoji, RTL, combining marks, quotes, backslashes, control characters, `\N`,
 * SQL-looking strings, 100 KB texts) that a dump and restore must carry byte for byte.
 */
import { quoteIdent, quoteLiteral } from '@backup-pipeline/core';
import { realisticMastodonDataSql } from './mastodon-realistic-data.js';

/** What runs SQL as a superuser on a database: `PostgresServer` satisfies it. */
export interface SqlRunner {
  psql(sql: string, db?: string): Promise<string[][]>;
}

export const MASTODON_TABLES = [
  'accounts',
  'users',
  'statuses',
  'status_stats',
  'follows',
  'blocks',
  'mutes',
  'favourites',
  'mentions',
  'media_attachments',
  'custom_emojis',
  'notifications',
  'reports',
  'settings',
  'tags',
  'statuses_tags',
] as const;

export const MASTODON_SCHEMA_SQL = String.raw`
CREATE OR REPLACE FUNCTION timestamp_id(table_name text) RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE time_part bigint; sequence_base bigint; tail bigint;
BEGIN
  time_part := (date_part('epoch', now()) * 1000)::bigint << 16;
  sequence_base := ('x' || substr(md5(table_name || 'secret-salt'), 1, 4))::bit(16)::bigint;
  tail := (sequence_base + nextval(table_name || '_id_seq')) & 65535;
  RETURN time_part | tail;
END $$;

CREATE TABLE accounts (
  id bigint NOT NULL PRIMARY KEY,
  username character varying DEFAULT ''::character varying NOT NULL,
  domain character varying,
  private_key text,
  public_key text DEFAULT ''::text NOT NULL,
  created_at timestamp without time zone NOT NULL,
  updated_at timestamp without time zone NOT NULL,
  note text DEFAULT ''::text NOT NULL,
  display_name character varying DEFAULT ''::character varying NOT NULL,
  uri character varying DEFAULT ''::character varying NOT NULL,
  url character varying,
  avatar_file_name character varying,
  avatar_content_type character varying,
  avatar_file_size integer,
  avatar_updated_at timestamp without time zone,
  header_file_name character varying,
  header_content_type character varying,
  header_file_size integer,
  header_updated_at timestamp without time zone,
  avatar_remote_url character varying,
  locked boolean DEFAULT false NOT NULL,
  header_remote_url character varying DEFAULT ''::character varying NOT NULL,
  last_webfingered_at timestamp without time zone,
  inbox_url character varying DEFAULT ''::character varying NOT NULL,
  outbox_url character varying DEFAULT ''::character varying NOT NULL,
  shared_inbox_url character varying DEFAULT ''::character varying NOT NULL,
  followers_url character varying DEFAULT ''::character varying NOT NULL,
  protocol integer DEFAULT 0 NOT NULL,
  memorial boolean DEFAULT false NOT NULL,
  moved_to_account_id bigint,
  featured_collection_url character varying,
  fields jsonb,
  actor_type character varying,
  discoverable boolean,
  also_known_as character varying[],
  silenced_at timestamp without time zone,
  suspended_at timestamp without time zone,
  hide_collections boolean,
  sensitized_at timestamp without time zone,
  suspension_origin integer,
  trendable boolean,
  reviewed_at timestamp without time zone,
  requested_review_at timestamp without time zone,
  indexable boolean DEFAULT false NOT NULL
);
CREATE SEQUENCE accounts_id_seq;
ALTER TABLE accounts ALTER COLUMN id SET DEFAULT timestamp_id('accounts');
CREATE UNIQUE INDEX index_accounts_on_username_and_domain_lower ON accounts USING btree (lower((username)::text), COALESCE(lower((domain)::text), ''::text));
CREATE INDEX index_accounts_on_uri ON accounts USING btree (uri);
CREATE INDEX index_accounts_on_url ON accounts USING btree (url text_pattern_ops) WHERE (url IS NOT NULL);
CREATE INDEX index_accounts_on_moved_to_account_id ON accounts USING btree (moved_to_account_id) WHERE (moved_to_account_id IS NOT NULL);
ALTER TABLE accounts ADD CONSTRAINT fk_2320833084 FOREIGN KEY (moved_to_account_id) REFERENCES accounts(id) ON DELETE SET NULL;

CREATE TABLE users (
  id bigserial PRIMARY KEY,
  email character varying DEFAULT ''::character varying NOT NULL,
  created_at timestamp without time zone NOT NULL,
  updated_at timestamp without time zone NOT NULL,
  encrypted_password character varying DEFAULT ''::character varying NOT NULL,
  reset_password_token character varying,
  reset_password_sent_at timestamp without time zone,
  sign_in_count integer DEFAULT 0 NOT NULL,
  current_sign_in_at timestamp without time zone,
  last_sign_in_at timestamp without time zone,
  confirmation_token character varying,
  confirmed_at timestamp without time zone,
  confirmation_sent_at timestamp without time zone,
  unconfirmed_email character varying,
  locale character varying,
  consumed_timestep integer,
  otp_required_for_login boolean DEFAULT false NOT NULL,
  last_emailed_at timestamp without time zone,
  otp_backup_codes character varying[],
  account_id bigint NOT NULL,
  disabled boolean DEFAULT false NOT NULL,
  invite_id bigint,
  chosen_languages character varying[],
  created_by_application_id bigint,
  approved boolean DEFAULT true NOT NULL,
  settings text,
  time_zone character varying,
  otp_secret character varying,
  age_verified_at timestamp without time zone,
  role_id bigint
);
CREATE UNIQUE INDEX index_users_on_email ON users USING btree (email);
CREATE INDEX index_users_on_account_id ON users USING btree (account_id);
CREATE UNIQUE INDEX index_users_on_confirmation_token ON users USING btree (confirmation_token);
CREATE UNIQUE INDEX index_users_on_reset_password_token ON users USING btree (reset_password_token) WHERE (reset_password_token IS NOT NULL);
ALTER TABLE users ADD CONSTRAINT fk_50500f500d FOREIGN KEY (account_id) REFERENCES accounts(id) ON DELETE CASCADE;

CREATE SEQUENCE statuses_id_seq;
CREATE TABLE statuses (
  id bigint DEFAULT timestamp_id('statuses'::text) NOT NULL PRIMARY KEY,
  uri character varying,
  text text DEFAULT ''::text NOT NULL,
  created_at timestamp without time zone NOT NULL,
  updated_at timestamp without time zone NOT NULL,
  in_reply_to_id bigint,
  reblog_of_id bigint,
  url character varying,
  sensitive boolean DEFAULT false NOT NULL,
  visibility integer DEFAULT 0 NOT NULL,
  spoiler_text text DEFAULT ''::text NOT NULL,
  reply boolean DEFAULT false NOT NULL,
  language character varying,
  conversation_id bigint,
  local boolean,
  account_id bigint NOT NULL,
  application_id bigint,
  in_reply_to_account_id bigint,
  poll_id bigint,
  deleted_at timestamp without time zone,
  edited_at timestamp without time zone,
  trendable boolean,
  ordered_media_attachment_ids bigint[],
  quote_approval_policy integer DEFAULT 0 NOT NULL
);
CREATE UNIQUE INDEX index_statuses_on_uri ON statuses USING btree (uri text_pattern_ops) WHERE (uri IS NOT NULL);
CREATE INDEX index_statuses_20190820 ON statuses USING btree (account_id, id DESC, visibility, updated_at) WHERE (deleted_at IS NULL);
CREATE INDEX index_statuses_on_in_reply_to_id ON statuses USING btree (in_reply_to_id) WHERE (in_reply_to_id IS NOT NULL);
CREATE INDEX index_statuses_on_reblog_of_id_and_account_id ON statuses USING btree (reblog_of_id, account_id);
ALTER TABLE statuses ADD CONSTRAINT fk_9bda1543f7 FOREIGN KEY (account_id) REFERENCES accounts(id) ON DELETE CASCADE;
ALTER TABLE statuses ADD CONSTRAINT fk_c7fa917661 FOREIGN KEY (in_reply_to_account_id) REFERENCES accounts(id) ON DELETE SET NULL;
ALTER TABLE statuses ADD CONSTRAINT fk_rails_94a6f70399 FOREIGN KEY (in_reply_to_id) REFERENCES statuses(id) ON DELETE SET NULL;
ALTER TABLE statuses ADD CONSTRAINT fk_rails_256483a9ab FOREIGN KEY (reblog_of_id) REFERENCES statuses(id) ON DELETE CASCADE;

CREATE TABLE status_stats (
  id bigserial PRIMARY KEY,
  status_id bigint NOT NULL,
  replies_count bigint DEFAULT 0 NOT NULL,
  reblogs_count bigint DEFAULT 0 NOT NULL,
  favourites_count bigint DEFAULT 0 NOT NULL,
  created_at timestamp without time zone NOT NULL,
  updated_at timestamp without time zone NOT NULL
);
CREATE UNIQUE INDEX index_status_stats_on_status_id ON status_stats USING btree (status_id);
ALTER TABLE status_stats ADD CONSTRAINT fk_rails_4a247aac42 FOREIGN KEY (status_id) REFERENCES statuses(id) ON DELETE CASCADE;

CREATE TABLE follows (
  id bigserial PRIMARY KEY,
  created_at timestamp without time zone NOT NULL,
  updated_at timestamp without time zone NOT NULL,
  account_id bigint NOT NULL,
  target_account_id bigint NOT NULL,
  show_reblogs boolean DEFAULT true NOT NULL,
  uri character varying,
  notify boolean DEFAULT false NOT NULL,
  languages character varying[]
);
CREATE UNIQUE INDEX index_follows_on_account_id_and_target_account_id ON follows USING btree (account_id, target_account_id);
CREATE INDEX index_follows_on_target_account_id ON follows USING btree (target_account_id);
ALTER TABLE follows ADD CONSTRAINT fk_32ed1b5560 FOREIGN KEY (account_id) REFERENCES accounts(id) ON DELETE CASCADE;
ALTER TABLE follows ADD CONSTRAINT fk_745ca29eac FOREIGN KEY (target_account_id) REFERENCES accounts(id) ON DELETE CASCADE;

CREATE TABLE blocks (
  id bigserial PRIMARY KEY,
  created_at timestamp without time zone NOT NULL,
  updated_at timestamp without time zone NOT NULL,
  account_id bigint NOT NULL,
  target_account_id bigint NOT NULL,
  uri character varying
);
CREATE UNIQUE INDEX index_blocks_on_account_id_and_target_account_id ON blocks USING btree (account_id, target_account_id);
CREATE INDEX index_blocks_on_target_account_id ON blocks USING btree (target_account_id);
ALTER TABLE blocks ADD CONSTRAINT fk_4269e03e65 FOREIGN KEY (account_id) REFERENCES accounts(id) ON DELETE CASCADE;
ALTER TABLE blocks ADD CONSTRAINT fk_9571bfabc1 FOREIGN KEY (target_account_id) REFERENCES accounts(id) ON DELETE CASCADE;

CREATE TABLE mutes (
  id bigserial PRIMARY KEY,
  created_at timestamp without time zone NOT NULL,
  updated_at timestamp without time zone NOT NULL,
  hide_notifications boolean DEFAULT true NOT NULL,
  account_id bigint NOT NULL,
  target_account_id bigint NOT NULL,
  expires_at timestamp without time zone
);
CREATE UNIQUE INDEX index_mutes_on_account_id_and_target_account_id ON mutes USING btree (account_id, target_account_id);
CREATE INDEX index_mutes_on_target_account_id ON mutes USING btree (target_account_id);
ALTER TABLE mutes ADD CONSTRAINT fk_b8d8daf315 FOREIGN KEY (account_id) REFERENCES accounts(id) ON DELETE CASCADE;
ALTER TABLE mutes ADD CONSTRAINT fk_eecff219ea FOREIGN KEY (target_account_id) REFERENCES accounts(id) ON DELETE CASCADE;

CREATE TABLE favourites (
  id bigserial PRIMARY KEY,
  created_at timestamp without time zone NOT NULL,
  updated_at timestamp without time zone NOT NULL,
  account_id bigint NOT NULL,
  status_id bigint NOT NULL
);
CREATE UNIQUE INDEX index_favourites_on_account_id_and_status_id ON favourites USING btree (account_id, status_id);
CREATE INDEX index_favourites_on_status_id ON favourites USING btree (status_id);
ALTER TABLE favourites ADD CONSTRAINT fk_5eb6c2b873 FOREIGN KEY (account_id) REFERENCES accounts(id) ON DELETE CASCADE;
ALTER TABLE favourites ADD CONSTRAINT fk_b0e856845e FOREIGN KEY (status_id) REFERENCES statuses(id) ON DELETE CASCADE;

CREATE TABLE mentions (
  id bigserial PRIMARY KEY,
  status_id bigint NOT NULL,
  created_at timestamp without time zone NOT NULL,
  updated_at timestamp without time zone NOT NULL,
  account_id bigint NOT NULL,
  silent boolean DEFAULT false NOT NULL
);
CREATE UNIQUE INDEX index_mentions_on_account_id_and_status_id ON mentions USING btree (account_id, status_id);
CREATE INDEX index_mentions_on_status_id ON mentions USING btree (status_id);
ALTER TABLE mentions ADD CONSTRAINT fk_970d43f9d1 FOREIGN KEY (account_id) REFERENCES accounts(id) ON DELETE CASCADE;
ALTER TABLE mentions ADD CONSTRAINT fk_rails_59edbe2887 FOREIGN KEY (status_id) REFERENCES statuses(id) ON DELETE CASCADE;

CREATE SEQUENCE media_attachments_id_seq;
CREATE TABLE media_attachments (
  id bigint DEFAULT timestamp_id('media_attachments'::text) NOT NULL PRIMARY KEY,
  status_id bigint,
  file_file_name character varying,
  file_content_type character varying,
  file_file_size integer,
  file_updated_at timestamp without time zone,
  remote_url character varying DEFAULT ''::character varying NOT NULL,
  created_at timestamp without time zone NOT NULL,
  updated_at timestamp without time zone NOT NULL,
  shortcode character varying,
  type integer DEFAULT 0 NOT NULL,
  file_meta json,
  account_id bigint,
  description text,
  scheduled_status_id bigint,
  blurhash character varying,
  processing integer,
  file_storage_schema_version integer
);
CREATE UNIQUE INDEX index_media_attachments_on_shortcode ON media_attachments USING btree (shortcode text_pattern_ops) WHERE (shortcode IS NOT NULL);
CREATE INDEX index_media_attachments_on_status_id ON media_attachments USING btree (status_id);
CREATE INDEX index_media_attachments_on_account_id_and_status_id ON media_attachments USING btree (account_id, status_id DESC);
ALTER TABLE media_attachments ADD CONSTRAINT fk_96dd81e81b FOREIGN KEY (account_id) REFERENCES accounts(id) ON DELETE SET NULL;
ALTER TABLE media_attachments ADD CONSTRAINT fk_rails_3ec0cfdd70 FOREIGN KEY (status_id) REFERENCES statuses(id) ON DELETE SET NULL;

CREATE TABLE custom_emojis (
  id bigserial PRIMARY KEY,
  shortcode character varying DEFAULT ''::character varying NOT NULL,
  domain character varying,
  image_file_name character varying,
  image_content_type character varying,
  image_file_size integer,
  image_updated_at timestamp without time zone,
  created_at timestamp without time zone NOT NULL,
  updated_at timestamp without time zone NOT NULL,
  disabled boolean DEFAULT false NOT NULL,
  uri character varying,
  image_remote_url character varying,
  visible_in_picker boolean DEFAULT true NOT NULL,
  category_id bigint,
  image_storage_schema_version integer
);
CREATE UNIQUE INDEX index_custom_emojis_on_shortcode_and_domain ON custom_emojis USING btree (shortcode, domain);

CREATE TABLE notifications (
  id bigserial PRIMARY KEY,
  activity_id bigint NOT NULL,
  activity_type character varying NOT NULL,
  created_at timestamp without time zone NOT NULL,
  updated_at timestamp without time zone NOT NULL,
  account_id bigint NOT NULL,
  from_account_id bigint NOT NULL,
  type character varying,
  filtered boolean DEFAULT false NOT NULL,
  group_key character varying
);
CREATE INDEX index_notifications_on_account_id_and_id_and_type ON notifications USING btree (account_id, id DESC, type);
CREATE INDEX index_notifications_on_activity_id_and_activity_type ON notifications USING btree (activity_id, activity_type);
CREATE INDEX index_notifications_on_from_account_id ON notifications USING btree (from_account_id);
ALTER TABLE notifications ADD CONSTRAINT fk_c141c8ee55 FOREIGN KEY (account_id) REFERENCES accounts(id) ON DELETE CASCADE;
ALTER TABLE notifications ADD CONSTRAINT fk_fbd6b0bf9e FOREIGN KEY (from_account_id) REFERENCES accounts(id) ON DELETE CASCADE;

CREATE TABLE reports (
  id bigserial PRIMARY KEY,
  status_ids bigint[] DEFAULT '{}'::bigint[] NOT NULL,
  comment text DEFAULT ''::text NOT NULL,
  created_at timestamp without time zone NOT NULL,
  updated_at timestamp without time zone NOT NULL,
  account_id bigint NOT NULL,
  action_taken_by_account_id bigint,
  target_account_id bigint NOT NULL,
  assigned_account_id bigint,
  uri character varying,
  forwarded boolean,
  category integer DEFAULT 0 NOT NULL,
  action_taken_at timestamp without time zone,
  rule_ids bigint[]
);
CREATE INDEX index_reports_on_account_id ON reports USING btree (account_id);
CREATE INDEX index_reports_on_target_account_id ON reports USING btree (target_account_id);
ALTER TABLE reports ADD CONSTRAINT fk_4b81f7522c FOREIGN KEY (assigned_account_id) REFERENCES accounts(id) ON DELETE SET NULL;
ALTER TABLE reports ADD CONSTRAINT fk_4e7a498fb4 FOREIGN KEY (account_id) REFERENCES accounts(id) ON DELETE CASCADE;
ALTER TABLE reports ADD CONSTRAINT fk_eb37af34f0 FOREIGN KEY (target_account_id) REFERENCES accounts(id) ON DELETE CASCADE;

CREATE TABLE settings (
  id bigserial PRIMARY KEY,
  var character varying NOT NULL,
  value text,
  thing_type character varying,
  created_at timestamp without time zone,
  updated_at timestamp without time zone,
  thing_id bigint
);
CREATE UNIQUE INDEX index_settings_on_thing_type_and_thing_id_and_var ON settings USING btree (thing_type, thing_id, var);

CREATE TABLE tags (
  id bigserial PRIMARY KEY,
  name character varying DEFAULT ''::character varying NOT NULL,
  created_at timestamp without time zone NOT NULL,
  updated_at timestamp without time zone NOT NULL,
  usable boolean,
  trendable boolean,
  listable boolean,
  reviewed_at timestamp without time zone,
  requested_review_at timestamp without time zone,
  last_status_at timestamp without time zone,
  max_score double precision,
  max_score_at timestamp without time zone,
  display_name character varying
);
CREATE UNIQUE INDEX index_tags_on_name_lower_btree ON tags USING btree (lower((name)::text) text_pattern_ops);

CREATE TABLE statuses_tags (
  status_id bigint NOT NULL,
  tag_id bigint NOT NULL,
  PRIMARY KEY (tag_id, status_id)
);
CREATE INDEX index_statuses_tags_on_status_id ON statuses_tags USING btree (status_id);
ALTER TABLE statuses_tags ADD CONSTRAINT fk_3081861e21 FOREIGN KEY (tag_id) REFERENCES tags(id) ON DELETE CASCADE;
ALTER TABLE statuses_tags ADD CONSTRAINT fk_rails_df0fe11427 FOREIGN KEY (status_id) REFERENCES statuses(id) ON DELETE CASCADE;
`;

/** Creates the tables; with `owner`, as that role (like Mastodon's own `mastodon` user owns them). */
export async function loadMastodonSchema(pg: SqlRunner, db: string, options: { owner?: string } = {}): Promise<void> {
  await pg.psql(`${setRole(options.owner)}BEGIN;\n${MASTODON_SCHEMA_SQL}\nCOMMIT;\n`, db);
}

function setRole(owner: string | undefined): string {
  return owner ? `SET ROLE ${quoteIdent(owner)};\n` : '';
}

/** Strings that break naive dumps, CSV/COPY handling, shells and terminals. NUL-free. */
export function hostileStrings(): string[] {
  const controls = Array.from({ length: 31 }, (_, i) => i + 1)
    .filter((c) => c !== 10 && c !== 13)
    .map((c) => String.fromCharCode(c))
    .join('') + '\x7f';
  const long = Array.from({ length: 2048 }, (_, i) => `${i}: 🐘 مرحبا שלום e\u0301 '"\\ \t|`).join('\n').slice(0, 100 * 1024);
  return [
    'emoji 🦣🐘👩‍👩‍👧‍👦🏳️‍🌈 and skin tones 👍🏽',
    'RTL: مرحبا بالعالم — שלום עולם — mixed ‏LTR‎ marks',
    'combining: e\u0301 a\u0308 Z\u0351\u0367\u0300\u0310 zalgo',
    'zero-width: a\u200db\u200cc\u200bd\ufeffe',
    `single 'quotes' and double "quotes" and ''doubled''`,
    'backslashes: \\ \\\\ \\n \\t C:\\Users\\x \\x00',
    'newline\nand\r\ncarriage\rreturn and\ttab',
    `controls: ${controls}`,
    '\\N',
    '\\.',
    'NULL',
    '',
    ' leading and trailing spaces ',
    "'); DROP TABLE accounts; --",
    "Robert'); DELETE FROM statuses WHERE ('1'='1",
    '$$ dollar $tag$ quoting $$',
    ':var :"ident" :\'lit\' psql variables',
    '%s %d %n {{template}} ${env} $(cmd) `cmd`',
    '<script>alert(1)</script> &amp; &lt;',
    'COPY statuses FROM stdin;',
    long,
  ];
}

export type MastodonScale = 'tiny' | 'small' | 'medium' | number | { targetMB: number };

/**
 * What the generated text, keys and ids look like. `'simple'` (the default): short repeated
 * strings and small ids, fast to make, but a dump compresses ~17:1. `'realistic'`: text from
 * word-frequency vocabularies in six languages and scripts, snowflake ids, unique URIs and random
 * keys and tokens (see `mastodon-realistic-data.ts`), so that `pg_dump -Fc` is ~15–25 % of the
 * database size as on a real instance; for benchmarks.
 */
export type MastodonText = 'simple' | 'realistic';

/**
 * Number of accounts for a scale. About 45 accounts make 1 MB on disk with simple text (1 GB:
 * ~45 s on a laptop); realistic rows are larger (about 35 accounts per MB).
 */
export function accountsForScale(scale: MastodonScale, text: MastodonText = 'simple'): number {
  if (typeof scale === 'number') return Math.max(1, Math.floor(scale));
  if (typeof scale === 'object') return Math.max(20, Math.round(scale.targetMB * (text === 'realistic' ? 35 : 45)));
  return { tiny: 50, small: 1000, medium: 10000 }[scale];
}

/**
 * Fills the Mastodon schema with deterministic data made on the server. Per account: ~20 statuses,
 * ~10 follows, favourites, notifications; fewer blocks, mutes, mentions, media and reports.
 * Plus `hostileStrings()` in accounts, statuses, settings, custom emojis and reports.
 * `text: 'realistic'` makes content that compresses like a real instance's (see `MastodonText`).
 */
export async function generateMastodonData(
  pg: SqlRunner,
  db: string,
  options: { scale?: MastodonScale; owner?: string; text?: MastodonText } = {},
): Promise<{ accounts: number }> {
  const text = options.text ?? 'simple';
  const n = accountsForScale(options.scale ?? 'tiny', text);
  const statuses = n * 20;
  if (text === 'realistic') {
    await pg.psql(setRole(options.owner) + 'BEGIN;\n' + realisticMastodonDataSql(n, statuses) + '\nCOMMIT;\n', db);
    // hostile rows report the first generated account, whose id is a snowflake here
    await pg.psql(setRole(options.owner) + hostileRowsSql(n, statuses, '(SELECT min(id) FROM accounts)'), db);
    await pg.psql('ANALYZE;', db);
    return { accounts: n };
  }
  const t0 = `'2024-01-01 00:00:00'::timestamp`;
  const sql = setRole(options.owner) + String.raw`
SET synchronous_commit = off;
BEGIN;
INSERT INTO accounts (id, username, domain, public_key, created_at, updated_at, note, display_name, uri, url, locked, fields, actor_type, discoverable, also_known_as, indexable)
SELECT i, 'user' || i, CASE WHEN i % 3 = 0 THEN 'remote' || (i % 97) || '.example' END,
  '-----BEGIN PUBLIC KEY-----' || md5(i::text) || '-----END PUBLIC KEY-----',
  ${t0} + i * interval '1 minute', ${t0} + i * interval '2 minute',
  'Hello, I am user ' || i || '. ' || repeat(md5(i::text), 2), 'User ' || i,
  CASE WHEN i % 3 = 0 THEN 'https://remote' || (i % 97) || '.example/users/user' || i ELSE '' END,
  'https://example.social/@user' || i, i % 11 = 0,
  jsonb_build_array(jsonb_build_object('name', 'Site', 'value', 'https://example.org/' || i)),
  CASE WHEN i % 17 = 0 THEN 'Service' ELSE 'Person' END, i % 2 = 0,
  CASE WHEN i % 29 = 0 THEN ARRAY['https://old.example/users/u' || i]::character varying[] END, i % 5 = 0
FROM generate_series(1, ${n}) AS i;
SELECT setval('accounts_id_seq', ${n});

INSERT INTO users (id, email, created_at, updated_at, encrypted_password, sign_in_count, confirmed_at, locale, account_id, chosen_languages, settings, time_zone)
SELECT i, 'user' || i || '@example.social', ${t0} + i * interval '1 minute', ${t0} + i * interval '1 minute',
  '$2a$10$' || md5('pw' || i), i % 100, ${t0} + i * interval '1 minute', (ARRAY['en','de','fr','ja','ar'])[1 + i % 5], i,
  CASE WHEN i % 4 = 0 THEN ARRAY['en','de']::character varying[] END, '{"theme":"default"}', 'Europe/Berlin'
FROM generate_series(1, ${n}) AS i WHERE i % 3 <> 0;
SELECT setval('users_id_seq', ${n});

INSERT INTO statuses (id, uri, text, created_at, updated_at, in_reply_to_id, url, sensitive, visibility, spoiler_text, reply, language, conversation_id, local, account_id, in_reply_to_account_id)
SELECT s, 'https://example.social/users/user' || (1 + s % ${n}) || '/statuses/' || s,
  '<p>Status ' || s || ' ' || repeat(md5(s::text) || ' #tag' || (s % 50) || ' ', 1 + s % 6) || '</p>',
  ${t0} + s * interval '1 second', ${t0} + s * interval '1 second',
  CASE WHEN s % 7 = 0 AND s > 1 THEN s - 1 END, 'https://example.social/@user' || (1 + s % ${n}) || '/' || s,
  s % 13 = 0, s % 4, CASE WHEN s % 13 = 0 THEN 'cw ' || s ELSE '' END, s % 7 = 0, 'en', s / 10, (1 + s % ${n}) % 3 <> 0,
  1 + s % ${n}, CASE WHEN s % 7 = 0 AND s > 1 THEN 1 + (s - 1) % ${n} END
FROM generate_series(1, ${statuses}) AS s;
SELECT setval('statuses_id_seq', ${statuses});

INSERT INTO status_stats (status_id, replies_count, reblogs_count, favourites_count, created_at, updated_at)
SELECT s, s % 3, s % 5, s % 11, ${t0}, ${t0} FROM generate_series(1, ${statuses}, 2) AS s;

INSERT INTO follows (created_at, updated_at, account_id, target_account_id, show_reblogs, notify)
SELECT ${t0}, ${t0}, a, 1 + (a + k * 7) % ${n}, k % 3 <> 0, k = 1
FROM generate_series(1, ${n}) AS a, generate_series(1, LEAST(10, ${n} - 1)) AS k
ON CONFLICT DO NOTHING;

INSERT INTO blocks (created_at, updated_at, account_id, target_account_id)
SELECT ${t0}, ${t0}, a, 1 + (a * 31 + 5) % ${n} FROM generate_series(1, ${n}, 9) AS a ON CONFLICT DO NOTHING;

INSERT INTO mutes (created_at, updated_at, hide_notifications, account_id, target_account_id, expires_at)
SELECT ${t0}, ${t0}, a % 2 = 0, a, 1 + (a * 37 + 3) % ${n}, CASE WHEN a % 4 = 0 THEN ${t0} + interval '30 days' END
FROM generate_series(1, ${n}, 7) AS a ON CONFLICT DO NOTHING;

INSERT INTO favourites (created_at, updated_at, account_id, status_id)
SELECT ${t0}, ${t0}, a, 1 + (a * 101 + k * 997) % ${statuses}
FROM generate_series(1, ${n}) AS a, generate_series(1, 10) AS k ON CONFLICT DO NOTHING;

INSERT INTO mentions (status_id, created_at, updated_at, account_id, silent)
SELECT s, ${t0}, ${t0}, 1 + (s * 13) % ${n}, s % 50 = 0 FROM generate_series(1, ${statuses}, 6) AS s ON CONFLICT DO NOTHING;

INSERT INTO media_attachments (id, status_id, file_file_name, file_content_type, file_file_size, file_updated_at, remote_url, created_at, updated_at, shortcode, type, file_meta, account_id, description, blurhash, processing, file_storage_schema_version)
SELECT s, s, md5(s::text) || '.png', 'image/png', 1000 + s % 500000, ${t0}, '', ${t0}, ${t0}, 'sc' || s, s % 3,
  json_build_object('original', json_build_object('width', 640, 'height', 480)), 1 + s % ${n}, 'alt text ' || s, 'UBL_:rOpGG-oBUNG,qRj2so|=eE1w^n4S5NH', 2, 1
FROM generate_series(1, ${statuses}, 10) AS s;
SELECT setval('media_attachments_id_seq', ${statuses});

INSERT INTO custom_emojis (shortcode, domain, image_file_name, image_content_type, image_file_size, created_at, updated_at, visible_in_picker)
SELECT 'emoji_' || e, CASE WHEN e % 2 = 0 THEN 'remote.example' END, 'e' || e || '.png', 'image/png', 1234, ${t0}, ${t0}, e % 5 <> 0
FROM generate_series(1, GREATEST(10, ${n} / 20)) AS e;

INSERT INTO notifications (activity_id, activity_type, created_at, updated_at, account_id, from_account_id, type, group_key)
SELECT k, CASE WHEN k % 2 = 0 THEN 'Favourite' ELSE 'Follow' END, ${t0}, ${t0}, 1 + k % ${n}, 1 + (k * 7) % ${n},
  CASE WHEN k % 2 = 0 THEN 'favourite' ELSE 'follow' END, CASE WHEN k % 3 = 0 THEN 'g-' || (k / 3) END
FROM generate_series(1, ${n} * 10) AS k;

INSERT INTO reports (status_ids, comment, created_at, updated_at, account_id, target_account_id, category, rule_ids)
SELECT ARRAY[r, r + 1]::bigint[], 'spam report ' || r, ${t0}, ${t0}, 1 + r % ${n}, 1 + (r * 3) % ${n}, r % 3, ARRAY[1]::bigint[]
FROM generate_series(1, GREATEST(5, ${n} / 50)) AS r;

INSERT INTO settings (var, value, thing_type, thing_id, created_at, updated_at)
SELECT 'setting_' || k, '--- ' || k || E'\n', NULL, NULL, ${t0}, ${t0} FROM generate_series(1, 30) AS k;

INSERT INTO tags (name, created_at, updated_at, usable, trendable, listable, max_score)
SELECT 'tag' || t, ${t0}, ${t0}, true, t % 2 = 0, true, t * 0.5 FROM generate_series(0, 49) AS t;

INSERT INTO statuses_tags (status_id, tag_id)
SELECT s, (SELECT id FROM tags WHERE name = 'tag' || (s % 50)) FROM generate_series(1, ${statuses}, 3) AS s;
COMMIT;
`;
  await pg.psql(sql, db);
  await pg.psql(setRole(options.owner) + hostileRowsSql(n, statuses), db);
  await pg.psql('ANALYZE;', db);
  return { accounts: n };
}

function hostileRowsSql(n: number, statuses: number, reportTarget = '1'): string {
  const lit = quoteLiteral;
  const lines = ['BEGIN;'];
  hostileStrings().forEach((text, i) => {
    const accountId = n + 1 + i;
    const statusId = statuses + 1 + i;
    lines.push(
      `INSERT INTO accounts (id, username, domain, created_at, updated_at, note, display_name, fields) VALUES (${accountId}, ${lit(`hostile${i}`)}, ${lit(`hostile${i}.example`)}, now()::timestamp, now()::timestamp, ${lit(text)}, ${lit(text.slice(0, 200))}, ${lit(JSON.stringify([{ name: text.slice(0, 100), value: text.slice(0, 300) }]))}::jsonb);`,
      `INSERT INTO statuses (id, text, spoiler_text, created_at, updated_at, account_id, language) VALUES (${statusId}, ${lit(text)}, ${lit(text.slice(0, 100))}, now()::timestamp, now()::timestamp, ${accountId}, 'und');`,
      `INSERT INTO settings (var, value, created_at, updated_at) VALUES (${lit(`hostile_${i}`)}, ${lit(text)}, now()::timestamp, now()::timestamp);`,
      `INSERT INTO reports (comment, created_at, updated_at, account_id, target_account_id) VALUES (${lit(text)}, now()::timestamp, now()::timestamp, ${accountId}, ${reportTarget});`,
      `INSERT INTO custom_emojis (shortcode, domain, created_at, updated_at) VALUES (${lit(`hostile_${i}`)}, ${lit(text.slice(0, 500))}, now()::timestamp, now()::timestamp);`,
    );
  });
  lines.push('COMMIT;');
  return lines.join('\n') + '\n';
}

/** User tables (schema-qualified, `public.accounts`) with their primary-key columns. */
export async function userTables(pg: SqlRunner, db: string): Promise<Array<{ name: string; schema: string; table: string; key: string[] }>> {
  const rows = await pg.psql(
    `SELECT n.nspname, c.relname, coalesce((SELECT string_agg(quote_ident(a.attname), ',' ORDER BY array_position(i.indkey::int2[], a.attnum))
        FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
        WHERE i.indrelid = c.oid AND i.indisprimary), '')
     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'
     ORDER BY 1, 2;`,
    db,
  );
  return rows.map(([schema, table, key]) => ({ name: `${schema}.${table}`, schema: schema!, table: table!, key: key ? key.split(',') : [] }));
}

/** Exact row count of every user table: `{ 'public.accounts': 51, … }`. */
export async function tableRowCounts(pg: SqlRunner, db: string): Promise<Record<string, number>> {
  const tables = await userTables(pg, db);
  if (tables.length === 0) return {};
  const sql = tables.map((t) => `SELECT ${quoteLiteral(t.name)}, count(*) FROM ${quoteIdent(t.schema)}.${quoteIdent(t.table)}`).join('\nUNION ALL ');
  const rows = await pg.psql(sql + ';', db);
  return Object.fromEntries(rows.map(([name, count]) => [name!, Number(count)]));
}

/**
 * A checksum of every user table's content: md5 over the md5 of each row's text form, ordered by
 * the primary key (all columns when there is none). Equal checksums mean byte-identical rows.
 */
export async function tableChecksums(pg: SqlRunner, db: string): Promise<Record<string, string>> {
  const tables = await userTables(pg, db);
  const out: Record<string, string> = {};
  for (const t of tables) {
    const order = t.key.length > 0 ? t.key.map((k) => `t.${k}`).join(', ') : 't::text';
    const rows = await pg.psql(
      `SELECT md5(coalesce(string_agg(md5(t::text), '' ORDER BY ${order}), '')) FROM ${quoteIdent(t.schema)}.${quoteIdent(t.table)} AS t;`,
      db,
    );
    out[t.name] = rows[0]?.[0] ?? '';
  }
  return out;
}
