/**
 * Incremental media (issue 13), a suite of bench/run.js — or run alone:
 *
 *   node bench/run.js --suite media [--media-files 20000] [--media-kb 12] [--media-dest local,rsync,s3]
 *   node bench/media.js [same flags]           (prints the result as JSON on stdout)
 *
 * On a Mastodon-shaped `public/system` of N files (accounts/avatars, accounts/headers,
 * custom_emojis, media_attachments; sizes spread around --media-kb, plus a cache/ that is left
 * out), through the real core (Runner, the media stage, each destination):
 *
 *   first    the first run: every file hashed, copied into the work dir and shipped
 *   second   a second run after 1% of the files changed (new content) and 0.1% were added
 *   tar      for comparison, the files stage over the same tree (a full tar.zst, what every run cost before)
 *
 * each with wall time, CPU of this process and its children, files and bytes hashed, and per
 * destination the files and bytes it had to write (`putTree`'s report) and the bytes its storage
 * grew by (measured outside the plugin: new inodes for folders, content objects for s3).
 */
import { createHash, randomBytes } from 'node:crypto';
import { lstat, mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { createLogger, resolveConfig, Runner } from '@backup-pipeline/core';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** Sizes (bytes) of the distinct inodes of regular files under `dir`. */
async function inodes(dir, out = new Map()) {
  for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
    const p = join(dir, e.name);
    if (e.isDirectory()) await inodes(p, out);
    else if (e.isFile()) {
      const info = await lstat(p);
      out.set(`${info.dev}:${info.ino}`, info.size);
    }
  }
  return out;
}
const sum = (m) => [...m.values()].reduce((n, b) => n + b, 0);

/** A deterministic-enough size around `kb` KiB: many small files, a few large ones (like avatars vs. videos). */
function sizeFor(i, kb) {
  const r = (i * 2654435761) % 1000;
  if (r < 5) return kb * 1024 * 40; // 0.5 %: large attachments
  if (r < 100) return kb * 1024 * 4;
  return Math.max(512, Math.round(kb * 1024 * (0.2 + (r % 100) / 100)));
}

async function makeTree(root, files, kb) {
  const kinds = ['accounts/avatars', 'accounts/headers', 'custom_emojis/images', 'media_attachments/files', 'media_attachments/files', 'media_attachments/files'];
  const paths = [];
  let bytes = 0;
  for (let i = 0; i < files; i++) {
    const id = String(i).padStart(9, '0');
    const path = `${kinds[i % kinds.length]}/${id.slice(0, 3)}/${id.slice(3, 6)}/${id.slice(6)}/original/${createHash('sha1').update(id).digest('hex').slice(0, 16)}.png`;
    const size = sizeFor(i, kb);
    await mkdir(dirname(join(root, path)), { recursive: true });
    await writeFile(join(root, path), randomBytes(size));
    paths.push(path);
    bytes += size;
  }
  await mkdir(join(root, 'cache/media_attachments/files'), { recursive: true });
  for (let i = 0; i < Math.ceil(files / 10); i++) await writeFile(join(root, `cache/media_attachments/files/remote-${i}.jpg`), randomBytes(kb * 1024));
  return { paths, bytes };
}

async function timed(fn) {
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const result = await fn();
  const cpu = process.cpuUsage(cpu0);
  return { result, wallMs: Math.round(performance.now() - t0), cpuMs: Math.round((cpu.user + cpu.system) / 1000) };
}

export async function run(ctx = {}) {
  const { values } = parseArgs({
    args: ctx.argv ?? process.argv.slice(2),
    strict: false,
    options: { 'media-files': { type: 'string', default: '20000' }, 'media-kb': { type: 'string', default: '12' }, 'media-dest': { type: 'string', default: 'local' } },
  });
  const files = Number(values['media-files']);
  const kb = Number(values['media-kb']);
  const kinds = String(values['media-dest']).split(',');
  const dir = await mkdtemp(join(ctx.tmpRoot ?? tmpdir(), 'bench-media-'));
  const cleanups = [() => rm(dir, { recursive: true, force: true })];
  try {
    const source = join(dir, 'live/public/system');
    console.error(`media: making a tree of ${files} files around ${kb} KiB in ${source}`);
    const tree = await makeTree(source, files, kb);
    const destinations = {};
    const stores = {};
    let s3;
    for (const kind of kinds) {
      if (kind === 'local') destinations.local = { use: 'local', path: (stores.local = join(dir, 'store-local')) };
      else if (kind === 'rsync') destinations.rsync = { use: 'rsync', target: (stores.rsync = join(dir, 'store-rsync')) };
      else if (kind === 's3') {
        const { startS3Server } = await import('@backup-pipeline/testing');
        s3 = await startS3Server();
        cleanups.push(() => s3.stop());
        destinations.s3 = { use: 's3', bucket: s3.bucket, prefix: 'mastodon/', endpoint: s3.endpoint, region: s3.region, forcePathStyle: true, accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey };
      } else throw new Error(`--media-dest: unknown destination kind ${kind}`);
    }
    const runnerFor = async (stages, workDir) => {
      const content = { workDir, destinations, pipelines: { media: { source: 'mastodon', destinations: Object.keys(destinations), stages } } };
      const config = await resolveConfig(join(dir, 'pipeline.config.json'), content, { env: process.env, cwd: dir, pluginSearchDirs: [ROOT] });
      return new Runner(config, await createLogger({ secrets: config.secrets, level: 'warn' }));
    };
    const storage = async () => {
      const out = {};
      for (const [name, path] of Object.entries(stores)) out[name] = await inodes(path);
      if (s3) {
        const { S3Client, ListObjectsCommand } = await import('@aws-sdk/client-s3');
        const client = new S3Client({ endpoint: s3.endpoint, region: s3.region, forcePathStyle: true, credentials: { accessKeyId: s3.accessKeyId, secretAccessKey: s3.secretAccessKey } });
        const objects = new Map();
        let marker;
        for (;;) {
          const page = await client.send(new ListObjectsCommand({ Bucket: s3.bucket, Prefix: 'mastodon/', Marker: marker }));
          for (const o of page.Contents ?? []) objects.set(o.Key, o.Size ?? 0);
          marker = page.Contents?.at(-1)?.Key;
          if (!page.IsTruncated || !marker) break;
        }
        client.destroy();
        out.s3 = objects;
      }
      return out;
    };
    const grew = (before, after) => Object.fromEntries(Object.entries(after).map(([k, m]) => [k, sum(new Map([...m].filter(([key]) => !before[k]?.has(key))))]));

    const mediaStages = [{ use: 'media', path: source, verifySample: 200 }];
    const once = async (label, at) => {
      const before = await storage();
      const runner = await runnerFor(mediaStages, join(dir, 'work'));
      const { result, wallMs, cpuMs } = await timed(() => runner.run('media', { now: () => at }));
      const artifact = result.manifest.artifacts.find((a) => a.format === 'media-tree');
      const after = await storage();
      const out = {
        wallMs,
        cpuMs,
        files: artifact.tree.files,
        bytes: artifact.tree.bytes,
        hashed: artifact.meta.hashed,
        workDirWritten: artifact.meta.written,
        destinations: Object.fromEntries(result.summary.destinations.map((d) => [d.destination, { ...d.trees[0], durationMs: d.durationMs }])),
        storageGrewBytes: grew(before, after),
        stages: Object.fromEntries(result.summary.stages.map((s) => [`${s.plugin}:${s.hook}`, s.durationMs])),
      };
      console.error(`media ${label}: ${wallMs} ms wall, ${cpuMs} ms CPU; ${out.files} files (${out.bytes} bytes), hashed ${out.hashed.files}, work dir wrote ${out.workDirWritten.bytes} bytes; shipped ${JSON.stringify(out.destinations)}`);
      return out;
    };

    const t0 = new Date(Date.UTC(2026, 11, 1, 1, 0, 0));
    const first = await once('first run', t0);
    // 1% of the files change, 0.1% are added.
    const changed = tree.paths.filter((_p, i) => i % 100 === 42);
    for (const p of changed) await writeFile(join(source, p), randomBytes(sizeFor(tree.paths.indexOf(p), kb)));
    const added = Math.ceil(files / 1000);
    for (let i = 0; i < added; i++) {
      const p = `media_attachments/files/999/999/${String(i).padStart(3, '0')}/original/new-${i}.png`;
      await mkdir(dirname(join(source, p)), { recursive: true });
      await writeFile(join(source, p), randomBytes(kb * 1024));
    }
    const second = await once('second run (1% changed, 0.1% added)', new Date(t0.getTime() + 86_400_000));

    // The tar the files stage makes every run, over the same tree (one destination, for the comparison).
    const tarDestinations = Object.fromEntries(Object.entries(destinations).slice(0, 1));
    const content = { workDir: join(dir, 'work-tar'), destinations: tarDestinations, pipelines: { media: { source: 'mastodon', destinations: Object.keys(tarDestinations), stages: [{ use: 'files', mediaDir: source }] } } };
    const config = await resolveConfig(join(dir, 'pipeline.config.json'), content, { env: process.env, cwd: dir, pluginSearchDirs: [ROOT] });
    const tarRunner = new Runner(config, await createLogger({ secrets: config.secrets, level: 'warn' }));
    const tarRun = await timed(() => tarRunner.run('media', { now: () => new Date(t0.getTime() + 2 * 86_400_000) }));
    const tarBytes = tarRun.result.summary.artifacts.reduce((n, a) => n + a.bytes, 0);
    console.error(`media tar (files stage, every run): ${tarRun.wallMs} ms wall, ${tarBytes} bytes shipped to ${Object.keys(tarDestinations)[0]}`);

    return {
      files,
      sourceBytes: tree.bytes,
      changedFiles: changed.length,
      addedFiles: added,
      destinations: kinds,
      first,
      second,
      secondOverFirstBytesShipped: Object.fromEntries(Object.keys(second.destinations).map((d) => [d, Math.round((second.destinations[d].bytesWritten / first.destinations[d].bytesWritten) * 10000) / 10000])),
      tarEveryRun: { wallMs: tarRun.wallMs, cpuMs: tarRun.cpuMs, bytesShipped: tarBytes },
    };
  } finally {
    for (const c of cleanups.reverse()) await c();
  }
}

if (process.argv[1] && resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  const result = await run();
  process.stdout.write(JSON.stringify(result, null, 2) + '\n');
}
