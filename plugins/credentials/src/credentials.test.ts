import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { isPipelineError } from '@backup-pipeline/core';
import { generateMastodonData, loadMastodonSchema, runStages, startPostgres, type PostgresServer } from '@backup-pipeline/testing';
import { parseEnvFile } from './env-file.js';
import { parseDatabaseUrl } from './credentials.js';

const PASSWORD = `p:a\\ss 'w"o#rd x`;
/** PASSWORD in dotenv double quotes: backslash and double quote escaped. */
const DQ = `"${PASSWORD.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;

describe('parseEnvFile', () => {
  const cases: Array<[string, string, Record<string, string>]> = [
    ['plain', 'A=1\nB = two \n', { A: '1', B: 'two' }],
    ['comments and blanks', '# c\n\nA=x # trailing\n  # indented\nB=y#z\n', { A: 'x', B: 'y' }],
    ['export prefix', 'export A=1\nexport   B="2"\n', { A: '1', B: '2' }],
    ['single quotes are literal', `A='a\\n $B #x "q"'\n`, { A: 'a\\n $B #x "q"' }],
    ['double quotes escape', `A="l1\\nl2 \\"q\\" \\\\ #no"\n`, { A: 'l1\nl2 "q" \\ #no' }],
    ['multi-line double quotes', 'A="one\ntwo"\nB=3\n', { A: 'one\ntwo', B: '3' }],
    ['substitution', 'A=x\nB=${A}y\nC="$A-z"\nD=\'${A}\'\nE="\\$A"\n', { A: 'x', B: 'xy', C: 'x-z', D: '${A}', E: '$A' }],
    ['empty values', 'A=\nB=""\nC=\'\'\n', { A: '', B: '', C: '' }],
    ['CRLF', 'A=1\r\nB="2"\r\n', { A: '1', B: '2' }],
    ['hostile password', `DB_PASS=${DQ}\n`, { DB_PASS: PASSWORD }],
  ];
  it.each(cases)('%s', (_name, text, expected) => {
    const parsed = Object.fromEntries([...parseEnvFile(text, 'x.env')].map(([k, v]) => [k, v.value]));
    expect(parsed).toEqual(expected);
  });

  const bad: Array<[string, string, number]> = [
    ['no equals sign', 'A=1\nSECRETVALUE\n', 2],
    ['unterminated double quote', 'A=1\n\nB="s3cret\n', 3],
    ['unterminated single quote', "B='s3cret\n", 1],
    ['text after quotes', 'A="s3cret" more\n', 1],
    ['bad key', '1A=s3cret\n', 1],
  ];
  it.each(bad)('rejects %s with the line number and without the value', (_name, text, line) => {
    try {
      parseEnvFile(text, '/srv/.env.production');
      expect.unreachable();
    } catch (error) {
      expect(isPipelineError(error) && error.code).toBe('ENV_FILE_INVALID');
      expect((error as Error).message).toContain(`/srv/.env.production line ${line}`);
      expect((error as Error).message).not.toContain('s3cret');
      expect((error as Error).message).not.toContain('SECRETVALUE=');
    }
  });
});

describe('parseDatabaseUrl', () => {
  it('decodes user, password, host, port, database and sslmode', () => {
    const url = `postgresql://mastodon:${encodeURIComponent(PASSWORD)}@db.example:6432/masto?sslmode=require`;
    expect(parseDatabaseUrl(url)).toEqual({ host: 'db.example', port: 6432, database: 'masto', user: 'mastodon', password: PASSWORD, sslmode: 'require' });
    expect(parseDatabaseUrl('postgres://u@/db?host=/var/run/postgresql').host).toBe('/var/run/postgresql');
  });
  it('never echoes an invalid URL', () => {
    expect(() => parseDatabaseUrl('postgres://u:s3cret@[bad')).toThrow(/not a valid URL/);
    try {
      parseDatabaseUrl('postgres://u:s3cret@[bad');
    } catch (e) {
      expect((e as Error).message).not.toContain('s3cret');
    }
  });
});

describe('credentials plugin against a real server', () => {
  let pg: PostgresServer;
  let dir: string;
  const use = 'credentials';

  beforeAll(async () => {
    pg = await startPostgres();
    await pg.createRole('mastodon', PASSWORD);
    await pg.createDatabase('mastodon_test', { owner: 'mastodon' });
    await loadMastodonSchema(pg, 'mastodon_test', { owner: 'mastodon' });
    await generateMastodonData(pg, 'mastodon_test', { scale: 5, owner: 'mastodon' });
    await pg.createRole('reader', 'reader-pw');
    dir = await mkdtemp(join(tmpdir(), 'bp-cred-'));
  });
  afterAll(async () => {
    await pg?.stop();
    if (dir) await rm(dir, { recursive: true, force: true });
  });

  const envFile = async (name: string, text: string) => {
    const path = join(dir, name);
    await writeFile(path, text, { mode: 0o600 });
    return path;
  };
  const mastodonEnv = (pass = DQ, extra = '') =>
    `# Mastodon\nLOCAL_DOMAIN=example.social\nSECRET_KEY_BASE=abc\nDB_HOST=127.0.0.1\nDB_PORT=${pg.port}\nDB_NAME=mastodon_test\nDB_USER=mastodon\nDB_PASS=${pass}\n${extra}`;

  it('connects with a hostile password from .env.production and never shows it', async () => {
    const file = await envFile('hostile.env', mastodonEnv());
    const out = await runStages({ stages: [{ use, envFile: file }], dryRun: true });
    expect(out.error).toBeUndefined();
    const plan = out.result!.plan!.steps.find((s) => s.plugin === 'credentials')!;
    expect(plan.description).toContain(`mastodon@127.0.0.1:${pg.port}/mastodon_test`);
    const all = JSON.stringify(out.result) + out.logs.join('\n');
    expect(all).not.toContain(PASSWORD);
    expect(out.logs.join('\n')).toContain('PostgreSQL');
    await out.cleanup();
  });

  it('accepts the same password single-quoted', async () => {
    // Single quotes are literal; the password contains one, so use a password without it here.
    const file = await envFile('single.env', mastodonEnv(`'${PASSWORD.replace(`'`, '')}'`));
    await pg.psql(`ALTER ROLE mastodon PASSWORD ${`'${PASSWORD.replace(`'`, '').replace(/'/g, "''")}'`}`);
    try {
      const out = await runStages({ stages: [{ use, envFile: file }], dryRun: true });
      expect(out.error).toBeUndefined();
      await out.cleanup();
    } finally {
      await pg.psql(`ALTER ROLE mastodon PASSWORD '${PASSWORD.replace(/'/g, "''")}'`);
    }
  });

  it('lets DATABASE_URL override every DB_* value', async () => {
    const url = `postgresql://mastodon:${encodeURIComponent(PASSWORD)}@127.0.0.1:${pg.port}/mastodon_test`;
    const text = `DB_HOST=nowhere.invalid\nDB_PORT=1\nDB_NAME=nope\nDB_USER=nobody\nDB_PASS=wrong\nDATABASE_URL="${url}"\n`;
    const out = await runStages({ stages: [{ use, envFile: await envFile('url.env', text) }], dryRun: true });
    expect(out.error).toBeUndefined();
    expect(out.result!.plan!.steps.find((s) => s.plugin === 'credentials')!.description).toContain('DATABASE_URL');
    expect(JSON.stringify(out.result) + out.logs.join('')).not.toContain(encodeURIComponent(PASSWORD));
    await out.cleanup();
  });

  it('connects over the Unix socket when DB_HOST is a folder', async () => {
    const text = mastodonEnv().replace('DB_HOST=127.0.0.1', `DB_HOST=${pg.socketDir}`);
    const out = await runStages({ stages: [{ use, envFile: await envFile('socket.env', text) }], dryRun: true });
    expect(out.error).toBeUndefined();
    expect(out.result!.plan!.steps.find((s) => s.plugin === 'credentials')!.description).toContain(`mastodon@${pg.socketDir}:${pg.port}/mastodon_test`);
    await out.cleanup();
  });

  it('CREDENTIALS_INVALID for a malformed DATABASE_URL, without echoing it', async () => {
    const out = await runStages({ stages: [{ use, envFile: await envFile('badurl.env', 'DATABASE_URL="postgresql://u:hunter2@[oops/db"\n') }], dryRun: true });
    expect(out.error?.code).toBe('CREDENTIALS_INVALID');
    expect(out.error!.message + out.logs.join('')).not.toContain('hunter2');
  });

  it('CREDENTIALS_REJECTED for a wrong password', async () => {
    const out = await runStages({ stages: [{ use, envFile: await envFile('wrong.env', mastodonEnv('wrong-password')) }], dryRun: true });
    expect(out.error?.code).toBe('CREDENTIALS_REJECTED');
    expect(out.error?.plugin).toBe('credentials');
    expect(out.error?.hook).toBe('preflight');
    expect(out.error?.message + (out.error?.hint ?? '') + out.logs.join('')).not.toContain('wrong-password');
  });

  it('DATABASE_NOT_FOUND for a missing database', async () => {
    const text = mastodonEnv().replace('DB_NAME=mastodon_test', 'DB_NAME=no_such_db');
    const out = await runStages({ stages: [{ use, envFile: await envFile('nodb.env', text) }], dryRun: true });
    expect(out.error?.code).toBe('DATABASE_NOT_FOUND');
    expect(out.error?.message).toContain('no_such_db');
  });

  it('SOURCE_UNREACHABLE when the server is down', async () => {
    const file = await envFile('down.env', mastodonEnv());
    await pg.halt();
    try {
      const out = await runStages({ stages: [{ use, envFile: file }], dryRun: true });
      expect(out.error?.code).toBe('SOURCE_UNREACHABLE');
      expect(out.error?.hint).toMatch(/running/);
    } finally {
      await pg.restart();
    }
  });

  it('INSUFFICIENT_PRIVILEGE names the GRANT, and passes once granted', async () => {
    const stage = { use, from: 'options', host: '127.0.0.1', port: pg.port, database: 'mastodon_test', user: 'reader', passwordFile: await envFile('reader.pw', 'reader-pw\n') };
    const out = await runStages({ stages: [stage], dryRun: true });
    expect(out.error?.code, JSON.stringify((out.error?.cause as { details?: unknown } | undefined)?.details)).toBe('INSUFFICIENT_PRIVILEGE');
    expect(out.error?.hint).toContain('GRANT pg_read_all_data TO "reader"');
    await pg.psql('GRANT pg_read_all_data TO reader;');
    const ok = await runStages({ stages: [stage], dryRun: true });
    expect(ok.error).toBeUndefined();
    await pg.psql('REVOKE pg_read_all_data FROM reader;');
  });

  it('CREDENTIALS_FILE_UNREADABLE for a missing env file', async () => {
    const out = await runStages({ stages: [{ use, envFile: join(dir, 'absent.env') }], dryRun: true });
    expect(out.error?.code).toBe('CREDENTIALS_FILE_UNREADABLE');
    expect(out.error?.hook).toBe('connect');
  });

  it('CREDENTIALS_MISSING names the keys', async () => {
    const out = await runStages({ stages: [{ use, envFile: await envFile('nokeys.env', 'LOCAL_DOMAIN=x\n') }], dryRun: true });
    expect(out.error?.code).toBe('CREDENTIALS_MISSING');
    expect(out.error?.message).toMatch(/DB_HOST, DB_NAME, DB_USER/);
  });

  it('ENV_FILE_INVALID names file and line, not the value', async () => {
    const file = await envFile('broken.env', `DB_HOST=127.0.0.1\nDB_PASS="${'topsecret'}\n`);
    const out = await runStages({ stages: [{ use, envFile: file }], dryRun: true });
    expect(out.error?.code).toBe('ENV_FILE_INVALID');
    expect(out.error?.message).toContain(`${file} line 2`);
    expect(out.error?.message + out.logs.join('')).not.toContain('topsecret');
  });

  it('rejects options that do not fit the source at config validation', async () => {
    await expect(runStages({ stages: [{ use, from: 'mastodon', host: 'x' }], dryRun: true })).rejects.toThrow(/stages\[0\]\.host: only used with from: options or pgpass/);
    await expect(runStages({ stages: [{ use, from: 'options', user: 'x' }], dryRun: true })).rejects.toThrow(/stages\[0\]\.database: required/);
  });

  it('reads PG* variables (from: env) and an existing .pgpass (from: pgpass)', async () => {
    const saved = { ...process.env };
    Object.assign(process.env, { PGHOST: '127.0.0.1', PGPORT: String(pg.port), PGDATABASE: 'mastodon_test', PGUSER: 'mastodon', PGPASSWORD: PASSWORD });
    try {
      const out = await runStages({ stages: [{ use, from: 'env' }], dryRun: true });
      expect(out.error).toBeUndefined();
    } finally {
      for (const k of ['PGHOST', 'PGPORT', 'PGDATABASE', 'PGUSER', 'PGPASSWORD']) delete process.env[k];
      Object.assign(process.env, saved);
    }
    const passFile = await pg.writePassFile('mastodon', PASSWORD);
    const out = await runStages({ stages: [{ use, from: 'pgpass', pgpassFile: passFile, host: '127.0.0.1', port: pg.port, database: 'mastodon_test', user: 'mastodon' }], dryRun: true });
    expect(out.error).toBeUndefined();
  });
});
