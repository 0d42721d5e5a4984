/**
 * One pass for backup (issue 11), against real PostgreSQL, gpg and age: pg-dump's stream is
 * verified (pg_restore --list and a full read, on named pipes fed by tee), compressed, hashed and
 * encrypted once, and written once. The sets restore with the real tools; the staged plaintext
 * never exists on disk when an encryption filter is used (a second pass would have to write it);
 * a failing verifier or encryptor stops the run with nothing shipped; a third-party transform
 * that only taps the file-based `transform` hook still works, after the stream.
 */
import { createHash } from 'node:crypto';
import { createReadStream, watch, type FSWatcher } from 'node:fs';
import { cp, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { createRequire } from 'node:module';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createLogger, isPipelineError, resolveConfig, Runner, type Manifest, type PipelineError, type RunResult } from '@backup-pipeline/core';
import { createGpgHome, generateMastodonData, loadMastodonSchema, startPostgres, tableRowCounts, type GpgHome, type PostgresServer } from '@backup-pipeline/testing';

const PASSWORD = `one:pa\\ss 'w"rd`;
const DB = 'mastodon_onepass';

let pg: PostgresServer;
let gpg: GpgHome;
let dir: string;
let counts: Record<string, number>;
let ageKey: string;
let agePublic: string;
const fixtures: Record<string, string> = {};
let n = 0;

beforeAll(async () => {
  [pg, gpg] = await Promise.all([startPostgres(), createGpgHome()]);
  await pg.createRole('mastodon', PASSWORD, {});
  await pg.createDatabase(DB, { owner: 'mastodon' });
  await loadMastodonSchema(pg, DB, { owner: 'mastodon' });
  await generateMastodonData(pg, DB, { scale: 'tiny', owner: 'mastodon' });
  counts = await tableRowCounts(pg, DB);
  dir = await mkdtemp(join(tmpdir(), 'bp-onepass-'));
  await writeFile(join(dir, 'pw'), PASSWORD + '\n', { mode: 0o600 });
  ageKey = join(dir, 'age.key');
  await execa('age-keygen', ['-o', ageKey]);
  agePublic = (await execa('age-keygen', ['-y', ageKey])).stdout.trim();
  const core = JSON.stringify(pathToFileURL(createRequire(import.meta.url).resolve('@backup-pipeline/core')).href);
  const fixture = async (name: string, body: string) => {
    fixtures[name] = join(dir, `${name}.mjs`);
    await writeFile(fixtures[name], `import { definePlugin, PipelineError, writeFileAtomic, z } from ${core};\nimport { createReadStream } from 'node:fs';\nimport { rm } from 'node:fs/promises';\n${body}`);
  };
  // A verifier whose stream consumer fails halfway through the dump (a corrupt read).
  await fixture(
    'failing-verifier',
    `export default definePlugin({ name: 'failing-verifier', description: 'test', options: z.object({}).strict(),
  apply(hooks) {
    hooks.verify.tapPromise('failing-verifier', async () => { throw new PipelineError('VERIFY_FAILED', 'file verify must not run'); });
    hooks.verifyStream.tapPromise('failing-verifier', async (request) => {
      request.attach({ command: 'sh', args: ['-c', 'head -c 20000 >/dev/null; exit 7'], label: 'corrupt-reader',
        fail: (e) => new PipelineError('VERIFY_FAILED', request.artifact.name + ': the stream is corrupt (' + e.message + ')') });
      request.claim();
    });
  } });`,
  );
  // A transform that only knows the file-based hook (as a community plugin written before the stream hooks).
  await fixture(
    'file-transform',
    `export default definePlugin({ name: 'file-transform', description: 'test', options: z.object({}).strict(),
  apply(hooks) {
    hooks.transform.tapPromise('file-transform', async (artifact) => {
      const path = artifact.path + '.wrapped';
      const d = await writeFileAtomic(path, createReadStream(artifact.path));
      await rm(artifact.path);
      return { ...artifact, name: artifact.name + '.wrapped', path, bytes: d.bytes, sha256: d.sha256 };
    });
  } });`,
  );
  // Removes a keyring during produce, before pg-dump streams: gpg fails in the middle of the chain.
  await fixture(
    'remove-keyring',
    `export default definePlugin({ name: 'remove-keyring', description: 'test', options: z.object({ home: z.string() }).strict(),
  apply(hooks, o) { hooks.produce.tapPromise('remove-keyring', async () => { await rm(o.home, { recursive: true, force: true }); }); } });`,
  );
}, 300_000);

afterAll(async () => {
  await pg?.stop();
  await gpg?.cleanup();
  if (dir) await rm(dir, { recursive: true, force: true });
});

interface Outcome {
  result?: RunResult;
  error?: PipelineError;
  logs: string[];
  root: string;
  workDir: string;
  folder: string;
  /** Every file name that appeared in the run's set folder while it ran. */
  seen: Set<string>;
}

async function run(stages: Array<Record<string, unknown>>): Promise<Outcome> {
  const root = join(dir, `run-${++n}`);
  const workDir = join(root, 'work');
  const folder = join(root, 'folder');
  const credentials = { use: 'credentials', from: 'options', host: '127.0.0.1', port: pg.port, database: DB, user: 'mastodon', passwordFile: join(dir, 'pw') };
  const config = await resolveConfig(join(root, 'pipeline.config.json'), {
    workDir,
    destinations: { folder: { use: 'local', path: folder } },
    pipelines: { nightly: { source: 'mastodon', stages: [credentials, ...stages], destinations: ['folder'] } },
  });
  const logs: string[] = [];
  const log = await createLogger({ secrets: config.secrets, format: 'json', level: 'debug', write: (l) => void logs.push(l) });
  const seen = new Set<string>();
  let watcher: FSWatcher | undefined;
  const out: Outcome = { logs, root, workDir, folder, seen };
  try {
    out.result = await new Runner(config, log).run('nightly', {
      observe: (hooks) => {
        // Watch the set folder from the moment the dump starts (inotify: every file created in it).
        hooks.preflight.tapPromise('observer', async (ctx) => {
          watcher = watch(ctx.setDir, (_event, name) => name && seen.add(String(name)));
        });
      },
    });
  } catch (error) {
    if (!isPipelineError(error)) throw error;
    out.error = error;
  } finally {
    watcher?.close();
  }
  return out;
}

const sha256 = async (path: string) => {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(path)) hash.update(chunk as Buffer);
  return hash.digest('hex');
};

/** Restores `file` (decrypted by `decrypt`, a shell pipeline's first command) with the real tools into a new database; returns its row counts. */
async function restoreWith(decrypt: string, file: string, env: Record<string, string> = {}): Promise<Record<string, number>> {
  const target = `restored_${n}_${Math.random().toString(36).slice(2, 7)}`;
  await pg.createDatabase(target, { owner: 'mastodon' });
  await execa('bash', ['-o', 'pipefail', '-c', `${decrypt} "$1" | zstd -q -d -c | "$2" --no-owner -h "$3" -p "$4" -U "$5" -d "$6"`, 'restore', file, join(pg.bindir, 'pg_restore'), pg.socketDir, String(pg.port), pg.superuser, target], {
    env: { ...process.env, ...env },
  });
  return tableRowCounts(pg, target);
}

const stageOf = (m: Manifest, plugin: string, hook: string) => m.stages.some((s) => s.plugin === plugin && s.hook === hook);

describe('one pass for backup', () => {
  it('verify + gpg: verified and encrypted on the stream, the plaintext never on disk, the set restores', async () => {
    const out = await run([{ use: 'pg-dump' }, { use: 'verify', expectTables: ['accounts', 'statuses'] }, { use: 'gpg', recipients: [gpg.fingerprint], gnupgHome: gpg.home }]);
    expect(out.error, out.logs.join('\n')).toBeUndefined();
    const m = out.result!.manifest!;
    const [a] = m.artifacts;
    expect(a!.name).toBe(`${DB}.dump.zst.gpg`);
    expect(a!.encryption).toMatchObject({ method: 'gpg', recipients: [gpg.fingerprint] });
    expect(a!.plain?.name).toBe(`${DB}.dump.zst`);
    expect(a!.meta.verification).toMatchObject({ listed: true, fullRead: true, tableData: Object.keys(counts).length });
    // The stream hooks did the work; the file-based verify and transform were not called.
    expect(stageOf(m, 'verify', 'verifyStream') && stageOf(m, 'gpg', 'transformFilter')).toBe(true);
    expect(stageOf(m, 'verify', 'verify') || stageOf(m, 'gpg', 'transform')).toBe(false);
    expect(out.logs.join('\n')).not.toMatch(/second pass/);
    // Read once: the compressed plaintext was never written into the set folder (not even as .partial).
    expect([...out.seen].filter((f) => !f.endsWith('.gpg') && !f.endsWith('.gpg.partial') && f !== 'manifest.json' && !f.startsWith('manifest.json'))).toEqual([]);
    expect([...out.seen]).toContain(`${DB}.dump.zst.gpg.partial`);

    // What was shipped is what the manifest says, both sides of the encryption.
    const set = join(out.folder, m.id);
    const shipped = join(set, a!.name);
    expect(await sha256(shipped)).toBe(a!.sha256);
    const plain = join(dir, `plain-${n}`);
    await execa('gpg', ['--batch', '--no-tty', '--quiet', '--decrypt', '--output', plain, shipped], { env: { ...process.env, GNUPGHOME: gpg.home } });
    expect(await sha256(plain)).toBe(a!.plain!.sha256);
    expect(await restoreWith('gpg --batch --no-tty --quiet --decrypt', shipped, { GNUPGHOME: gpg.home })).toEqual(counts);
    expect((await readdir(set)).sort()).toEqual([a!.name, 'manifest.json'].sort());
  });

  it('verify + age: the same, with age as the filter', async () => {
    const out = await run([{ use: 'pg-dump' }, { use: 'verify', expectTables: ['accounts'] }, { use: 'age', recipients: [agePublic], identityFile: ageKey }]);
    expect(out.error, out.logs.join('\n')).toBeUndefined();
    const m = out.result!.manifest!;
    const [a] = m.artifacts;
    expect(a!.name).toBe(`${DB}.dump.zst.age`);
    expect(a!.encryption).toMatchObject({ method: 'age', recipients: [agePublic] });
    expect(stageOf(m, 'age', 'transformFilter') && !stageOf(m, 'age', 'transform')).toBe(true);
    expect([...out.seen].filter((f) => f.startsWith(`${DB}.dump.zst`) && !f.includes('.age'))).toEqual([]);
    const shipped = join(out.folder, m.id, a!.name);
    expect(await sha256(shipped)).toBe(a!.sha256);
    expect(await restoreWith(`age --decrypt -i ${JSON.stringify(ageKey)}`, shipped)).toEqual(counts);
  });

  it('a verifier whose stream reader fails stops the run: nothing shipped, no set anywhere', async () => {
    const out = await run([{ use: 'pg-dump' }, { use: fixtures['failing-verifier']! }, { use: 'gpg', recipients: [gpg.fingerprint], gnupgHome: gpg.home }]);
    expect(out.error?.code, out.error?.message).toBe('VERIFY_FAILED');
    expect(out.error!.message).toMatch(/the stream is corrupt/);
    expect(out.error!.plugin).toBe('failing-verifier');
    expect(out.error!.hook).toBe('verifyStream');
    expect(await readdir(out.folder).catch(() => [])).toEqual([]);
    expect((await readdir(out.workDir)).filter((f) => !f.startsWith('.'))).toEqual([]);
  });

  it('verify refusing what it read on the stream (expected tables missing) ships nothing', async () => {
    const out = await run([{ use: 'pg-dump' }, { use: 'verify', expectTables: ['no_such_table'] }, { use: 'age', recipients: [agePublic] }]);
    expect(out.error?.code).toBe('VERIFY_FAILED');
    expect(out.error!.message).toMatch(/expected tables are missing from the dump: no_such_table/);
    expect(await readdir(out.folder).catch(() => [])).toEqual([]);
    expect((await readdir(out.workDir)).filter((f) => !f.startsWith('.'))).toEqual([]);
  });

  it('an encryptor that fails in the chain stops the run with its own error, nothing shipped', async () => {
    const home = join(dir, 'doomed-gnupg');
    await cp(gpg.home, home, { recursive: true, filter: (src) => !/S\.gpg-agent|\.lock$/.test(src) });
    const out = await run([
      { use: fixtures['remove-keyring']!, home },
      { use: 'pg-dump' },
      { use: 'verify', expectTables: ['accounts'] },
      { use: 'gpg', recipients: [gpg.fingerprint], gnupgHome: home },
    ]);
    expect(out.error?.code, out.logs.join('\n')).toBe('GPG_ENCRYPT_FAILED');
    expect(out.error!.plugin).toBe('gpg');
    expect(out.error!.hook).toBe('transformFilter');
    expect(await readdir(out.folder).catch(() => [])).toEqual([]);
    expect((await readdir(out.workDir)).filter((f) => !f.startsWith('.'))).toEqual([]);
  });

  it('a third-party transform with only the file-based hook still runs, after the stream (a second pass, said in the log)', async () => {
    const out = await run([{ use: 'pg-dump' }, { use: 'verify', expectTables: ['accounts'] }, { use: 'gpg', recipients: [gpg.fingerprint], gnupgHome: gpg.home }, { use: fixtures['file-transform']! }]);
    expect(out.error, out.logs.join('\n')).toBeUndefined();
    const m = out.result!.manifest!;
    const [a] = m.artifacts;
    expect(a!.name).toBe(`${DB}.dump.zst.gpg.wrapped`);
    expect(stageOf(m, 'gpg', 'transformFilter') && stageOf(m, 'file-transform', 'transform')).toBe(true);
    expect(out.logs.join('\n')).toMatch(/file-transform will transform .* from the staged file after the stream \(for a transform that reads it, a second pass over the data\)/);
    const shipped = join(out.folder, m.id, a!.name);
    expect(await sha256(shipped)).toBe(a!.sha256);
    expect(await restoreWith('gpg --batch --no-tty --quiet --decrypt', shipped, { GNUPGHOME: gpg.home })).toEqual(counts);

    // Before gpg in the stage order, it keeps its place: nothing is spliced, both transform the file.
    const before = await run([{ use: 'pg-dump' }, { use: 'verify', expectTables: ['accounts'] }, { use: fixtures['file-transform']! }, { use: 'gpg', recipients: [gpg.fingerprint], gnupgHome: gpg.home }]);
    expect(before.error, before.logs.join('\n')).toBeUndefined();
    expect(before.result!.manifest!.artifacts[0]!.name).toBe(`${DB}.dump.zst.wrapped.gpg`);
    expect(stageOf(before.result!.manifest!, 'gpg', 'transform')).toBe(true);
  });
});
