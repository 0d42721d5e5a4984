/**
 * The media stage end to end, through the real core (resolveConfig + Runner), on each destination
 * kind against real services: a local folder, rsync over the harness's sshd, s3rver. Two runs over
 * a tree with 1% of its files changed: the second writes about 1% of the bytes (measured outside
 * the plugin: `du` of the stored snapshots, which counts hard-linked files once, and the sizes of
 * the bucket's content objects); every set restores a tree identical to the source at its time;
 * retention deletes only what no kept set references.
 */
import { spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { lstat, mkdir, mkdtemp, readdir, readFile, rm, stat, symlink, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ListObjectsCommand, S3Client } from '@aws-sdk/client-s3';
import { createLogger, isPipelineError, listSets, LocalFolderDestination, resolveConfig, Runner, type PipelineError, type RunResult } from '@backup-pipeline/core';
import { startS3Server, startSshd, type S3Server, type SshServer } from '@backup-pipeline/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';

const here = dirname(fileURLToPath(import.meta.url));
const repo = resolve(here, '../../..');
const tmpRoot = resolve(repo, '.vitest-tmp');

const FILES = 1000;
const FILE_BYTES = 16 * 1024;
const CHANGED = FILES / 100;

type Kind = 'local' | 'rsync' | 's3';

/** path → sha256 of every regular file under `dir` (recursively). */
async function treeOf(dir: string): Promise<Map<string, string>> {
  const out = new Map<string, string>();
  const walk = async (d: string, rel: string) => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      const p = rel ? `${rel}/${e.name}` : e.name;
      if (e.isDirectory()) await walk(join(d, e.name), p);
      else if (e.isFile()) out.set(p, createHash('sha256').update(await readFile(join(d, e.name))).digest('hex'));
    }
  };
  await walk(dir, '');
  return out;
}

const sorted = (m: Map<string, string>) => [...m.entries()].sort(([a], [b]) => (a < b ? -1 : 1));

/** Sizes of the regular files under `dir` by inode (hard links to one inode counted once). */
async function inodes(dir: string): Promise<Map<number, number>> {
  const out = new Map<number, number>();
  const walk = async (d: string) => {
    for (const e of await readdir(d, { withFileTypes: true })) {
      if (e.isDirectory()) await walk(join(d, e.name));
      else if (e.isFile()) {
        const info = await lstat(join(d, e.name));
        out.set(info.ino, info.size);
      }
    }
  };
  await walk(dir);
  return out;
}

/** Bytes of the files of `dir` that share no inode with `base` (what storing `dir` added beside `base`). */
async function addedBytes(base: string, dir: string): Promise<number> {
  const old = await inodes(base);
  let n = 0;
  for (const [ino, size] of await inodes(dir)) if (!old.has(ino)) n += size;
  return n;
}

describe.each<Kind>(['local', 'rsync', 's3'])('media stage, destination %s', (kind) => {
  let dir: string;
  let source: string;
  let sshd: SshServer | undefined;
  let s3: S3Server | undefined;
  let storeRoot: string;
  const prefix = 'mastodon/';
  const changedPaths: string[] = [];

  const destination = (): Record<string, unknown> => {
    if (kind === 'local') return { use: 'local', path: storeRoot };
    if (kind === 'rsync') return { use: 'rsync', target: `${sshd!.user}@127.0.0.1:${storeRoot}`, port: sshd!.port, identityFile: sshd!.identityFile, knownHostsFile: sshd!.knownHostsFile };
    return { use: 's3', bucket: s3!.bucket, prefix, endpoint: s3!.endpoint, region: s3!.region, forcePathStyle: true, accessKeyId: s3!.accessKeyId, secretAccessKey: s3!.secretAccessKey };
  };

  const runner = async (keepLast: number) => {
    const content = {
      workDir: join(dir, 'work'),
      destinations: { remote: destination() },
      pipelines: { media: { source: 'mastodon', destinations: ['remote'], stages: [{ use: 'media', path: source, verifySample: 50 }, { use: 'retention', keepLast }] } },
    };
    const config = await resolveConfig(join(dir, 'pipeline.config.json'), content, { env: process.env, cwd: dir, pluginSearchDirs: [repo] });
    return new Runner(config, await createLogger({ secrets: config.secrets, level: 'silent' }));
  };

  const run = async (at: Date): Promise<RunResult> => (await runner(5)).run('media', { now: () => at });

  const restoreInto = async (setId: string): Promise<Map<string, string>> => {
    const to = await mkdtemp(join(dir, 'restore-'));
    const result = await (await runner(5)).restore('media', { set: setId, filesTo: to, from: 'remote' });
    expect(result.from).toBe('remote');
    expect(await readdir(to)).toEqual(['system']);
    const tree = await treeOf(join(to, 'system'));
    await rm(to, { recursive: true, force: true });
    return tree;
  };

  const s3Objects = async (): Promise<Map<string, number>> => {
    const client = new S3Client({ endpoint: s3!.endpoint, region: s3!.region, forcePathStyle: true, credentials: { accessKeyId: s3!.accessKeyId, secretAccessKey: s3!.secretAccessKey } });
    const out = new Map<string, number>();
    // ListObjects v1 paged by marker (s3rver's v2 continuation tokens need DES, which OpenSSL 3 refuses).
    let marker: string | undefined;
    for (;;) {
      const page = await client.send(new ListObjectsCommand({ Bucket: s3!.bucket, Prefix: `${prefix}.objects/`, Marker: marker }));
      for (const o of page.Contents ?? []) out.set(o.Key!, o.Size ?? 0);
      marker = page.Contents?.at(-1)?.Key;
      if (!page.IsTruncated || !marker) break;
    }
    client.destroy();
    return out;
  };

  beforeAll(async () => {
    await mkdir(tmpRoot, { recursive: true });
    dir = await mkdtemp(join(tmpRoot, `media-${kind}-`));
    source = join(dir, 'live/public/system');
    storeRoot = join(dir, 'store');
    if (kind === 'rsync') {
      sshd = await startSshd();
      storeRoot = join(sshd.dir, 'remote media');
    }
    if (kind === 's3') s3 = await startS3Server();
    // A Mastodon-shaped tree: local avatars and headers, custom emoji, attachments; cache/ (left out); a symlink (skipped).
    const kinds = ['accounts/avatars', 'accounts/headers', 'custom_emojis/images', 'media_attachments/files'];
    for (let i = 0; i < FILES; i++) {
      const id = String(i).padStart(9, '0');
      const path = `${kinds[i % kinds.length]}/${id.slice(0, 3)}/${id.slice(3, 6)}/${id.slice(6)}/original/${i === 7 ? 'file with spaces ü.png' : `${randomBytes(8).toString('hex')}.png`}`;
      await mkdir(dirname(join(source, path)), { recursive: true });
      await writeFile(join(source, path), randomBytes(FILE_BYTES));
      if (i % 100 === 3) changedPaths.push(path);
    }
    await mkdir(join(source, 'cache/media_attachments/files/110'), { recursive: true });
    for (let i = 0; i < 20; i++) await writeFile(join(source, `cache/media_attachments/files/110/remote-${i}.jpg`), randomBytes(4096));
    await symlink('/etc/passwd', join(source, 'media_attachments/not-followed'));
    return async () => {
      await sshd?.cleanup();
      await s3?.stop();
      await rm(dir, { recursive: true, force: true });
    };
  }, 120_000);

  afterAll(() => undefined);

  it('ships 1% of the bytes when 1% of the files changed; every set restores the tree of its time; retention deletes only unreferenced data', async () => {
    const t0 = new Date(Date.UTC(2026, 11, 1, 1, 0, 0));
    const first = await run(t0);
    const tree0 = await treeOf(source);
    for (const p of [...tree0.keys()]) if (p.startsWith('cache/')) tree0.delete(p);
    expect(tree0.size).toBe(FILES);
    const set1 = first.summary.setId;
    const [shipped1] = first.summary.destinations;
    expect(shipped1).toMatchObject({ destination: 'remote', ok: true });
    expect(shipped1!.trees).toEqual([{ name: 'media', files: FILES, bytes: FILES * FILE_BYTES, filesWritten: FILES, bytesWritten: FILES * FILE_BYTES }]);
    const manifestTree = first.manifest!.artifacts.find((a) => a.name === 'media.index.jsonl');
    expect(manifestTree).toMatchObject({ kind: 'files', format: 'media-tree', tree: { name: 'media', files: FILES, bytes: FILES * FILE_BYTES } });
    expect(manifestTree!.meta).toMatchObject({ excluded: [{ path: 'cache', files: 20, bytes: 20 * 4096 }], skipped: { symlinks: 1, special: 0, names: 0 } });
    const before = kind === 's3' ? [...(await s3Objects()).values()].reduce((n, b) => n + b, 0) : [...(await inodes(join(storeRoot, set1, 'media'))).values()].reduce((n, b) => n + b, 0);
    expect(before).toBeGreaterThanOrEqual(FILES * FILE_BYTES);

    expect(sorted(await restoreInto(set1))).toEqual(sorted(tree0));

    // 1% of the files change (same size, new content).
    for (const p of changedPaths) await writeFile(join(source, p), randomBytes(FILE_BYTES));
    const tree1 = await treeOf(source);
    for (const p of [...tree1.keys()]) if (p.startsWith('cache/')) tree1.delete(p);
    const second = await run(new Date(t0.getTime() + 3600_000));
    const set2 = second.summary.setId;
    expect(second.summary.destinations[0]!.trees).toEqual([{ name: 'media', files: FILES, bytes: FILES * FILE_BYTES, filesWritten: CHANGED, bytesWritten: CHANGED * FILE_BYTES }]);
    // Measured outside the plugin: what the second set added to the storage.
    let added: number;
    if (kind === 's3') added = [...(await s3Objects()).values()].reduce((n, b) => n + b, 0) - before;
    else added = await addedBytes(join(storeRoot, set1, 'media'), join(storeRoot, set2, 'media'));
    // Exactly the changed files' bytes: everything else is shared with the first set.
    expect(added).toBe(CHANGED * FILE_BYTES);

    // Each set restores the tree of its own time, from the destination.
    expect(sorted(await restoreInto(set1))).toEqual(sorted(tree0));
    expect(sorted(await restoreInto(set2))).toEqual(sorted(tree1));

    // verify reads files back by content: a sample by default, every file with verifyAll.
    const verified = await (await runner(5)).verifyStored('media', { set: set2, from: 'remote' }, { stageOptions: { 'media.verifyAll': true } });
    expect(verified.artifacts.find((a) => a.format === 'media-tree')!.meta.verification).toEqual({ checked: FILES, of: FILES, full: true });

    // Retention keeps the newest set only: the older goes, the newer still restores in full.
    const objectsBefore = kind === 's3' ? await s3Objects() : undefined;
    const pruned = await (await runner(1)).prune('media');
    expect(pruned.error).toBeUndefined();
    expect(pruned.retention.find((r) => r.destination === 'remote')!.deleted).toEqual([set1]);
    expect(sorted(await restoreInto(set2))).toEqual(sorted(tree1));
    if (kind === 's3') {
      const after = await s3Objects();
      // The contents only the deleted set referenced are gone; every content the kept set needs stayed.
      expect(objectsBefore!.size).toBe(FILES + CHANGED);
      expect(after.size).toBe(FILES);
      const kept = new Set([...tree1.values()]);
      expect([...after.keys()].map((k) => k.slice(k.lastIndexOf('/') + 1)).sort()).toEqual([...kept].sort());
    } else {
      await expect(stat(join(storeRoot, set1))).rejects.toThrow();
      expect([...(await inodes(join(storeRoot, set2, 'media'))).values()].reduce((n, b) => n + b, 0)).toBe(FILES * FILE_BYTES);
    }
  }, 300_000);

  if (kind === 'local') {
    it('verify with verifyAll finds a stored file whose content was altered', async () => {
      const sets = (await readdir(storeRoot)).filter((n) => /^\d{8}T/.test(n)).sort();
      const setId = sets.at(-1)!;
      const victim = changedPaths[0]!;
      // The stored copy is a hard link shared by no other set now; alter it in place.
      await writeFile(join(storeRoot, setId, 'media', victim), randomBytes(FILE_BYTES));
      // Through the CLI: `pipeline verify SET --full` reads every file back and exits 1 (the config samples none).
      const configFile = join(dir, 'cli.config.json');
      await writeFile(configFile, JSON.stringify({ workDir: join(dir, 'work'), destinations: { remote: destination() }, pipelines: { media: { source: 'mastodon', destinations: ['remote'], stages: [{ use: 'media', path: source, verifySample: 0 }] } } }));
      const cli = spawnSync(process.execPath, [join(repo, 'packages/cli/bin/pipeline.js'), 'verify', setId, '--full', '--from', 'remote', '--config', configFile], { encoding: 'utf8', env: { ...process.env, CI: 'true' } });
      expect(cli.status).toBe(1);
      expect(cli.stderr).toContain('CHECKSUM_MISMATCH');
      expect(cli.stderr).toContain(victim);
      // The finding is recorded in the set: from now on it is listed damaged (kept, never counted).
      const [listed] = (await listSets(new LocalFolderDestination(storeRoot), { scratchDir: dir })).filter((x) => x.id === setId);
      expect(listed).toMatchObject({ state: 'damaged' });
      const error = await (await runner(5))
        .verifyStored('media', { set: setId, from: 'remote' }, { stageOptions: { 'media.verifyAll': true } })
        .then(() => undefined, (e: unknown) => e as PipelineError);
      expect(isPipelineError(error)).toBe(true);
      expect(error).toMatchObject({ code: 'SET_INCOMPLETE' });
    }, 120_000);

    it('refuses in preflight a destination that cannot store trees', async () => {
      const module = join(dir, 'no-trees.mjs');
      await writeFile(
        module,
        `import { definePlugin, LocalFolderDestination, z } from '@backup-pipeline/core';
class NoTrees { constructor(root) { this.inner = new LocalFolderDestination(root); }
  describe() { return 'no trees'; } put(...a) { return this.inner.put(...a); } list() { return this.inner.list(); }
  get(...a) { return this.inner.get(...a); } delete(id) { return this.inner.delete(id); } }
export default definePlugin({ name: 'no-trees', destination: { options: z.object({ path: z.string() }).strict(), create: (o) => new NoTrees(o.path) } });
`,
      );
      await mkdir(join(dir, 'node_modules/@backup-pipeline'), { recursive: true });
      await symlink(join(repo, 'packages/core'), join(dir, 'node_modules/@backup-pipeline/core')).catch(() => {});
      const content = {
        workDir: join(dir, 'work-refused'),
        destinations: { plain: { use: './no-trees.mjs', path: join(dir, 'plain') } },
        pipelines: { media: { source: 'mastodon', destinations: ['plain'], stages: [{ use: 'media', path: source }] } },
      };
      const config = await resolveConfig(join(dir, 'pipeline.config.json'), content, { env: process.env, cwd: dir, pluginSearchDirs: [repo] });
      const error = await new Runner(config, await createLogger({ secrets: config.secrets, level: 'silent' }))
        .run('media')
        .then(() => undefined, (e: unknown) => e as PipelineError);
      expect(error).toMatchObject({ code: 'MEDIA_DESTINATION_UNSUPPORTED', plugin: 'media', hook: 'preflight' });
      expect(error!.message).toContain('"plain" (no trees)');
      await expect(readdir(join(dir, 'plain'))).rejects.toThrow();
    }, 60_000);

    it('says media is in object storage (S3_ENABLED=true in the .env.production beside public/system) instead of backing up nothing in silence', async () => {
      const live = join(dir, 's3-live');
      await mkdir(live, { recursive: true });
      await writeFile(join(live, '.env.production'), 'S3_ENABLED=true\nS3_BUCKET=instance-files\n');
      const content = {
        workDir: join(dir, 'work-s3'),
        destinations: { folder: { use: 'local', path: join(dir, 'folder-s3') } },
        pipelines: { media: { source: 'mastodon', destinations: ['folder'], stages: [{ use: 'media', path: join(live, 'public', 'system') }] } },
      };
      const config = await resolveConfig(join(dir, 'pipeline.config.json'), content, { env: process.env, cwd: dir, pluginSearchDirs: [repo] });
      const error = await new Runner(config, await createLogger({ secrets: config.secrets, level: 'silent' }))
        .run('media')
        .then(() => undefined, (e: unknown) => e as PipelineError);
      expect(error).toMatchObject({ code: 'MEDIA_MISSING', plugin: 'media', hook: 'preflight' });
      expect(error!.hint).toContain('S3_ENABLED=true');
      expect(error!.hint).toContain('bucket-to-bucket copy stage');
    }, 60_000);

    it('says in preflight that the files go to each destination as they are, not encrypted', async () => {
      const content = {
        workDir: join(dir, 'work-plain'),
        destinations: { offsite: { use: 'local', path: join(dir, 'offsite') } },
        pipelines: { media: { source: 'mastodon', destinations: ['offsite'], stages: [{ use: 'media', path: source, verifySample: 0 }] } },
      };
      const config = await resolveConfig(join(dir, 'pipeline.config.json'), content, { env: process.env, cwd: dir, pluginSearchDirs: [repo] });
      const lines: string[] = [];
      await new Runner(config, await createLogger({ secrets: config.secrets, format: 'json', level: 'warn', write: (l) => void lines.push(l) })).run('media');
      const warned = lines.map((l) => JSON.parse(l) as { msg: string }).find((l) => l.msg.includes('not encrypted'));
      expect(warned?.msg).toContain(`the files of ${source} are stored in "offsite" (`);
    }, 60_000);
  }
});
