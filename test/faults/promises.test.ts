/**
 * Targeted break tests for the integration promises that unit tests and mutation testing cannot
 * reach cheaply (see test/promises.md): each goes through the real CLI against real services.
 *
 * - a same-size corruption of an unencrypted, uncompressed custom dump fails restore and verify
 *   with CHECKSUM_MISMATCH and creates no database;
 * - kill -9 in the middle of an upload leaves no set listed complete on any destination, and every
 *   set that is listed complete anywhere verifies by content;
 * - a plugin that logs a registered secret raw, JSON-escaped and URL-encoded, in the json and the
 *   pretty log formats, yields only masked lines.
 */
import { mkdir, readFile, symlink, writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFaultProxy, startS3Server, type FaultProxy, type S3Server } from '@backup-pipeline/testing';
import { ROOT } from '../e2e/support.js';
import {
  assertCleanedUp,
  assertFailed,
  HOSTILE_PASSWORD,
  join,
  listSets,
  mastodonHost,
  project,
  sandbox,
  scanForSecrets,
  waitFor,
  writeRandomFile,
  verifyCompleteSets,
  type MastodonHost,
  type Project,
  type Sandbox,
} from './support.js';

let host: MastodonHost;
let sb: Sandbox;
let s3: S3Server;
let proxy: FaultProxy;

beforeAll(async () => {
  [host, sb, s3] = await Promise.all([mastodonHost(), sandbox('promises'), startS3Server()]);
  proxy = await startFaultProxy(s3.endpoint);
});

afterAll(async () => {
  if (sb) await scanForSecrets(sb, [HOSTILE_PASSWORD]);
  await proxy?.stop();
  await Promise.all([host?.pg.stop(), s3?.stop()]);
  await sb?.cleanup();
});

interface ListedSet {
  id: string;
  complete: boolean;
  state?: string;
}

/** `pipeline list --json` as `{ destination: sets }`, with each set's state. */
async function listStates(p: Project): Promise<Record<string, ListedSet[]>> {
  const out = await p.cli(['list', '--json']);
  expect(out.exitCode, out.stderr).toBe(0);
  const parsed = JSON.parse(out.stdout) as Array<{ destination: string; sets: ListedSet[] }>;
  return Object.fromEntries(parsed.map((d) => [d.destination, d.sets]));
}

async function databaseExists(name: string): Promise<boolean> {
  return (await host.pg.psql(`SELECT 1 FROM pg_database WHERE datname = '${name}'`)).length > 0;
}

describe('integration promises', () => {
  it('a same-size corruption of an unencrypted, uncompressed custom dump fails verify and restore with CHECKSUM_MISMATCH and creates no database', async () => {
    const p = await project(sb, 'tamper', {
      destinations: { a: { use: 'local', path: './a' }, b: { use: 'local', path: './b' } },
      pipelines: {
        nightly: {
          source: 'mastodon',
          stages: [
            { use: 'credentials', envFile: host.envFile },
            { use: 'pg-dump', format: 'custom', compression: { method: 'none' } },
          ],
          destinations: ['a', 'b'],
        },
      },
    });
    for (const d of ['a', 'b']) sb.setRoots.add(join(p.dir, d));
    const run = await p.run();
    expect(run.exitCode, run.stderr).toBe(0);
    const [setId] = (await listSets(sb, p)).a!.complete;
    expect(setId).toBeDefined();
    const manifest = JSON.parse(await readFile(join(p.dir, 'a', setId!, 'manifest.json'), 'utf8')) as { artifacts: Array<{ name: string; format: string; compression: string; encryption?: unknown }> };
    const dump = manifest.artifacts.find((a) => a.format === 'pg-custom')!;
    expect(dump).toMatchObject({ compression: 'none' });
    expect(dump.encryption).toBeUndefined();

    // The intact copy restores (so a restore of the tampered one would succeed if nothing checked it).
    const control = await p.cli(['restore', setId!, '--from', 'b', '--to', 'promises_control']);
    expect(control.exitCode, control.stderr).toBe(0);
    expect(await databaseExists('promises_control')).toBe(true);

    // Change one letter of a row's data, in place: same size, still a well-formed archive.
    const [[username]] = (await host.pg.psql(`SELECT username FROM accounts WHERE length(username) >= 6 ORDER BY id LIMIT 1`, host.database)) as [[string]];
    for (const d of ['a', 'b']) {
      const path = join(p.dir, d, setId!, dump.name);
      const bytes = await readFile(path);
      const at = bytes.indexOf(Buffer.from(username!));
      expect(at, `${username} in the dump`).toBeGreaterThan(0);
      const before = bytes.length;
      bytes[at] = bytes[at] === 0x71 ? 0x78 : 0x71; // 'q' or 'x'
      await writeFile(path, bytes);
      expect((await readFile(path)).length).toBe(before);
    }

    const verify = await p.cli(['verify', setId!, '--from', 'a']);
    assertFailed(verify, 'CHECKSUM_MISMATCH', [dump.name]);
    const restore = await p.cli(['restore', setId!, '--from', 'b', '--to', 'promises_tampered']);
    assertFailed(restore, 'CHECKSUM_MISMATCH', [dump.name]);
    expect(await databaseExists('promises_tampered'), 'restore created the database from a tampered dump').toBe(false);
    // The failure was recorded: neither tampered copy is listed complete any more.
    const after = await listSets(sb, p);
    expect(after.a!.complete).not.toContain(setId);
    expect(after.b!.complete).not.toContain(setId);
    await assertCleanedUp(sb, p);
  });

  it('kill -9 in the middle of an upload leaves no set listed complete on any destination; every complete set still verifies; the next run succeeds', async () => {
    const media = join(sb.root, 'kill9-media');
    await mkdir(media, { recursive: true });
    await writeRandomFile(join(media, 'big.bin'), 24 * 1024 * 1024);
    const p = await project(sb, 'kill9', {
      destinations: {
        bucket: { use: 's3', bucket: s3.bucket, prefix: 'kill9/', endpoint: proxy.endpoint, forcePathStyle: true, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey, maxAttempts: 2 },
      },
      pipelines: {
        nightly: {
          source: 'mastodon',
          stages: [
            { use: 'credentials', envFile: host.envFile },
            { use: 'pg-dump' },
            { use: 'files', mediaDir: media, compression: 'none' },
          ],
          destinations: ['bucket'],
        },
      },
    });
    // An earlier good set, so "no good set lost" is not vacuous.
    const good = await p.run();
    expect(good.exitCode, good.stderr).toBe(0);
    const before = await listStates(p);
    const goodIds = before.bucket!.filter((s) => s.complete).map((s) => s.id);
    expect(goodIds).toHaveLength(1);

    const lines: string[] = [];
    const child = p.run(['--log-level', 'debug']);
    child.stderr?.on('data', (d: Buffer) => lines.push(...d.toString().split('\n')));
    await waitFor('the set to be complete in the work dir', () => lines.some((l) => l.includes('is complete in the work dir')), 120_000);
    proxy.setMode({ kind: 'delay', ms: 1500 });
    const requests = proxy.stats.requests;
    // At least one upload request reached the bucket since shipping began: the upload is in flight.
    await waitFor('an upload request in flight', () => proxy.stats.requests > requests, 30_000);
    child.kill('SIGKILL');
    const out = await child;
    proxy.setMode({ kind: 'pass' });
    expect(out.signal).toBe('SIGKILL');

    const after = await listStates(p);
    const newSets = after.bucket!.filter((s) => !goodIds.includes(s.id));
    expect(newSets.filter((s) => s.complete), 'a set of the killed run is listed complete in the bucket').toEqual([]);
    // No manifest reached the bucket: the killed run's set there is partial, not damaged.
    for (const s of newSets) if (s.state !== undefined) expect(s.state, `${s.id} in the bucket`).toBe('partial');
    expect(after.bucket!.filter((s) => s.complete).map((s) => s.id)).toEqual(goodIds);
    // Every set listed complete anywhere (the bucket's good set, the work dir's copies) is whole.
    expect(await verifyCompleteSets(p)).toBeGreaterThanOrEqual(1);

    // The next run takes over the dead run's lock, succeeds, and its set verifies.
    const next = await p.run();
    expect(next.exitCode, next.stderr).toBe(0);
    const final = await listStates(p);
    expect(final.bucket!.filter((s) => s.complete)).toHaveLength(2);
    expect(await verifyCompleteSets(p)).toBeGreaterThanOrEqual(2);
    // Crash recovery (issue 8): the next run removed the dead run's scratch (its password file) and the lock is free.
    await assertCleanedUp(sb, p);
  });

  describe.each(['json', 'pretty'])('a plugin that logs a registered secret (--log-format %s)', (format) => {
    const secret = 'Pl"ug in\\s3cr&t/é';
    const forms = { raw: secret, json: JSON.stringify(secret).slice(1, -1), url: encodeURIComponent(secret) };

    it('prints only masked lines: raw, JSON-escaped, URL-encoded, in a message and in a field', async () => {
      const p = await project(sb, `leaky-${format}`, {
        destinations: { copy: { use: './leaky.mjs', path: './copy' } },
        pipelines: { nightly: { stages: [{ use: './leaky.mjs' }], destinations: ['copy'] } },
      });
      sb.setRoots.add(join(p.dir, 'copy'));
      await mkdir(join(p.dir, 'node_modules', '@backup-pipeline'), { recursive: true });
      await symlink(join(ROOT, 'packages', 'core'), join(p.dir, 'node_modules', '@backup-pipeline', 'core'));
      await writeFile(
        join(p.dir, 'leaky.mjs'),
        `
import { definePlugin, LocalFolderDestination, writeFileAtomic, z } from '@backup-pipeline/core';
import { join } from 'node:path';
const secret = ${JSON.stringify(secret)};
export default definePlugin({
  name: 'leaky',
  description: 'registers a secret, then logs it every way it can',
  destination: { options: z.object({ path: z.string() }).strict(), create: (o, api) => new LocalFolderDestination(api.resolvePath(o.path)) },
  options: z.object({}).strict(),
  apply(hooks) {
    hooks.connect.tapPromise('leaky', async (ctx) => { ctx.secrets.add(secret); });
    hooks.produce.tapPromise('leaky', async (ctx) => {
      ctx.log.info('leak raw ' + secret);
      ctx.log.info('leak json ' + JSON.stringify(secret).slice(1, -1));
      ctx.log.info('leak url ' + encodeURIComponent(secret));
      ctx.log.warn({ leaked: secret, nested: { url: 'postgres://u:' + encodeURIComponent(secret) + '@h/db' } }, 'leak field');
      const path = join(ctx.setDir, 'data.txt');
      const digest = await writeFileAtomic(path, 'data');
      ctx.addArtifact({ name: 'data.txt', path, kind: 'test', format: 'file', compression: 'none', meta: {}, ...digest });
    });
  },
});
`,
      );
      const out = await p.cli(['run', '--log-format', format]);
      const printed = `${out.stdout}\n${out.stderr}`;
      for (const [form, value] of Object.entries(forms)) expect(printed.includes(value), `the ${form} form of the secret was printed:\n${printed}`).toBe(false);
      // The secret's characters never appear in a recognisable piece either (the masker replaces whole values).
      expect(printed).not.toContain('s3cr&t');
      expect(printed).not.toContain('s3cr%26t');
      expect(out.exitCode, printed).toBe(0);
      // Each leak line is there, masked (so the test would see an unmasked one).
      for (const what of ['raw', 'json', 'url']) expect(printed).toMatch(new RegExp(`leak ${what} \\*\\*\\*`));
      expect(printed).toContain('leak field');
      if (format === 'json') {
        const field = printed.split('\n').find((l) => l.includes('leak field'))!;
        expect(JSON.parse(field)).toMatchObject({ leaked: '***', nested: { url: 'postgres://u:***@h/db' } });
      } else {
        expect(printed).toMatch(/leaked.*\*\*\*/);
      }
      await scanForSecrets(sb, Object.values(forms));
    });
  });
});
