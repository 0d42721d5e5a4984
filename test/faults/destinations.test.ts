/**
 * Destination faults, tampering with stored sets, and a clock behind the newest set — through the
 * real CLI, against a real cluster, sshd (rsync), s3rver behind a fault proxy, and gpg.
 */
import { cp, mkdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { execa } from 'execa';
import { createGpgHome, startFaultProxy, startS3Server, startSshd, type FaultProxy, type GpgHome, type S3Server, type SshServer } from '@backup-pipeline/testing';
import {
  assertCleanedUp,
  assertFailed,
  HOSTILE_PASSWORD,
  join,
  listSets,
  mastodonHost,
  project,
  runHeldInDump,
  writeRandomFile,
  sandbox,
  requireOrSkip,
  scanForSecrets,
  verifyCompleteSets,
  type DestinationSets,
  type MastodonHost,
  type Project,
  type Sandbox,
} from './support.js';

let host: MastodonHost;
let sb: Sandbox;
let gpg: GpgHome;
let sshd: SshServer;
let s3: S3Server;
let proxy: FaultProxy;
let p: Project;
let remote: string;
let local: string;
const mounts: string[] = [];

function config(extraDestinations: Record<string, unknown> = {}, nasPath?: string) {
  return {
    destinations: {
      folder: { use: 'local', path: './backups' },
      nas: { use: 'rsync', target: `${sshd.user}@127.0.0.1:${nasPath ?? remote}`, port: sshd.port, identityFile: sshd.identityFile, knownHostsFile: sshd.knownHostsFile, connectTimeoutSeconds: 5 },
      bucket: { use: 's3', bucket: s3.bucket, prefix: 'faults/', endpoint: proxy.endpoint, forcePathStyle: true, accessKeyId: s3.accessKeyId, secretAccessKey: `\${file:${join(sb.root, 's3-secret')}}`, maxAttempts: 2, partSizeMB: 5 },
      ...extraDestinations,
    },
    pipelines: {
      nightly: {
        source: 'mastodon',
        stages: [{ use: 'credentials', envFile: host.envFile }, { use: 'pg-dump' }, { use: 'gpg', recipients: [gpg.fingerprint], gnupgHome: gpg.home }, { use: 'retention', keepLast: 2, incompleteGraceHours: 0 }],
        destinations: ['folder', 'nas', 'bucket'],
      },
    },
  };
}

beforeAll(async () => {
  [host, sb, gpg, sshd, s3] = await Promise.all([mastodonHost(), sandbox('destinations'), createGpgHome(), startSshd(), startS3Server()]);
  proxy = await startFaultProxy(s3.endpoint);
  await writeFile(join(sb.root, 's3-secret'), s3.secretAccessKey + '\n', { mode: 0o600 });
  remote = join(sshd.dir, 'remote-backups');
  p = await project(sb, 'main', config());
  local = join(p.dir, 'backups');
  sb.setRoots.add(local);
  sb.setRoots.add(remote);
  const first = await p.run();
  expect(first.exitCode, first.stderr).toBe(0);
});

afterAll(async () => {
  if (sb) await scanForSecrets(sb, [HOSTILE_PASSWORD, s3?.secretAccessKey ?? '']);
  for (const m of mounts) await execa('umount', [m], { reject: false });
  await proxy?.stop();
  await Promise.all([host?.pg.stop(), gpg?.cleanup(), sshd?.cleanup(), s3?.stop()]);
  await sb?.cleanup();
});

/** Sets of a destination that appeared since `before`. */
const added = (before: DestinationSets | undefined, after: DestinationSets | undefined) => ({
  complete: (after?.complete ?? []).filter((id) => !before?.complete.includes(id)),
  incomplete: (after?.incomplete ?? []).filter((id) => !before?.incomplete.includes(id)),
});

async function nextRunSucceeds(q: Project = p): Promise<void> {
  proxy.setMode({ kind: 'pass' });
  // What the fault left listed complete is whole (checked by content, not by the listing).
  await verifyCompleteSets(q);
  const out = await q.run();
  expect(out.exitCode, out.stderr).toBe(0);
  const sets = await listSets(sb, q);
  for (const [name, d] of Object.entries(sets)) expect(d.incomplete, `incomplete sets in ${name}`).toEqual([]);
  await assertCleanedUp(sb, q);
}

/** Every set complete before is still complete; no destination gained a set. */
function unchanged(before: Record<string, DestinationSets>, after: Record<string, DestinationSets>): void {
  for (const [name, d] of Object.entries(before)) {
    expect(after[name]!.complete, `a good set disappeared from ${name}`).toEqual(expect.arrayContaining(d.complete));
    expect(added(d, after[name]), `${name} gained a set`).toEqual({ complete: [], incomplete: [] });
  }
}

describe('destination faults', () => {
  it('sshd stopped: the run fails in preflight naming the rsync destination; nothing moves anywhere', async () => {
    const before = await listSets(sb, p);
    await sshd.stop();
    try {
      const out = await p.run();
      assertFailed(out, 'DESTINATION_FAILED', ['"nas"', 'preflight']);
      await assertCleanedUp(sb, p);
    } finally {
      await sshd.restart();
    }
    unchanged(before, await listSets(sb, p));
    await nextRunSucceeds();
  });

  it('an rsync target that is not writable (read-only file system) fails naming the destination', async (ctx) => {
    const ro = join(sshd.dir, 'read-only');
    await mkdir(ro, { recursive: true });
    const mounted = await execa('mount', ['-t', 'tmpfs', '-o', 'size=16m', 'tmpfs', ro], { reject: false });
    requireOrSkip(ctx, mounted.exitCode === 0, `cannot mount a tmpfs (${mounted.stderr.trim()})`);
    mounts.push(ro);
    // The sshd user owns the target, as a real backup user would.
    await execa('chown', [sshd.user, ro]);
    const q = await project(sb, 'read-only-nas', config({}, join(ro, 'backups')));
    sb.setRoots.add(join(q.dir, 'backups'));
    // An earlier good set on every destination (the target still writable), so "no good set lost" is not vacuous.
    const good = await q.run();
    expect(good.exitCode, good.stderr).toBe(0);
    await execa('mount', ['-o', 'remount,ro', ro]);
    const before = await listSets(sb, q);
    expect(before.nas!.complete).toHaveLength(1);
    const out = await q.run();
    assertFailed(out, 'DESTINATION_FAILED', ['"nas"', /Read-only file system|writable|mkdir/]);
    unchanged(before, await listSets(sb, q));
    await assertCleanedUp(sb, q);
    expect(await verifyCompleteSets(q)).toBeGreaterThanOrEqual(4);
    // Writable again: the next run succeeds.
    await execa('mount', ['-o', 'remount,rw', ro]);
    await nextRunSucceeds(q);
  });

  it('S3 answering 500 fails in preflight naming the bucket destination and the S3 error', async () => {
    const before = await listSets(sb, p);
    proxy.setMode({ kind: 'status', status: 500 });
    const out = await p.run();
    proxy.setMode({ kind: 'pass' });
    assertFailed(out, 'DESTINATION_FAILED', ['"bucket"', /InternalError|500/]);
    unchanged(before, await listSets(sb, p));
    await assertCleanedUp(sb, p);
    await nextRunSucceeds();
  });

  it('S3 answering 503 after preflight: the run fails naming the bucket, the other destinations keep a complete set', async () => {
    const before = await listSets(sb, p);
    const out = await runHeldInDump(sb, host, p, async () => proxy.setMode({ kind: 'status', status: 503 }));
    proxy.setMode({ kind: 'pass' });
    assertFailed(out, 'DESTINATION_FAILED', ['"bucket"', /SlowDown|503/]);
    expect(out.stderr.split('\n').find((l) => l.startsWith('error '))).not.toMatch(/"folder"|"nas"/);
    const after = await listSets(sb, p);
    expect(added(before.bucket, after.bucket)).toEqual({ complete: [], incomplete: [] });
    const made = added(before.folder, after.folder).complete;
    expect(made).toHaveLength(1);
    expect(added(before.nas, after.nas)).toEqual({ complete: made, incomplete: [] });
    expect(added(before.work, after.work)).toEqual({ complete: made, incomplete: [] });
    for (const [name, d] of Object.entries(before)) expect(after[name]!.complete).toEqual(expect.arrayContaining(d.complete));
    await assertCleanedUp(sb, p);
    await nextRunSucceeds();
  });

  it('sshd stopped mid-run: the run fails naming the rsync destination, the others keep a complete set', async () => {
    const before = await listSets(sb, p);
    let out;
    try {
      out = await runHeldInDump(sb, host, p, () => sshd.stop());
    } finally {
      await sshd.restart();
    }
    assertFailed(out, 'DESTINATION_FAILED', ['"nas"']);
    expect(out.stderr.split('\n').find((l) => l.startsWith('error '))).not.toMatch(/"folder"|"bucket"/);
    const after = await listSets(sb, p);
    expect(added(before.nas, after.nas)).toEqual({ complete: [], incomplete: [] });
    const made = added(before.folder, after.folder).complete;
    expect(made).toHaveLength(1);
    expect(added(before.bucket, after.bucket)).toEqual({ complete: made, incomplete: [] });
    // The complete set in the bucket really is one: verify it from there.
    const verified = await p.cli(['verify', made[0]!, '--from', 'bucket']);
    expect(verified.exitCode, verified.stderr).toBe(0);
    await assertCleanedUp(sb, p);
    await nextRunSucceeds();
  });

  it('S3 dropping the connection mid-multipart: the run fails naming the bucket; no partial set in it', async () => {
    const media = join(sb.root, 'media');
    await mkdir(media, { recursive: true });
    await writeRandomFile(join(media, 'big.bin'), 12 * 1024 * 1024);
    const q = await project(sb, 'multipart', {
      ...config(),
      pipelines: {
        nightly: {
          source: 'mastodon',
          stages: [{ use: 'credentials', envFile: host.envFile }, { use: 'pg-dump' }, { use: 'files', mediaDir: media, compression: 'none' }],
          destinations: ['folder', 'bucket'],
        },
      },
    });
    sb.setRoots.add(join(q.dir, 'backups'));
    const before = await listSets(sb, q);
    const out = await runHeldInDump(sb, host, q, async () => proxy.setMode({ kind: 'drop-after', bytes: 1024 * 1024 }));
    const faults = proxy.stats.faults;
    proxy.setMode({ kind: 'pass' });
    expect(faults).toBeGreaterThan(0);
    assertFailed(out, 'DESTINATION_FAILED', ['"bucket"']);
    const after = await listSets(sb, q);
    expect(added(before.bucket, after.bucket)).toEqual({ complete: [], incomplete: [] });
    expect(added(before.folder, after.folder).complete).toHaveLength(1);
    await assertCleanedUp(sb, q);
    await nextRunSucceeds(q);
  });
});

describe('tampering with stored sets', () => {
  async function newestComplete(name: string): Promise<string> {
    const sets = await listSets(sb, p);
    const id = sets[name]!.complete.at(-1);
    expect(id).toBeDefined();
    return id!;
  }
  async function artifactOf(dir: string, id: string): Promise<string> {
    const manifest = JSON.parse(await readFile(join(dir, id, 'manifest.json'), 'utf8')) as { artifacts: Array<{ name: string; kind: string }> };
    return manifest.artifacts.find((a) => a.kind === 'database')!.name;
  }
  async function databaseExists(name: string): Promise<boolean> {
    return (await host.pg.psql(`SELECT 1 FROM pg_database WHERE datname = '${name}'`)).length > 0;
  }

  it('an artifact truncated in the local folder: the set is listed damaged, verify and restore refuse it; nothing is restored', async () => {
    const id = await newestComplete('folder');
    const name = await artifactOf(local, id);
    await truncate(join(local, id, name), 100);
    const list = await p.cli(['list', '-d', 'folder']);
    expect(list.stdout).toMatch(new RegExp(`${id}.*DAMAGED: ${name.replace(/\./g, '\\.')} is 100 bytes`));
    const verify = await p.cli(['verify', id, '--from', 'folder']);
    assertFailed(verify, 'SET_INCOMPLETE', [id, `${name} is 100 bytes`]);
    const restore = await p.cli(['restore', id, '--from', 'folder', '--to', 'restored_truncated']);
    assertFailed(restore, 'SET_INCOMPLETE', [id, `${name} is 100 bytes`]);
    expect(await databaseExists('restored_truncated'), 'restore created the target database from a bad set').toBe(false);
    await assertCleanedUp(sb, p);
    const chosen = await p.cli(['prune', '--delete-damaged', id]);
    expect(chosen.exitCode, chosen.stderr).toBe(0);
  });

  it('an artifact altered (same size) on the rsync remote: verify and restore fail with CHECKSUM_MISMATCH', async () => {
    const id = await newestComplete('nas');
    const name = await artifactOf(remote, id);
    const path = join(remote, id, name);
    const bytes = await readFile(path);
    bytes[Math.floor(bytes.length / 2)]! ^= 0xff;
    await writeFile(path, bytes, { mode: 0o600 });
    const restore = await p.cli(['restore', id, '--from', 'nas', '--to', 'restored_altered']);
    assertFailed(restore, 'CHECKSUM_MISMATCH', [`nas/${id}/${name}`]);
    expect(await databaseExists('restored_altered')).toBe(false);
    // The failure is recorded in the set: from now on it is damaged everywhere it is listed.
    expect((await listSets(sb, p)).nas!.incomplete).toContain(id);
    const verify = await p.cli(['verify', id, '--from', 'nas']);
    assertFailed(verify, 'SET_INCOMPLETE', [id, 'altered file']);
    await assertCleanedUp(sb, p);
    const chosen = await p.cli(['prune', '--delete-damaged', id]);
    expect(chosen.exitCode, chosen.stderr).toBe(0);
  });

  it('a missing manifest (partial) or a corrupt one (damaged): restore refuses it, "latest" takes an older complete set, and the damaged one is kept until a person deletes it', async () => {
    // Two fresh complete sets in the folder (retention keeps these two).
    for (let i = 0; i < 2; i++) {
      const out = await p.run();
      expect(out.exitCode, out.stderr).toBe(0);
    }
    const [older, newest] = (await listSets(sb, p)).folder!.complete as [string, string];
    await rm(join(local, newest, 'manifest.json'));
    const listed = await listSets(sb, p);
    expect(listed.folder).toEqual({ complete: [older], incomplete: [newest] });
    const refused = await p.cli(['restore', newest, '--from', 'folder', '--to', 'restored_nomanifest']);
    assertFailed(refused, 'SET_INCOMPLETE', [newest, 'no manifest']);
    expect(await databaseExists('restored_nomanifest')).toBe(false);

    const latest = await p.cli(['restore', 'latest', '--from', 'folder', '--to', 'restored_latest']);
    expect(latest.exitCode, latest.stderr).toBe(0);
    expect(latest.stdout).toContain(`restored ${older} into restored_latest`);

    await writeFile(join(local, newest, 'manifest.json'), '{"format": "backup-pipeline/manifest@1", "id": "tru', { mode: 0o600 });
    const list = await p.cli(['list', '-d', 'folder']);
    expect(list.stdout).toMatch(new RegExp(`${newest}.*DAMAGED: manifest is not JSON`));
    expect((await listSets(sb, p)).folder).toEqual({ complete: [older], incomplete: [newest] });
    const corrupt = await p.cli(['verify', newest, '--from', 'folder']);
    assertFailed(corrupt, 'SET_INCOMPLETE', [newest, 'not JSON']);
    const restoreCorrupt = await p.cli(['restore', newest, '--from', 'folder', '--to', 'restored_corrupt']);
    assertFailed(restoreCorrupt, 'SET_INCOMPLETE', [newest, 'not JSON']);
    expect(await databaseExists('restored_corrupt')).toBe(false);
    await assertCleanedUp(sb, p);
    // An unreadable manifest may be bit rot on a good set: retention keeps it and the next run
    // says so (its own set is complete and shipped); only a person's choice deletes it.
    const next = await p.run();
    assertFailed(next, 'SETS_DAMAGED', [`folder/${newest}`]);
    expect((await listSets(sb, p)).folder!.incomplete).toEqual([newest]);
    const chosen = await p.cli(['prune', '--delete-damaged', newest]);
    expect(chosen.exitCode, chosen.stderr).toBe(0);
    await nextRunSucceeds();
  });
});

describe('clock', () => {
  it('with the clock behind the newest set, retention deletes neither it nor the set just made', async () => {
    const q = await project(sb, 'clock', {
      destinations: { folder: { use: 'local', path: './backups' } },
      pipelines: {
        nightly: { source: 'mastodon', stages: [{ use: 'credentials', envFile: host.envFile }, { use: 'pg-dump' }, { use: 'retention', keepLast: 1, incompleteGraceHours: 0 }], destinations: ['folder'] },
      },
    });
    const folder = join(q.dir, 'backups');
    sb.setRoots.add(folder);
    const first = await q.run();
    expect(first.exitCode, first.stderr).toBe(0);
    const [good] = (await listSets(sb, q)).folder!.complete as [string];
    // A set from 2099: what a backup made with a clock far ahead looks like to a machine behind it.
    const future = good.replace(/^\d{8}T\d{6}Z/, '20991231T235959Z');
    for (const root of [folder, q.workDir]) {
      await cp(join(root, good), join(root, future), { recursive: true, preserveTimestamps: true });
      const path = join(root, future, 'manifest.json');
      const manifest = JSON.parse(await readFile(path, 'utf8')) as { id: string };
      manifest.id = future;
      await writeFile(path, JSON.stringify(manifest, null, 2) + '\n', { mode: 0o600 });
    }
    expect((await listSets(sb, q)).folder!.complete).toEqual([good, future]);
    const prune = await q.cli(['prune', '--dry-run']);
    expect(prune.exitCode, prune.stderr).toBe(0);
    // The plan keeps both, for the right reasons, and the dry run deleted nothing.
    expect(prune.stdout).toContain('folder: keep 2, would delete 0');
    expect(prune.stdout).not.toMatch(/would delete \d{8}T/);
    expect(prune.stdout).toMatch(new RegExp(`keep ${future}: .*dated in the future`));
    expect(prune.stdout).toMatch(new RegExp(`keep ${good}: .*last 1/1`));
    expect((await listSets(sb, q)).folder!.complete).toEqual([good, future]);
    const run = await q.run();
    expect(run.exitCode, run.stderr).toBe(0);
    const after = await listSets(sb, q);
    for (const d of ['folder', 'work']) {
      expect(after[d]!.complete, `the future-dated (newest) set was deleted from ${d}`).toContain(future);
      expect(after[d]!.complete).toHaveLength(2);
      expect(after[d]!.complete).not.toContain(good);
    }
    await assertCleanedUp(sb, q);
  });
});
