/**
 * The SQL behind `generateMastodonData(…, { text: 'realistic' })`: the same tables and about the
 * same row counts as the default data, with content about as varied as a real instance's, so that
 * compressed dumps are as large as real ones (`pg_dump -Fc` ≈ 15–25 % of `pg_database_size`, where
 * the default data compresses ~17:1). Everything is made on the server in one session:
 *
 * - text: a vocabulary of 4,000 generated word forms per language (Latin ×3, Cyrillic, CJK with
 *   kana, Arabic), drawn with a Zipf-like (1/rank) frequency into a pool of sentences; a status is
 *   1–3 sentences of its author's language in Mastodon's HTML, with mentions, hashtags and links;
 * - ids: snowflake-style (`ms << 16 | 16 pseudo-random bits`, like Mastodon's `timestamp_id`)
 *   for accounts, statuses and media, and every reference uses them;
 * - unique URIs and URLs in the shapes ActivityPub servers use, over a Zipf-distributed set of
 *   remote domains; account public keys (all) and private keys (local) as PEM of pseudo-random
 *   bytes; bcrypt-shaped password hashes, confirmation tokens, OTP secrets, media shortcodes,
 *   blurhashes and file names as pseudo-random base64/hex.
 *
 * Pseudo-random bytes come from sha256 (core PostgreSQL, no pgcrypto), seeded from row numbers, and
 * `random()` is seeded with `setseed`, so the data are the same on every run of one server version.
 */

/** Languages of the generated text: `[code, consonants, vowels]`; `ja` draws kanji and kana instead. */
const LANGUAGES: Array<[string, string, string]> = [
  ['en', 'bcdfghklmnprstvwy', 'aeiouy'],
  ['de', 'bcdfghklmnprstwz', 'aeiouäöü'],
  ['fr', 'bcdfglmnprstvq', 'aeiouéèàê'],
  ['ru', 'бвгджзклмнпрстфхцчшщ', 'аеиоуыэюяё'],
  ['ja', '', ''],
  ['ar', 'بتثجحخدذرزسشصضطظعغفقكلمنهوي', 'اوية'],
];
/** Share of accounts writing in each language (cumulative thresholds over LANGUAGES). */
const LANGUAGE_CUMULATIVE = [0.5, 0.65, 0.75, 0.83, 0.93, 1];
const VOCABULARY = 4000;

/** SQL (to run as one script in one session) filling the loaded Mastodon schema. */
export function realisticMastodonDataSql(n: number, statuses: number): string {
  const langs = LANGUAGES.map(([code, cons, vow], i) => `(${i}, '${code}', '${cons}', '${vow}')`).join(', ');
  const langCase = (r: string) => `CASE ${LANGUAGE_CUMULATIVE.map((c, i) => `WHEN ${r} < ${c} THEN ${i}`).join(' ')} ELSE 0 END`;
  const pool = Math.max(300, Math.ceil(statuses / 5)); // sentences per language
  const domains = Math.max(10, Math.ceil(n / 25));
  const tags = Math.max(50, Math.ceil(n / 8));
  // Accounts were created over 7 years before the first status, statuses over 2 years; the spacing
  // (> 4096 ms, the jitter) keeps every snowflake id unique.
  const accountMs = Math.max(5000, Math.floor(2.2e11 / n));
  const statusMs = Math.max(5000, Math.floor(6.3e10 / statuses));
  const epochAccounts = Date.UTC(2016, 3, 1);
  const epochStatuses = Date.UTC(2023, 0, 1);
  const zipf = (max: string) => `floor(exp(random() * ln(${max})))::int`; // 1 … max-1, P(k) ∝ 1/k
  return String.raw`
SET synchronous_commit = off;
SET work_mem = '64MB';
SELECT setseed(0.42);

-- pseudo-random helpers (inlined by the planner)
CREATE FUNCTION pg_temp.rb(seed text, k int) RETURNS bytea LANGUAGE sql IMMUTABLE AS $$ SELECT sha256(convert_to(seed || ':' || k, 'UTF8')) $$;
CREATE FUNCTION pg_temp.tok(seed text, len int) RETURNS text LANGUAGE sql IMMUTABLE AS
  $$ SELECT left(translate(encode(pg_temp.rb(seed, 1) || pg_temp.rb(seed, 2), 'base64'), E'+/=\n', '-_'), len) $$;
CREATE FUNCTION pg_temp.hex(seed text, len int) RETURNS text LANGUAGE sql IMMUTABLE AS $$ SELECT left(encode(pg_temp.rb(seed, 0), 'hex'), len) $$;
CREATE FUNCTION pg_temp.b64(seed text, bytes int) RETURNS text LANGUAGE sql IMMUTABLE AS
  $$ SELECT encode(substring((SELECT string_agg(pg_temp.rb(seed, k), ''::bytea) FROM generate_series(1, (bytes + 31) / 32) AS k) FROM 1 FOR bytes), 'base64') $$;
CREATE FUNCTION pg_temp.ams(i bigint) RETURNS bigint LANGUAGE sql IMMUTABLE AS $$ SELECT ${epochAccounts}::bigint + i * ${accountMs} + (hashint8(i) & 4095) $$;
CREATE FUNCTION pg_temp.aid(i bigint) RETURNS bigint LANGUAGE sql IMMUTABLE AS $$ SELECT (pg_temp.ams(i) << 16) | (hashint8(-i) & 65535) $$;
CREATE FUNCTION pg_temp.sms(s bigint) RETURNS bigint LANGUAGE sql IMMUTABLE AS $$ SELECT ${epochStatuses}::bigint + s * ${statusMs} + (hashint8(s) & 4095) $$;
CREATE FUNCTION pg_temp.sid(s bigint) RETURNS bigint LANGUAGE sql IMMUTABLE AS $$ SELECT (pg_temp.sms(s) << 16) | (hashint8(-s) & 65535) $$;
CREATE FUNCTION pg_temp.ts(ms bigint) RETURNS timestamp LANGUAGE sql IMMUTABLE AS $$ SELECT 'epoch'::timestamp + ms * interval '1 millisecond' $$;

CREATE TEMP TABLE bp_lang (lang int PRIMARY KEY, code text, cons text, vow text);
INSERT INTO bp_lang VALUES ${langs};

-- 4,000 word forms per language; frequent (low-rank) words are shorter
CREATE TEMP TABLE bp_words (lang int, rank int, word text, PRIMARY KEY (lang, rank));
INSERT INTO bp_words
SELECT l.lang, r,
  (SELECT string_agg(CASE WHEN syllable > 0 AND l.lang = 4
       THEN CASE WHEN random() < 0.55 THEN chr(19968 + floor(random() * 2500)::int) ELSE chr(12353 + floor(random() * 83)::int) END
       ELSE substr(l.cons, 1 + floor(random() * length(l.cons))::int, 1) || substr(l.vow, 1 + floor(random() * length(l.vow))::int, 1)
         || CASE WHEN random() < 0.3 THEN substr(l.cons, 1 + floor(random() * length(l.cons))::int, 1) ELSE '' END
     END, '')
   FROM generate_series(1, 1 + floor(ln(r) / 3 + random() * 1.5)::int + 0 * l.lang) AS syllable)
FROM bp_lang AS l, generate_series(1, ${VOCABULARY}) AS r;

-- a pool of sentences per language, words drawn by frequency (P ∝ 1/rank)
CREATE TEMP TABLE bp_sent (lang int, k int, body text, PRIMARY KEY (lang, k));
INSERT INTO bp_sent
SELECT t.lang, t.k,
  CASE WHEN t.lang = 4 THEN string_agg(w.word, '' ORDER BY t.pos) || (ARRAY['。', '。', '！', '？'])[1 + floor(random() * 4)::int]
    ELSE upper(left(string_agg(w.word, ' ' ORDER BY t.pos), 1)) || substr(string_agg(w.word, ' ' ORDER BY t.pos), 2)
      || (ARRAY['.', '.', '.', '!', '?', '…', ' :)'])[1 + floor(random() * 7)::int] END
FROM (SELECT s.lang, s.k, pos, ${zipf(String(VOCABULARY))} AS rank
      FROM (SELECT lang, k, 3 + floor(random() * 14)::int AS len FROM generate_series(0, ${LANGUAGES.length - 1}) AS lang, generate_series(1, ${pool}) AS k OFFSET 0) AS s,
      LATERAL generate_series(1, s.len) AS pos) AS t
JOIN bp_words AS w ON w.lang = t.lang AND w.rank = t.rank
GROUP BY t.lang, t.k;
ANALYZE bp_lang, bp_words, bp_sent;

-- remote servers: a few big ones hold most accounts (Zipf over the list)
CREATE TEMP TABLE bp_domains (d int PRIMARY KEY, name text, style int);
INSERT INTO bp_domains
SELECT d, CASE d % 5 WHEN 0 THEN 'mastodon.' WHEN 1 THEN '' WHEN 2 THEN 'social.' WHEN 3 THEN '' ELSE 'toot.' END
    || w1.word || CASE WHEN d % 3 = 0 THEN '-' || w2.word ELSE '' END || d
    || (ARRAY['.social', '.online', '.de', '.org', '.net', '.xyz', '.jp', '.fr', '.uk', '.com', '.cloud', '.space'])[1 + d % 12],
  CASE WHEN d % 10 < 7 THEN 0 WHEN d % 10 < 9 THEN 1 ELSE 2 END -- 0 mastodon, 1 misskey, 2 pleroma/akkoma
FROM generate_series(1, ${domains}) AS d
JOIN bp_words AS w1 ON w1.lang = 0 AND w1.rank = 1 + (hashint4(d) & 4095) % ${VOCABULARY}
JOIN bp_words AS w2 ON w2.lang = 0 AND w2.rank = 1 + (hashint4(-d) & 4095) % ${VOCABULARY};

-- who is who: account i, its snowflake id, name, server (NULL: local; i % 3 <> 0 are local, as in the default data), language
CREATE TEMP TABLE bp_acc (i int PRIMARY KEY, id bigint, username text, domain text, style int, lang int, base text, ms bigint);
INSERT INTO bp_acc
SELECT x.i, pg_temp.aid(x.i), x.username, dm.name, coalesce(dm.style, 0), x.lang,
  CASE WHEN dm.name IS NULL THEN 'https://example.social/users/' || x.username
       WHEN dm.style = 1 THEN 'https://' || dm.name || '/users/' || pg_temp.tok('mk' || x.i, 10)
       ELSE 'https://' || dm.name || '/users/' || x.username END,
  pg_temp.ams(x.i)
FROM (SELECT i, lower(w.word) || CASE WHEN i % 4 = 0 THEN '_' || w2.word ELSE '' END || i AS username, z.lang, z.d
      FROM (SELECT i, ${langCase('(hashint4(i + 11) & 65535) / 65536.0')} AS lang, CASE WHEN i % 3 = 0 THEN ${zipf(String(domains + 1))} END AS d FROM generate_series(1, ${n}) AS i OFFSET 0) AS z
      JOIN bp_words AS w ON w.lang = 0 AND w.rank = 1 + (hashint4(z.i) & 4095) % ${VOCABULARY}
      JOIN bp_words AS w2 ON w2.lang = 0 AND w2.rank = 1 + (hashint4(z.i + 7) & 4095) % ${VOCABULARY}) AS x
LEFT JOIN bp_domains AS dm ON dm.d = x.d;
ANALYZE bp_domains, bp_acc;

INSERT INTO accounts (id, username, domain, private_key, public_key, created_at, updated_at, note, display_name, uri, url,
  avatar_file_name, avatar_content_type, avatar_file_size, avatar_updated_at, header_file_name, header_content_type, header_file_size, header_updated_at,
  avatar_remote_url, locked, header_remote_url, last_webfingered_at, inbox_url, outbox_url, shared_inbox_url, followers_url,
  featured_collection_url, fields, actor_type, discoverable, also_known_as, indexable)
SELECT a.id, a.username, a.domain,
  CASE WHEN a.domain IS NULL THEN E'-----BEGIN RSA PRIVATE KEY-----\n' || pg_temp.b64('priv' || a.i, 1190) || E'\n-----END RSA PRIVATE KEY-----\n' END,
  E'-----BEGIN PUBLIC KEY-----\nMIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA' || pg_temp.b64('pub' || a.i, 260) || E'IDAQAB\n-----END PUBLIC KEY-----\n',
  pg_temp.ts(a.ms), pg_temp.ts(a.ms + (hashint4(a.i) & 1073741823)::bigint * 40),
  CASE WHEN a.i % 5 = 4 THEN '' ELSE '<p>' || s1.body || CASE WHEN a.i % 2 = 0 THEN ' ' || s2.body ELSE '' END || '</p>' END,
  CASE WHEN a.i % 3 = 1 THEN '' ELSE initcap(w.word) || CASE WHEN a.i % 7 = 0 THEN ' :' || w.word || ':' WHEN a.i % 11 = 0 THEN ' 🦣' ELSE '' END END,
  CASE WHEN a.domain IS NULL THEN '' ELSE a.base END,
  CASE WHEN a.domain IS NULL THEN 'https://example.social/@' || a.username WHEN a.style = 1 THEN 'https://' || a.domain || '/@' || a.username ELSE a.base END,
  pg_temp.hex('av' || a.i, 16) || '.png', 'image/png', 20000 + (hashint4(a.i) & 1048575), pg_temp.ts(a.ms + 86400000),
  CASE WHEN a.i % 3 <> 2 THEN pg_temp.hex('hd' || a.i, 16) || '.jpeg' END, CASE WHEN a.i % 3 <> 2 THEN 'image/jpeg' END,
  CASE WHEN a.i % 3 <> 2 THEN 100000 + (hashint4(-a.i) & 2097151) END, CASE WHEN a.i % 3 <> 2 THEN pg_temp.ts(a.ms + 90000000) END,
  CASE WHEN a.domain IS NOT NULL THEN 'https://' || a.domain || '/system/accounts/avatars/' || pg_temp.hex('av' || a.i, 16) || '.png' END,
  a.i % 11 = 0,
  CASE WHEN a.domain IS NOT NULL AND a.i % 3 <> 2 THEN 'https://' || a.domain || '/system/accounts/headers/' || pg_temp.hex('hd' || a.i, 16) || '.jpeg' ELSE '' END,
  CASE WHEN a.domain IS NOT NULL THEN pg_temp.ts(a.ms + 400000000 + (hashint4(a.i) & 65535)::bigint * 1000) END,
  CASE WHEN a.domain IS NULL THEN '' ELSE a.base || '/inbox' END,
  CASE WHEN a.domain IS NULL THEN '' ELSE a.base || '/outbox' END,
  CASE WHEN a.domain IS NULL THEN '' ELSE 'https://' || a.domain || '/inbox' END,
  CASE WHEN a.domain IS NULL THEN '' ELSE a.base || '/followers' END,
  CASE WHEN a.domain IS NOT NULL AND a.style = 0 THEN a.base || '/collections/featured' END,
  CASE WHEN a.i % 3 = 0 THEN '[]'::jsonb ELSE jsonb_build_array(
    jsonb_build_object('name', initcap(w2.word), 'value', '<a href="https://' || coalesce(a.domain, 'example.social') || '/' || pg_temp.tok('f' || a.i, 6) || '" rel="me nofollow noopener" target="_blank">' || w2.word || '</a>'),
    jsonb_build_object('name', initcap(w.word), 'value', s2.body)) END,
  CASE WHEN a.i % 17 = 0 THEN 'Service' ELSE 'Person' END, a.i % 2 = 0,
  CASE WHEN a.i % 29 = 0 THEN ARRAY['https://' || pg_temp.tok('old' || a.i, 8) || '.example/users/' || a.username]::character varying[] END,
  a.i % 5 = 0
FROM bp_acc AS a
JOIN bp_sent AS s1 ON s1.lang = a.lang AND s1.k = 1 + (hashint4(a.i) & 1073741823) % ${pool}
JOIN bp_sent AS s2 ON s2.lang = a.lang AND s2.k = 1 + (hashint4(-a.i) & 1073741823) % ${pool}
JOIN bp_words AS w ON w.lang = a.lang AND w.rank = 1 + (hashint4(a.i + 3) & 4095) % ${VOCABULARY}
JOIN bp_words AS w2 ON w2.lang = 0 AND w2.rank = 1 + (hashint4(a.i + 5) & 4095) % ${VOCABULARY};
SELECT setval('accounts_id_seq', ${n});

INSERT INTO users (id, email, created_at, updated_at, encrypted_password, reset_password_token, reset_password_sent_at, sign_in_count,
  current_sign_in_at, last_sign_in_at, confirmation_token, confirmed_at, confirmation_sent_at, locale, otp_required_for_login, last_emailed_at,
  otp_backup_codes, account_id, chosen_languages, approved, settings, time_zone, otp_secret, role_id)
SELECT a.i, a.username || CASE WHEN a.i % 7 = 0 THEN '.' || pg_temp.hex('e' || a.i, 4) ELSE '' END || '@'
    || (ARRAY['gmail.com', 'posteo.de', 'proton.me', 'outlook.com', 'fastmail.com', 'web.de', 'yahoo.co.jp', 'mail.ru', 'icloud.com', 'gmx.net'])[1 + a.i % 10],
  pg_temp.ts(a.ms), pg_temp.ts(a.ms + (hashint4(a.i) & 1073741823)::bigint * 50),
  '$2a$10$' || left(translate(pg_temp.tok('pw' || a.i, 60), '-_', './'), 53),
  CASE WHEN a.i % 19 = 0 THEN pg_temp.tok('rst' || a.i, 20) END, CASE WHEN a.i % 19 = 0 THEN pg_temp.ts(a.ms + 500000000) END,
  (hashint4(a.i) & 2047), pg_temp.ts(a.ms + (hashint4(a.i + 1) & 1073741823)::bigint * 60), pg_temp.ts(a.ms + (hashint4(a.i + 2) & 1073741823)::bigint * 55),
  pg_temp.tok('cf' || a.i, 20), pg_temp.ts(a.ms + 600000), pg_temp.ts(a.ms + 1000),
  (SELECT code FROM bp_lang WHERE lang = a.lang), a.i % 10 = 0, CASE WHEN a.i % 4 = 0 THEN pg_temp.ts(a.ms + 900000000) END,
  CASE WHEN a.i % 10 = 0 THEN ARRAY(SELECT pg_temp.hex('bk' || a.i || '-' || k, 8) FROM generate_series(1, 10) AS k)::character varying[] END,
  a.id, CASE WHEN a.i % 4 = 0 THEN ARRAY[(SELECT code FROM bp_lang WHERE lang = a.lang), 'en']::character varying[] END, true,
  '{"theme":"' || (ARRAY['default', 'mastodon-light', 'contrast', 'system'])[1 + a.i % 4] || '","noindex":' || (a.i % 2 = 0) || ',"default_privacy":"'
    || (ARRAY['public', 'unlisted', 'private'])[1 + a.i % 3] || '","web.expand_content_warnings":' || (a.i % 5 = 0) || '}',
  (ARRAY['Europe/Berlin', 'America/New_York', 'Asia/Tokyo', 'Europe/London', 'Europe/Paris', 'America/Los_Angeles', 'Europe/Moscow', 'Asia/Riyadh'])[1 + a.i % 8],
  CASE WHEN a.i % 10 = 0 THEN pg_temp.b64('otp' || a.i, 60) END,
  CASE WHEN a.i % 500 = 1 THEN 3 END
FROM bp_acc AS a WHERE a.domain IS NULL;
SELECT setval('users_id_seq', ${n});

-- statuses: 1 in 6 a reblog (no text), 1 in 7 a reply; authors by activity (a few post most)
INSERT INTO statuses (id, uri, text, created_at, updated_at, in_reply_to_id, reblog_of_id, url, sensitive, visibility, spoiler_text, reply, language,
  conversation_id, local, account_id, application_id, in_reply_to_account_id, edited_at, trendable)
SELECT pg_temp.sid(x.s),
  a.base || CASE WHEN a.style = 1 THEN '/notes/' || pg_temp.tok('n' || x.s, 10) WHEN a.style = 2 THEN '/objects/' || pg_temp.hex('o' || x.s, 32) ELSE '/statuses/' || pg_temp.sid(x.s) END
    || CASE WHEN x.reblog THEN '/activity' ELSE '' END,
  CASE WHEN x.reblog THEN '' ELSE
    '<p>' || CASE WHEN x.reply THEN '<span class="h-card" translate="no"><a href="' || replace(ra.base, '/users/', '/@') || '" class="u-url mention">@<span>' || ra.username || '</span></a></span> ' ELSE '' END
    || s1.body || CASE WHEN x.r2 < 0.6 THEN ' ' || s2.body ELSE '' END
    || CASE WHEN x.r2 < 0.25 THEN '</p><p>' || s3.body ELSE '' END
    || CASE WHEN x.r3 < 0.2 THEN ' <a href="https://' || ld.name || '/' || lw.word || '/' || pg_temp.tok('l' || x.s, 8 + (x.s % 24)::int)
         || '" target="_blank" rel="nofollow noopener" translate="no"><span class="invisible">https://</span><span class="ellipsis">' || ld.name || '/' || lw.word
         || '</span><span class="invisible">/' || pg_temp.tok('l' || x.s, 8 + (x.s % 24)::int) || '</span></a>' ELSE '' END
    || CASE WHEN x.r3 > 0.7 THEN ' <a href="https://example.social/tags/' || tw.word || '" class="mention hashtag" rel="tag">#<span>' || tw.word || '</span></a>' ELSE '' END
    || '</p>' END,
  pg_temp.ts(pg_temp.sms(x.s)), pg_temp.ts(pg_temp.sms(x.s) + CASE WHEN x.r3 < 0.05 THEN 3600000 ELSE 0 END),
  CASE WHEN x.reply THEN pg_temp.sid(x.parent) END,
  CASE WHEN x.reblog THEN pg_temp.sid(x.parent) END,
  CASE WHEN x.reblog THEN NULL WHEN a.domain IS NULL THEN 'https://example.social/@' || a.username || '/' || pg_temp.sid(x.s)
       WHEN a.style = 1 THEN 'https://' || a.domain || '/notes/' || pg_temp.tok('n' || x.s, 10) ELSE replace(a.base, '/users/', '/@') || '/' || pg_temp.sid(x.s) END,
  x.r3 > 0.93, CASE WHEN x.r2 < 0.6 THEN 0 WHEN x.r2 < 0.8 THEN 1 WHEN x.r2 < 0.95 THEN 2 ELSE 3 END,
  CASE WHEN x.r3 > 0.93 THEN (SELECT w.word FROM bp_words w WHERE w.lang = a.lang AND w.rank = 1 + x.s % 200) ELSE '' END,
  x.reply, CASE WHEN x.reblog THEN NULL ELSE (SELECT code FROM bp_lang WHERE lang = a.lang) END,
  x.s / 3, a.domain IS NULL, a.id, CASE WHEN a.domain IS NULL THEN 1 + x.s % 40 END,
  CASE WHEN x.reply THEN ra.id END, CASE WHEN x.r3 < 0.05 THEN pg_temp.ts(pg_temp.sms(x.s) + 3600000) END,
  CASE WHEN x.r3 < 0.01 THEN true END
FROM (SELECT s, ${zipf(String(n + 1))} AS acct, random() AS r2, random() AS r3,
        s > 10 AND s % 6 = 0 AS reblog, s > 10 AND s % 7 = 0 AND s % 6 <> 0 AS reply,
        s - 1 - floor(random() * least(s - 1, 5000))::int AS parent,
        1 + floor(random() * ${pool})::int AS k1, 1 + floor(random() * ${pool})::int AS k2, 1 + floor(random() * ${pool})::int AS k3
      FROM generate_series(1, ${statuses}) AS s OFFSET 0) AS x
JOIN bp_acc AS a ON a.i = 1 + (x.acct::bigint * 7919) % ${n}
JOIN bp_acc AS ra ON ra.i = 1 + (x.parent::bigint * 7919) % ${n}
JOIN bp_sent AS s1 ON s1.lang = a.lang AND s1.k = x.k1
JOIN bp_sent AS s2 ON s2.lang = a.lang AND s2.k = x.k2
JOIN bp_sent AS s3 ON s3.lang = a.lang AND s3.k = x.k3
JOIN bp_domains AS ld ON ld.d = 1 + x.s % ${domains}
JOIN bp_words AS lw ON lw.lang = 0 AND lw.rank = 1 + x.k1 % ${VOCABULARY}
JOIN bp_words AS tw ON tw.lang = a.lang AND tw.rank = 1 + x.k2 % 300;
SELECT setval('statuses_id_seq', ${statuses});

INSERT INTO status_stats (status_id, replies_count, reblogs_count, favourites_count, created_at, updated_at)
SELECT pg_temp.sid(s), ${zipf('30')} - 1, ${zipf('200')} - 1, ${zipf('1000')} - 1, pg_temp.ts(pg_temp.sms(s) + 60000), pg_temp.ts(pg_temp.sms(s) + 60000 + floor(random() * 1e8)::bigint)
FROM generate_series(1, ${statuses}, 2) AS s;

INSERT INTO follows (created_at, updated_at, account_id, target_account_id, show_reblogs, uri, notify, languages)
SELECT pg_temp.ts(ms), pg_temp.ts(ms), pg_temp.aid(a), pg_temp.aid(t), k % 3 <> 0,
  CASE WHEN a % 3 = 0 THEN 'https://' || (SELECT domain FROM bp_acc WHERE i = a) || '/' || pg_temp.hex('fo' || a || '-' || k, 32)
       ELSE 'https://example.social/' || pg_temp.hex('fo' || a || '-' || k, 8) || '-' || pg_temp.hex('fp' || a || '-' || k, 4) || '-4' || pg_temp.hex('fq' || a || '-' || k, 3) || '-' || pg_temp.hex('fr' || a || '-' || k, 12) END,
  k = 1, CASE WHEN k = 2 THEN ARRAY['en']::character varying[] END
FROM (SELECT a, k, 1 + (${zipf(String(n + 1))}::bigint * 7919) % ${n} AS t, pg_temp.ams(a) + floor(random() * 1e10)::bigint AS ms
      FROM generate_series(1, ${n}) AS a, generate_series(1, LEAST(10, ${n} - 1)) AS k OFFSET 0) AS f
WHERE t <> a
ON CONFLICT DO NOTHING;

INSERT INTO blocks (created_at, updated_at, account_id, target_account_id, uri)
SELECT pg_temp.ts(pg_temp.ams(a) + 5e9::bigint), pg_temp.ts(pg_temp.ams(a) + 5e9::bigint), pg_temp.aid(a), pg_temp.aid(1 + (a * 31 + 5) % ${n}),
  'https://example.social/' || pg_temp.hex('bl' || a, 32)
FROM generate_series(1, ${n}, 9) AS a WHERE 1 + (a * 31 + 5) % ${n} <> a ON CONFLICT DO NOTHING;

INSERT INTO mutes (created_at, updated_at, hide_notifications, account_id, target_account_id, expires_at)
SELECT pg_temp.ts(pg_temp.ams(a) + 6e9::bigint), pg_temp.ts(pg_temp.ams(a) + 6e9::bigint), a % 2 = 0, pg_temp.aid(a), pg_temp.aid(1 + (a * 37 + 3) % ${n}),
  CASE WHEN a % 4 = 0 THEN pg_temp.ts(pg_temp.ams(a) + 9e9::bigint) END
FROM generate_series(1, ${n}, 7) AS a ON CONFLICT DO NOTHING;

INSERT INTO favourites (created_at, updated_at, account_id, status_id)
SELECT pg_temp.ts(pg_temp.sms(s) + 1000 + (hashint4(a * 31 + k) & 65535)::bigint * 100), pg_temp.ts(pg_temp.sms(s) + 1000 + (hashint4(a * 31 + k) & 65535)::bigint * 100),
  pg_temp.aid(a), pg_temp.sid(s)
FROM (SELECT a, k, ${statuses} - floor(${statuses} * power(random(), 2))::int AS s FROM generate_series(1, ${n}) AS a, generate_series(1, 10) AS k OFFSET 0) AS f
WHERE s >= 1
ON CONFLICT DO NOTHING;

INSERT INTO mentions (status_id, created_at, updated_at, account_id, silent)
SELECT pg_temp.sid(s), pg_temp.ts(pg_temp.sms(s)), pg_temp.ts(pg_temp.sms(s)), pg_temp.aid(1 + (s * 13) % ${n}), s % 50 = 0
FROM generate_series(1, ${statuses}, 6) AS s ON CONFLICT DO NOTHING;

INSERT INTO media_attachments (id, status_id, file_file_name, file_content_type, file_file_size, file_updated_at, remote_url, created_at, updated_at,
  shortcode, type, file_meta, account_id, description, blurhash, processing, file_storage_schema_version)
SELECT pg_temp.sid(s) + 1, pg_temp.sid(s), pg_temp.hex('mf' || s, 16) || ext, mime, 20000 + floor(random() * 4e6)::int, pg_temp.ts(pg_temp.sms(s)),
  CASE WHEN s % 3 = 0 THEN 'https://files.' || (SELECT name FROM bp_domains WHERE d = 1 + s % ${domains}) || '/media_attachments/files/'
    || regexp_replace(lpad(((pg_temp.sid(s) + 1) / 1)::text, 18, '0'), '(...)', '\1/', 'g') || 'original/' || pg_temp.hex('mf' || s, 16) || ext ELSE '' END,
  pg_temp.ts(pg_temp.sms(s)), pg_temp.ts(pg_temp.sms(s)),
  CASE WHEN s % 3 <> 0 THEN pg_temp.tok('sc' || s, 19) END, CASE WHEN mime LIKE 'video%' THEN 2 ELSE 0 END,
  json_build_object('original', json_build_object('width', w, 'height', h, 'size', w || 'x' || h, 'aspect', round(w::numeric / h, 6)),
    'small', json_build_object('width', 640, 'height', (640 * h) / w, 'size', '640x' || (640 * h) / w, 'aspect', round(w::numeric / h, 6)),
    'focus', json_build_object('x', round((random() * 2 - 1)::numeric, 2), 'y', round((random() * 2 - 1)::numeric, 2))),
  pg_temp.aid(1 + (s::bigint * 7919) % ${n}),
  CASE WHEN s % 5 < 2 THEN (SELECT body FROM bp_sent WHERE lang = s % ${LANGUAGES.length} AND k = 1 + s % ${pool}) END,
  pg_temp.tok('bh' || s, 28), 2, 1
FROM (SELECT s, 200 + floor(random() * 3800)::int AS w, 200 + floor(random() * 3800)::int AS h,
        (ARRAY['.png', '.jpeg', '.jpeg', '.jpeg', '.webp', '.mp4'])[1 + s % 6] AS ext,
        (ARRAY['image/png', 'image/jpeg', 'image/jpeg', 'image/jpeg', 'image/webp', 'video/mp4'])[1 + s % 6] AS mime
      FROM generate_series(1, ${statuses}, 10) AS s OFFSET 0) AS m
WHERE s % 6 <> 0 OR s <= 10;
SELECT setval('media_attachments_id_seq', ${statuses});

INSERT INTO custom_emojis (shortcode, domain, image_file_name, image_content_type, image_file_size, created_at, updated_at, uri, image_remote_url, visible_in_picker, image_storage_schema_version)
SELECT lower(w.word) || '_' || e, d.name, pg_temp.hex('em' || e, 16) || '.png', 'image/png', 1000 + (hashint4(e) & 65535),
  pg_temp.ts(pg_temp.ams(e)), pg_temp.ts(pg_temp.ams(e)),
  CASE WHEN d.name IS NOT NULL THEN 'https://' || d.name || '/emojis/' || pg_temp.sid(e) END,
  CASE WHEN d.name IS NOT NULL THEN 'https://files.' || d.name || '/custom_emojis/images/' || pg_temp.hex('em' || e, 16) || '.png' END,
  e % 5 <> 0, 1
FROM generate_series(1, GREATEST(10, ${n} / 20)) AS e
JOIN bp_words AS w ON w.lang = 0 AND w.rank = 1 + e % ${VOCABULARY}
LEFT JOIN bp_domains AS d ON e % 2 = 0 AND d.d = 1 + e % ${domains};

INSERT INTO notifications (activity_id, activity_type, created_at, updated_at, account_id, from_account_id, type, group_key)
SELECT CASE WHEN k % 4 = 3 THEN pg_temp.sid(1 + (k * 7) % ${statuses}) ELSE k * 3 + (hashint8(k) & 3) END,
  (ARRAY['Favourite', 'Follow', 'Status', 'Mention'])[1 + k % 4], pg_temp.ts(pg_temp.sms(1 + k * ${statuses} / (${n} * 10))), pg_temp.ts(pg_temp.sms(1 + k * ${statuses} / (${n} * 10))),
  pg_temp.aid(1 + (${zipf(String(n + 1))}::bigint * 7919) % ${n}), pg_temp.aid(1 + (hashint8(k) & 1073741823) % ${n}),
  (ARRAY['favourite', 'follow', 'reblog', 'mention'])[1 + k % 4],
  CASE WHEN k % 3 = 0 THEN (ARRAY['favourite', 'follow', 'reblog', 'mention'])[1 + k % 4] || '-' || pg_temp.sid(1 + (k * 7) % ${statuses}) || '-' || (k / 300) END
FROM generate_series(1::bigint, ${n} * 10) AS k;

INSERT INTO reports (status_ids, comment, created_at, updated_at, account_id, target_account_id, category, rule_ids, uri, forwarded)
SELECT ARRAY[pg_temp.sid(r), pg_temp.sid(r + 1)]::bigint[], s.body, pg_temp.ts(pg_temp.sms(r)), pg_temp.ts(pg_temp.sms(r)),
  pg_temp.aid(1 + r % ${n}), pg_temp.aid(1 + (r * 3) % ${n}), r % 3, ARRAY[1 + r % 6]::bigint[],
  'https://example.social/' || pg_temp.hex('rp' || r, 32), r % 2 = 0
FROM generate_series(1, GREATEST(5, ${n} / 50)) AS r
JOIN bp_sent AS s ON s.lang = r % ${LANGUAGES.length} AND s.k = 1 + r % ${pool};

INSERT INTO settings (var, value, thing_type, thing_id, created_at, updated_at)
SELECT 'setting_' || k, '--- ' || pg_temp.tok('st' || k, 12 + k) || E'\n', NULL, NULL, pg_temp.ts(pg_temp.ams(k)), pg_temp.ts(pg_temp.ams(k)) FROM generate_series(1, 30) AS k;

INSERT INTO tags (name, created_at, updated_at, usable, trendable, listable, max_score, max_score_at, last_status_at)
SELECT w1.word || CASE WHEN t > ${VOCABULARY} THEN w2.word ELSE '' END, pg_temp.ts(pg_temp.sms(t)), pg_temp.ts(pg_temp.sms(t)), true, t % 2 = 0, true,
  random() * 100, pg_temp.ts(pg_temp.sms(t * 3)), pg_temp.ts(pg_temp.sms(t * 5))
FROM generate_series(1, ${tags}) AS t
JOIN bp_words AS w1 ON w1.lang = t % ${LANGUAGES.length} AND w1.rank = 1 + (t - 1) % ${VOCABULARY}
JOIN bp_words AS w2 ON w2.lang = t % ${LANGUAGES.length} AND w2.rank = 1 + (hashint4(t) & 4095) % ${VOCABULARY}
ON CONFLICT DO NOTHING;

CREATE TEMP TABLE bp_tags AS SELECT row_number() OVER (ORDER BY id)::int AS r, id FROM tags;
INSERT INTO statuses_tags (status_id, tag_id)
SELECT pg_temp.sid(x.s), t.id
FROM (SELECT s, ${zipf('(SELECT count(*) + 1 FROM bp_tags)::float8')} AS r FROM generate_series(1, ${statuses}, 3) AS s WHERE s % 6 <> 0 OR s <= 10 OFFSET 0) AS x
JOIN bp_tags AS t ON t.r = x.r
ON CONFLICT DO NOTHING;
`;
}
