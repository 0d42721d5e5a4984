/**
 * The `media` stage: Mastodon's local media (`public/system`) backed up file by file, so each run
 * ships only what changed since the previous set in each destination while every set still holds,
 * and restores, the whole tree.
 *
 * produce: walks the folder (leaving out `cache/`, with a size report of what was left out),
 *          hashes each file whose size or mtime changed since the work dir's previous tree (the
 *          others keep their sha256), and stores the tree in the work dir with the work dir's
 *          `putTree` (hard links to its previous snapshot: the copy costs only the changes). The
 *          artifact is the tree's index (`media.index.jsonl`, one line per file); the runner then
 *          ships the tree with every destination's `putTree`, before the index.
 * verify:  a random sample of files (all with `verifyAll: true`) read back by content: from the
 *          staged snapshot in a run, through the destination's `getTree` in `pipeline verify`.
 * restore: `pipeline restore … --files-to DIR` rebuilds the whole tree in `DIR/<folder>` through the
 *          destination's `getTree` (every file checked against its sha256), with modes and mtimes.
 */
import { randomInt } from 'node:crypto';
import { chmod, lstat, mkdir, readdir, rm, stat, utimes } from 'node:fs/promises';
import { basename, join } from 'node:path';
import {
  definePlugin,
  eachLimited,
  hashFile,
  isPipelineError,
  listSets,
  objectStorageNotice,
  pathInTree,
  PipelineError,
  readTreeIndex,
  recordDamage,
  recordDrill,
  storesTrees,
  treePathProblem,
  writeTreeIndex,
  z,
  type Artifact,
  type NamedDestination,
  type RestoreContext,
  type RunContext,
  type TreeEntry,
} from '@backup-pipeline/core';

export const FORMAT = 'media-tree';
export const DEFAULT_PATH = '/home/mastodon/live/public/system';

export const MediaOptions = z
  .object({
    path: z.string().min(1).default(DEFAULT_PATH).describe("Mastodon's local media folder (`~/live/public/system`). `~/` and paths relative to the config file are allowed."),
    exclude: z
      .array(z.string().min(1).refine((p) => !treePathProblem(p), 'a relative path inside the folder (no "..", no leading "/")'))
      .default(['cache'])
      .describe('Paths inside the folder left out, with their size reported. Default `cache` (remote media Mastodon fetches again).'),
    name: z
      .string()
      .regex(/^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$/, 'letters, digits, "_" and "-"')
      .default('media')
      .describe('Name of the tree in the set; the artifact (its index) is `NAME.index.jsonl`.'),
    verifySample: z.number().int().min(0).default(200).describe('Files `verify` reads back by content (chosen at random); 0 checks none.'),
    verifyAll: z.boolean().default(false).describe('Read back every file in `verify` (`pipeline verify SET -o media.verifyAll=true`).'),
  })
  .strict();
export type MediaOptions = z.output<typeof MediaOptions>;

export const MEDIA_ERRORS = {
  MEDIA_MISSING: 'Fix `path` (usually /home/mastodon/live/public/system) or run as the user that can read it.',
  MEDIA_DESTINATION_UNSUPPORTED: 'Every destination of a pipeline with the media stage must store trees (local, rsync and s3 do); use the files stage (a tar) for the others.',
  MEDIA_RESTORE_TARGET_NOT_EMPTY: 'Restore into an empty folder (--files-to DIR with no DIR/<folder> in it).',
} as const;

/** What a walk of the media folder found. */
export interface MediaWalk {
  /** Regular files, without sha256 yet. */
  files: Array<Omit<TreeEntry, 'sha256'>>;
  /** Left out by `exclude`: files and bytes under each path. */
  excluded: Array<{ path: string; files: number; bytes: number }>;
  /** Not backed up: symbolic links, special files (sockets, FIFOs, devices), names the tree check refuses. */
  skipped: { symlinks: string[]; special: string[]; names: string[] };
}

/** Walks `root` (a symbolic link as the root itself is followed; inside, links are not). */
export async function walkMedia(root: string, exclude: readonly string[], signal?: AbortSignal): Promise<MediaWalk> {
  const out: MediaWalk = { files: [], excluded: exclude.map((path) => ({ path, files: 0, bytes: 0 })), skipped: { symlinks: [], special: [], names: [] } };
  const excluded = new Map(out.excluded.map((e) => [e.path, e]));
  const size = async (dir: string, into: { files: number; bytes: number }) => {
    for (const entry of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
      const p = join(dir, entry.name);
      if (entry.isDirectory()) await size(p, into);
      else if (entry.isFile()) {
        into.files++;
        into.bytes += (await lstat(p)).size;
      }
    }
  };
  const walk = async (dir: string, rel: string): Promise<void> => {
    signal?.throwIfAborted();
    const entries = await readdir(dir, { withFileTypes: true });
    for (const entry of entries) {
      const path = rel ? `${rel}/${entry.name}` : entry.name;
      const full = join(dir, entry.name);
      const ex = excluded.get(path);
      if (ex) {
        if (entry.isDirectory()) await size(full, ex);
        else if (entry.isFile()) {
          ex.files++;
          ex.bytes += (await lstat(full)).size;
        }
        continue;
      }
      if (entry.isSymbolicLink()) out.skipped.symlinks.push(path);
      else if (treePathProblem(path)) out.skipped.names.push(path);
      else if (entry.isDirectory()) await walk(full, path);
      else if (entry.isFile()) {
        const info = await lstat(full);
        out.files.push({ path, bytes: info.size, mode: info.mode & 0o777, mtimeMs: info.mtimeMs });
      } else out.skipped.special.push(path);
    }
  };
  await walk(root, '');
  out.files.sort((a, b) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0));
  return out;
}

/** The entries of the newest complete set's tree `name` in the work dir, to reuse sha256s of unchanged files. */
async function previousEntries(ctx: RunContext, name: string): Promise<TreeEntry[]> {
  const work = ctx.work.destination;
  if (!storesTrees(work)) return [];
  const sets = await listSets(work, { scratchDir: ctx.tmpDir }).catch(() => []);
  for (const set of sets.reverse()) {
    if (set.id === ctx.setId || !set.complete || !set.manifest?.artifacts.some((a) => a.tree?.name === name)) continue;
    const entries = await work.treeEntries(set.id, name).catch(() => undefined);
    if (entries) return entries;
  }
  return [];
}

/** Up to `n` entries chosen at random (all of them when `n` is at least their number). */
export function sample<T>(items: readonly T[], n: number): T[] {
  if (n >= items.length) return [...items];
  const copy = [...items];
  for (let i = 0; i < n; i++) {
    const j = i + randomInt(copy.length - i);
    [copy[i], copy[j]] = [copy[j]!, copy[i]!];
  }
  return copy.slice(0, n);
}

/** The destination a stored set is being read from (restore, verify). */
function storedDestination(ctx: RestoreContext): NamedDestination {
  const from = ctx.stored.from;
  const d = ctx.stored.destination ? { name: from, plugin: '', destination: ctx.stored.destination } : [ctx.work, ...ctx.destinations].find((x) => x.name === from);
  if (!d) throw new PipelineError('MEDIA_DESTINATION_UNSUPPORTED', `the media tree of ${ctx.stored.id} is in "${from}", which is not the work dir or a destination of pipeline ${ctx.pipeline}`, { hint: 'Add that destination to the pipeline, or restore --from one of its destinations.' });
  if (!storesTrees(d.destination)) throw new PipelineError('MEDIA_DESTINATION_UNSUPPORTED', `destination "${d.name}" (${d.destination.describe()}) cannot read trees back (no getTree)`);
  return d;
}

/** Reads tree files back through `getTree`; a file that does not match its sha256 is recorded in the set (damaged.json), as the core does for artifacts. */
async function readBack(ctx: RestoreContext, d: NamedDestination, name: string, entries: readonly TreeEntry[], toDir: string, onBytes?: (b: number) => void): Promise<void> {
  try {
    await d.destination.getTree!(ctx.stored.id, name, entries, toDir, { signal: ctx.signal, onBytes });
  } catch (error) {
    if (isPipelineError(error) && error.code === 'CHECKSUM_MISMATCH') {
      await recordDamage(d.destination, ctx.stored.id, error.message, { scratchDir: ctx.tmpDir, signal: ctx.signal, log: ctx.log });
    }
    throw error;
  }
}

const isStored = (ctx: RunContext): ctx is RestoreContext => 'stored' in ctx && !!(ctx as RestoreContext).stored?.manifest;

export default definePlugin({
  name: 'media',
  description: "Stage: Mastodon's local media (public/system) file by file — each run ships only what changed (hard-linked snapshots, content-addressed objects), every set restores in full. The files are stored as they are (not encrypted; the index is).",
  options: MediaOptions,
  errors: MEDIA_ERRORS,
  restoreOptions: ['verifyAll'],
  apply(hooks, options, api) {
    const root = api.resolvePath(options.path);
    const indexName = `${options.name}.index.jsonl`;

    hooks.preflight.tapPromise(api.name, async (ctx) => {
      // S3_ENABLED=true in the .env.production beside public/system: said, never an empty tree in silence.
      const notice = await objectStorageNotice(root);
      if (notice) ctx.log.warn(notice);
      if (!(await stat(root).catch(() => undefined))?.isDirectory()) {
        throw new PipelineError('MEDIA_MISSING', `media folder ${root} does not exist or is not a folder`, { hint: notice ? `${notice[0]!.toUpperCase()}${notice.slice(1)}.` : MEDIA_ERRORS.MEDIA_MISSING });
      }
      // The files are stored as they are, never through the pipeline's transforms: an admin who
      // encrypts the database must hear that private media (direct messages' attachments) is not.
      const shipped = ctx.destinations.map((d) => `"${d.name}" (${d.destination.describe()})`).join(', ');
      if (shipped) ctx.log.warn(`media: the files of ${root} are stored in ${shipped} as they are, not encrypted (only the tree's index goes through the pipeline's encryption); keep these destinations as private as the instance itself`);
      const unable = [ctx.work, ...ctx.destinations].filter((d) => !storesTrees(d.destination));
      if (unable.length > 0) {
        throw new PipelineError('MEDIA_DESTINATION_UNSUPPORTED', `the media stage needs destinations that store trees; ${unable.map((d) => `"${d.name}" (${d.destination.describe()})`).join(', ')} cannot`, {
          hint: MEDIA_ERRORS.MEDIA_DESTINATION_UNSUPPORTED,
        });
      }
    });

    hooks.plan.tapPromise(api.name, async (plan) => {
      plan.add({ description: `store ${root} file by file as tree "${options.name}" (index ${indexName})${options.exclude.length ? `, leaving out ${options.exclude.join(', ')}` : ''}; only changed files are copied and shipped` });
    });

    hooks.produce.tapPromise(api.name, async (ctx) => {
      const started = Date.now();
      const found = await walkMedia(root, options.exclude, ctx.signal);
      const before = new Map((await previousEntries(ctx, options.name)).map((e) => [e.path, e]));
      let hashed = 0;
      let hashedBytes = 0;
      const entries: TreeEntry[] = new Array(found.files.length);
      await eachLimited(
        found.files.map((f, i) => ({ f, i })),
        4,
        async ({ f, i }) => {
          const old = before.get(f.path);
          if (old && old.bytes === f.bytes && old.mtimeMs === f.mtimeMs) {
            entries[i] = { ...f, sha256: old.sha256 };
            return;
          }
          const digest = await hashFile(join(root, ...f.path.split('/')), ctx.signal);
          hashed++;
          hashedBytes += digest.bytes;
          entries[i] = { ...f, bytes: digest.bytes, sha256: digest.sha256 };
        },
        ctx.signal,
      );
      const work = ctx.work.destination;
      if (!storesTrees(work)) throw new PipelineError('MEDIA_DESTINATION_UNSUPPORTED', 'the work dir cannot store trees');
      const stored = await work.putTree(ctx.setId, options.name, { dir: root, entries }, { signal: ctx.signal, onBytes: (b) => ctx.progress({ task: 'media', bytes: b }) });
      const indexPath = join(ctx.setDir, indexName);
      const digest = await writeTreeIndex(indexPath, entries, { signal: ctx.signal });
      // A plaintext copy for shipping: a transform (encryption) may replace the artifact's own file.
      const plainIndex = join(ctx.tmpDir, `media-${options.name}.index.jsonl`);
      await writeTreeIndex(plainIndex, entries);

      const { symlinks, special, names } = found.skipped;
      for (const [what, list] of [['symbolic links', symlinks], ['special files (sockets, FIFOs, devices)', special], ['files whose names cannot be stored safely', names]] as const) {
        if (list.length > 0) api.log.warn({ count: list.length, first: list.slice(0, 5) }, `media: ${list.length} ${what} not backed up (first: ${list.slice(0, 5).join(', ')})`);
      }
      for (const ex of found.excluded) {
        api.log.info({ path: ex.path, files: ex.files, bytes: ex.bytes }, `media: left out ${ex.path}/ (${ex.files} files, ${ex.bytes} bytes)`);
      }
      const meta = {
        folder: basename(root),
        source: root,
        files: stored.files,
        bytes: stored.bytes,
        excluded: found.excluded,
        skipped: { symlinks: symlinks.length, special: special.length, names: names.length },
        hashed: { files: hashed, bytes: hashedBytes },
        written: { files: stored.filesWritten, bytes: stored.bytesWritten },
      };
      const artifact: Artifact = {
        name: indexName,
        path: indexPath,
        kind: 'files',
        format: FORMAT,
        compression: 'none',
        bytes: digest.bytes,
        sha256: digest.sha256,
        meta,
        tree: { name: options.name, files: stored.files, bytes: stored.bytes, listSha256: digest.sha256, dir: join(ctx.setDir, options.name), index: plainIndex },
      };
      ctx.addArtifact(artifact);
      api.log.info(
        { files: stored.files, bytes: stored.bytes, hashed, written: stored.filesWritten, writtenBytes: stored.bytesWritten, durationMs: Date.now() - started },
        `media: ${stored.files} files (${stored.bytes} bytes); ${hashed} hashed, ${stored.filesWritten} copied (${stored.bytesWritten} bytes) since the previous set`,
      );
    });

    // Other stages' streamed artifacts are nothing for this verify tap: say so, so they stay one pass.
    hooks.verifyStream.tapPromise(api.name, async (request) => {
      if (request.artifact.format !== FORMAT) request.claim();
    });
    hooks.verify.tapPromise(api.name, async (artifact, ctx) => {
      if (artifact.format !== FORMAT || !artifact.tree) return;
      const entries = await readTreeIndex(artifact.path);
      // A restore drill (`pipeline verify --restore-test`) rebuilds the whole tree in a throwaway folder.
      const drill = isStored(ctx) && ctx.request.restoreTest === true;
      const all = options.verifyAll || drill;
      const chosen = all ? entries : sample(entries, options.verifySample);
      if (isStored(ctx)) {
        const d = storedDestination(ctx);
        const dir = join(ctx.tmpDir, `verify-${artifact.tree.name}`);
        const started = Date.now();
        try {
          await readBack(ctx, d, artifact.tree.name, chosen, dir);
        } finally {
          await rm(dir, { recursive: true, force: true });
        }
        if (drill) {
          const bytes = entries.reduce((sum, e) => sum + e.bytes, 0);
          recordDrill(artifact, { part: 'media', bytes, durationMs: Date.now() - started, detail: `${entries.length} files rebuilt from ${d.name} into a throwaway folder, every sha256 matches` });
        }
      } else {
        const dir = artifact.tree.dir ?? join(ctx.setDir, artifact.tree.name);
        await eachLimited(chosen, 4, async (e) => {
          const got = await hashFile(pathInTree(dir, e.path), ctx.signal);
          if (got.sha256 !== e.sha256 || got.bytes !== e.bytes) throw new PipelineError('CHECKSUM_MISMATCH', `media: ${e.path} in the staged tree does not match its index`);
        }, ctx.signal);
      }
      artifact.meta.verification = { checked: chosen.length, of: entries.length, full: chosen.length === entries.length };
      api.log.info({ checked: chosen.length, of: entries.length }, `media: ${chosen.length} of ${entries.length} files read back and match their sha256`);
    });

    hooks.restore.for(FORMAT).tapPromise(api.name, async (artifact, target, ctx) => {
      if (!target.directory || !artifact.tree) return undefined;
      if (!isStored(ctx)) return undefined;
      const started = Date.now();
      const folder = typeof artifact.meta.folder === 'string' && artifact.meta.folder ? basename(artifact.meta.folder) : artifact.tree.name;
      const into = join(target.directory, folder);
      const present = await readdir(into).catch(() => undefined);
      if (present && present.length > 0) {
        throw new PipelineError('MEDIA_RESTORE_TARGET_NOT_EMPTY', `${into} already holds files; the media tree is restored only into an empty folder`, { hint: MEDIA_ERRORS.MEDIA_RESTORE_TARGET_NOT_EMPTY });
      }
      const entries = await readTreeIndex(artifact.path);
      const d = storedDestination(ctx);
      await mkdir(into, { recursive: true, mode: 0o755 });
      await readBack(ctx, d, artifact.tree.name, entries, into, (b) => ctx.progress({ task: 'restore', bytes: b, totalBytes: artifact.tree!.bytes }));
      // Back to what the source had: each file's mode and mtime; folders readable by the web server (0755).
      const dirs = new Set<string>();
      await eachLimited(entries, 8, async (e) => {
        const p = pathInTree(into, e.path);
        await chmod(p, e.mode & 0o777);
        await utimes(p, e.mtimeMs / 1000, e.mtimeMs / 1000);
        const parts = e.path.split('/');
        for (let i = 1; i < parts.length; i++) dirs.add(parts.slice(0, i).join('/'));
      });
      for (const dir of dirs) await chmod(pathInTree(into, dir), 0o755);
      await chmod(into, 0o755);
      return { artifact: artifact.name, into, files: [`${folder}/ (${entries.length} files)`], mismatches: [], durationMs: Date.now() - started };
    });
  },
});
