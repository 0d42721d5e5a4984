/**
 * Integrity: a run that says "ok" is always restorable, and retention never deletes a good set.
 * Each case is one of the ways issue 8 found to lose every backup while runs exit 0, reproduced
 * through the real CLI against a real cluster: a weak password that occurs in set ids, a value the
 * core did not know, a manifest that names a path outside the set, and damaged sets that pushed
 * good ones out of retention.
 */
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { mastodonEnvText } from '@backup-pipeline/testing';
import { assertCleanedUp, assertFailed, join, shimRecords, mastodonHost, project, sandbox, setStates, type MastodonHost, type Project, type Sandbox } from './support.js';

/** A weak but real-world password: the same word as the source name and the user. */
const WEAK = 'mastodon';

let host: MastodonHost;
let sb: Sandbox;

beforeAll(async () => {
  [host, sb] = await Promise.all([mastodonHost({ password: WEAK }), sandbox('integrity')]);
});

afterAll(async () => {
  await host?.pg.stop();
  await sb?.cleanup();
});

const databaseExists = async (name: string) => (await host.pg.psql(`SELECT count(*) FROM pg_database WHERE datname = '${name}'`, 'postgres'))[0]?.[0] === '1';

async function pipelineProject(name: string, retention: Record<string, unknown>, extraStages: unknown[] = []): Promise<{ p: Project; folder: string }> {
  const p = await project(sb, name, {
    destinations: { folder: { use: 'local', path: './backups' } },
    pipelines: {
      nightly: {
        source: 'mastodon',
        stages: [{ use: 'credentials', envFile: host.envFile }, { use: 'pg-dump' }, ...extraStages, { use: 'retention', incompleteGraceHours: 0, ...retention }],
        destinations: ['folder'],
      },
    },
  });
  const folder = join(p.dir, 'backups');
  sb.setRoots.add(folder);
  return { p, folder };
}

async function runOk(p: Project): Promise<void> {
  const out = await p.run();
  expect(out.exitCode, out.stderr).toBe(0);
}

const artifactOf = async (folder: string, id: string) => (await readdir(join(folder, id))).find((f) => f !== 'manifest.json' && f !== 'damaged.json')!;

describe('a weak password that occurs in set ids, names and numbers', () => {
  it('every run is complete and restorable, its manifest is unmasked, and retention keeps the newest sets', async () => {
    const { p, folder } = await pipelineProject('weak', { keepLast: 2 });
    for (let i = 0; i < 3; i++) await runOk(p);
    const states = await setStates(p);
    expect(states.folder!.complete).toHaveLength(2);
    expect(states.folder!.damaged).toEqual([]);
    expect(states.folder!.partial).toEqual([]);
    for (const id of states.folder!.complete) {
      expect(id).toMatch(/-mastodon$/);
      const manifest = JSON.parse(await readFile(join(folder, id, 'manifest.json'), 'utf8')) as { id: string; source: string };
      expect(manifest).toMatchObject({ id, source: 'mastodon' });
    }
    const restored = await p.cli(['restore', 'latest', '--from', 'folder', '--to', 'weak_restored']);
    expect(restored.exitCode, restored.stderr).toBe(0);
    expect(await databaseExists('weak_restored')).toBe(true);
    await assertCleanedUp(sb, p);
  });
});

describe('values the core does not know', () => {
  it('a stage that records compression "xz-test" and encryption "rot-test" gets a complete set that retention counts, and restore names what is missing', async () => {
    const pluginFile = join(sb.root, 'open-values.mjs');
    const core = import.meta.resolve('@backup-pipeline/core');
    await writeFile(
      pluginFile,
      `import { definePlugin } from ${JSON.stringify(core)};
export default definePlugin({
  name: 'open-values',
  description: 'declares a compression and an encryption method of its own',
  apply(hooks) {
    hooks.transform.tapPromise('open-values', async (artifact) => ({
      ...artifact,
      compression: 'xz-test',
      encryption: { method: 'rot-test', recipients: ['someone'] },
      plain: { name: artifact.name + '.plain', bytes: artifact.bytes, sha256: artifact.sha256 },
    }));
  },
});
`,
    );
    const { p } = await pipelineProject('open-values', { keepLast: 1 }, [{ use: pluginFile }]);
    await runOk(p);
    await runOk(p);
    const states = await setStates(p);
    expect(states.folder!.complete, 'a set with values the core does not know must be complete').toHaveLength(1);
    expect(states.folder!.damaged).toEqual([]);
    expect(states.folder!.partial).toEqual([]);
    const restore = await p.cli(['restore', 'latest', '--from', 'folder', '--to', 'open_restored']);
    expect(restore.exitCode).not.toBe(0);
    expect(restore.stderr).toContain('rot-test');
    expect(restore.stderr).not.toMatch(/SET_INCOMPLETE|MANIFEST_INVALID|CHECKSUM_MISMATCH/);
    expect(await databaseExists('open_restored')).toBe(false);
  });

  it('a stage that records a field the manifest format does not have fails the run with MANIFEST_INVALID naming it, and ships nothing', async () => {
    const pluginFile = join(sb.root, 'bad-value.mjs');
    const core = import.meta.resolve('@backup-pipeline/core');
    await writeFile(
      pluginFile,
      `import { definePlugin } from ${JSON.stringify(core)};
export default definePlugin({
  name: 'bad-value',
  description: 'records a compression that is not an identifier',
  apply(hooks) {
    hooks.transform.tapPromise('bad-value', async (artifact) => ({ ...artifact, compression: 'x z/../1' }));
  },
});
`,
    );
    const { p } = await pipelineProject('bad-value', { keepLast: 1 }, [{ use: pluginFile }]);
    const out = await p.run();
    assertFailed(out, 'MANIFEST_INVALID', ['artifacts[0].compression']);
    const states = await setStates(p);
    expect(states.folder?.complete ?? []).toEqual([]);
    expect(states.work?.complete ?? []).toEqual([]);
    await assertCleanedUp(sb, p);
  });
});

describe('damaged sets', () => {
  let p: Project;
  let folder: string;

  beforeAll(async () => {
    ({ p, folder } = await pipelineProject('damaged', { keepLast: 1 }));
  });

  it('a manifest naming a plaintext outside the set: the set is damaged, restore refuses it, nothing is written there', async () => {
    await runOk(p);
    const [id] = (await setStates(p)).folder!.complete as [string];
    const path = join(folder, id, 'manifest.json');
    const manifest = JSON.parse(await readFile(path, 'utf8')) as { artifacts: Array<Record<string, unknown>> };
    const target = join(sb.root, 'PWNED.dump');
    manifest.artifacts[0]!.plain = { name: '../'.repeat(16) + target.slice(1), bytes: 1, sha256: 'a'.repeat(64) };
    manifest.artifacts[0]!.encryption = { method: 'gpg', recipients: [] };
    await writeFile(path, JSON.stringify(manifest), { mode: 0o600 });
    const list = await p.cli(['list', '-d', 'folder']);
    expect(list.stdout).toMatch(new RegExp(`${id}.*DAMAGED: manifest field artifacts\\[0\\]\\.plain\\.name: not a valid file name`));
    for (const args of [['restore', id, '--from', 'folder', '--to', 'pwned'], ['verify', id, '--from', 'folder']]) {
      const out = await p.cli(args);
      assertFailed(out, 'SET_INCOMPLETE', [id, 'plain.name']);
    }
    expect(existsSync(target)).toBe(false);
    expect(await databaseExists('pwned')).toBe(false);
    // Retention keeps it and says so; the person's choice deletes it.
    const prune = await p.cli(['prune']);
    assertFailed(prune, 'SETS_DAMAGED', [`folder/${id}`]);
    expect((await setStates(p)).folder!.damaged).toEqual([id]);
    const chosen = await p.cli(['prune', '--delete-damaged', id]);
    expect(chosen.exitCode, chosen.stderr).toBe(0);
    expect((await setStates(p)).folder!.damaged).toEqual([]);
  });

  it('a truncated set, one with a missing artifact, an unparseable manifest, or a recorded checksum failure never fills a keep slot and is never deleted', async () => {
    // Four complete sets under a generous policy…
    ({ p, folder } = await pipelineProject('damaged', { keepLast: 5 }));
    for (let i = 0; i < 4; i++) await runOk(p);
    const [good, ...rest] = (await setStates(p)).folder!.complete as [string, string, string, string];
    expect(rest).toHaveLength(3);
    // …then the three newest are damaged, one way each, and the policy becomes keepLast 1.
    const damaged = rest;
    await truncate(join(folder, damaged[0]!, await artifactOf(folder, damaged[0]!)), 100);
    await rm(join(folder, damaged[1]!, await artifactOf(folder, damaged[1]!)));
    await writeFile(join(folder, damaged[2]!, 'manifest.json'), '{"format": "backup-pipeline/manifest@1", "id": "tru', { mode: 0o600 });
    ({ p, folder } = await pipelineProject('damaged', { keepLast: 1 }));

    const states = await setStates(p);
    expect(states.folder).toEqual({ complete: [good], damaged, partial: [] });
    const list = await p.cli(['list', '-d', 'folder']);
    expect(list.stdout).toMatch(new RegExp(`${damaged[0]}.*DAMAGED: .* is 100 bytes, the manifest says`));
    expect(list.stdout).toMatch(new RegExp(`${damaged[1]}.*DAMAGED: .* is missing`));
    expect(list.stdout).toMatch(new RegExp(`${damaged[2]}.*DAMAGED: manifest is not JSON`));
    // The damaged sets fill no keep slot: the good set is the newest complete one, and nothing is deleted.
    const dry = await p.cli(['prune', '--dry-run']);
    assertFailed(dry, 'SETS_DAMAGED', damaged.map((d) => `folder/${d}`));
    expect(dry.stdout).toContain(`keep ${good}: newest complete set`);
    const folderPlan = dry.stdout.slice(dry.stdout.indexOf('folder:'), dry.stdout.indexOf('work:'));
    expect(folderPlan).toContain('folder: keep 4, would delete 0');
    expect(folderPlan).not.toContain('would delete 2');
    const prune = await p.cli(['prune']);
    assertFailed(prune, 'SETS_DAMAGED', damaged.map((d) => `folder/${d}`));
    expect((await setStates(p)).folder).toEqual({ complete: [good], damaged, partial: [] });

    // The next run makes and ships a complete set, then says a person must look (exit 1).
    const next = await p.run();
    assertFailed(next, 'SETS_DAMAGED', damaged.map((d) => `folder/${d}`));
    const fresh = (await setStates(p)).folder!.complete.at(-1)!;
    expect(fresh).not.toBe(good);
    expect((await setStates(p)).folder).toEqual({ complete: [fresh], damaged, partial: [] });

    // A same-size flipped byte is found by verify and recorded in the set: from then on it is damaged.
    const file = join(folder, fresh, await artifactOf(folder, fresh));
    const bytes = await readFile(file);
    bytes[Math.floor(bytes.length / 2)]! ^= 0xff;
    await writeFile(file, bytes, { mode: 0o600 });
    const verify = await p.cli(['verify', fresh, '--from', 'folder']);
    assertFailed(verify, 'CHECKSUM_MISMATCH', [`folder/${fresh}`]);
    expect((await setStates(p)).folder).toEqual({ complete: [], damaged: [...damaged, fresh], partial: [] });
    const last = await p.run();
    assertFailed(last, 'SETS_DAMAGED', [`folder/${fresh}`]);
    const after = await setStates(p);
    expect(after.folder!.damaged).toEqual([...damaged, fresh]);
    expect(after.folder!.complete).toHaveLength(1);
    const restore = await p.cli(['restore', 'latest', '--from', 'folder', '--to', 'after_damage']);
    expect(restore.exitCode, restore.stderr).toBe(0);
    expect(await databaseExists('after_damage')).toBe(true);
    await assertCleanedUp(sb, p);
  });
});

describe('preflight refuses before any data moves', () => {
  async function limitedRole(name: string, grant: string): Promise<string> {
    await host.pg.createRole(name, 'limited-pass-1', { login: true });
    await host.pg.psql(grant, host.database);
    const envFile = join(sb.root, `${name}.env.production`);
    await writeFile(envFile, mastodonEnvText({ host: host.pg.host, port: host.pg.port, database: host.database, user: name, password: 'limited-pass-1' }), { mode: 0o600 });
    return envFile;
  }

  const pgDumpRan = async () => (await shimRecords(sb)).some((r) => r.tool === 'pg_dump' && !r.argv.includes('--version'));

  it('a restore test with a role that may not create databases restoring into the server (restoreInto: server) fails in preflight with VERIFY_RESTORE_UNAVAILABLE', async () => {
    const envFile = await limitedRole('no_createdb', `GRANT pg_read_all_data TO no_createdb`);
    const p = await project(sb, 'no-createdb', {
      destinations: { folder: { use: 'local', path: './backups' } },
      pipelines: { nightly: { source: 'mastodon', stages: [{ use: 'credentials', envFile }, { use: 'pg-dump' }, { use: 'verify', restoreTest: true, restoreInto: 'server' }], destinations: ['folder'] } },
    });
    await rm(sb.shimLog, { recursive: true, force: true }).then(() => mkdir(sb.shimLog));
    const out = await p.run();
    assertFailed(out, 'VERIFY_RESTORE_UNAVAILABLE', ['no_createdb', 'preflight']);
    expect(out.stderr).toContain('ALTER ROLE "no_createdb" CREATEDB');
    expect(await pgDumpRan(), 'pg_dump ran before the refusal').toBe(false);
    expect((await setStates(p)).work?.complete ?? []).toEqual([]);
    await assertCleanedUp(sb, p);
  });

  it('a role that cannot read a table fails in preflight with INSUFFICIENT_PRIVILEGE naming it', async () => {
    const envFile = await limitedRole('partial_reader', `GRANT USAGE ON SCHEMA public TO partial_reader; GRANT SELECT ON ALL TABLES IN SCHEMA public TO partial_reader; GRANT SELECT ON ALL SEQUENCES IN SCHEMA public TO partial_reader; REVOKE SELECT ON public.users FROM partial_reader`);
    const p = await project(sb, 'partial-reader', {
      destinations: { folder: { use: 'local', path: './backups' } },
      pipelines: { nightly: { source: 'mastodon', stages: [{ use: 'credentials', envFile }, { use: 'pg-dump' }], destinations: ['folder'] } },
    });
    await rm(sb.shimLog, { recursive: true, force: true }).then(() => mkdir(sb.shimLog));
    const out = await p.run();
    assertFailed(out, 'INSUFFICIENT_PRIVILEGE', ['partial_reader', 'public.users']);
    expect(await pgDumpRan(), 'pg_dump ran before the refusal').toBe(false);
    await assertCleanedUp(sb, p);
  });
});
