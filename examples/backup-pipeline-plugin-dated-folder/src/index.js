/**
 * backup-pipeline-plugin-dated-folder: a community destination, written only against the public
 * API of @backup-pipeline/core. It keeps backup sets in a local folder filed by date:
 *
 *   <path>/2030/01/20300101T014500Z-mastodon/mastodon_production.dump.zst.gpg
 *   <path>/2030/01/20300101T014500Z-mastodon/manifest.json        ← written last
 *
 * The layout is this plugin's own business: the core only ever speaks the Destination interface
 * (describe, check, put, list, get, delete) in terms of set ids and file names.
 *
 * Plain ESM JavaScript with JSDoc types, so it needs no build step.
 */
import { randomBytes } from 'node:crypto';
import { constants, createReadStream } from 'node:fs';
import { access, readdir, rename, rm, rmdir, stat } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { definePlugin, parseSetId, syncDir, writeFileAtomic, MANIFEST_NAME, PipelineError, z } from '@backup-pipeline/core';

/** @typedef {import('@backup-pipeline/core').Destination} Destination */
/** @typedef {import('@backup-pipeline/core').DestinationOperationOptions} DestinationOperationOptions */
/** @typedef {import('@backup-pipeline/core').PutSource} PutSource */
/** @typedef {import('@backup-pipeline/core').StoredSet} StoredSet */

export const DatedFolderOptions = z
  .object({
    path: z.string().min(1).describe('Folder that holds the dated tree (created 0700 if missing). `~/` and paths relative to the config file are allowed.'),
    layout: z
      .enum(['year/month', 'year/month/day'])
      .default('year/month')
      .describe('How sets are filed: `YYYY/MM/<set id>/` or `YYYY/MM/DD/<set id>/`, from the set id\'s time (UTC).'),
  })
  .strict();

/** @typedef {import('@backup-pipeline/core').z.output<typeof DatedFolderOptions>} DatedFolderOptions */

const DATE_FOLDER = /^\d+$/;

/**
 * The folder of a set inside `root`, or a PipelineError for anything that is not a set id (`..`,
 * `a/b`, ''): a destination must never let a set id or a file name escape its root.
 * @param {string} root
 * @param {DatedFolderOptions['layout']} layout
 * @param {string} setId
 */
export function setFolder(root, layout, setId) {
  const parsed = parseSetId(setId);
  if (!parsed) throw new PipelineError('SET_NOT_FOUND', `"${setId}" is not a backup set id`);
  const t = parsed.time;
  const parts = [String(t.getUTCFullYear()), String(t.getUTCMonth() + 1).padStart(2, '0')];
  if (layout === 'year/month/day') parts.push(String(t.getUTCDate()).padStart(2, '0'));
  return join(root, ...parts, setId);
}

/** @param {string} name */
function checkFileName(name) {
  if (!name || name === '.' || name === '..' || name.includes('/') || name.includes('\0') || name.startsWith('.upload-')) {
    throw new PipelineError('DESTINATION_FAILED', `"${name}" is not a valid file name in a backup set`, {
      hint: 'Artifact names are single path segments; this is a bug in the stage that named it.',
    });
  }
}

/** @implements {Destination} */
export class DatedFolderDestination {
  /**
   * @param {string} root
   * @param {DatedFolderOptions['layout']} layout
   */
  constructor(root, layout) {
    this.root = root;
    this.layout = layout;
  }

  describe() {
    return `dated folder ${this.root} (${this.layout === 'year/month' ? 'YYYY/MM' : 'YYYY/MM/DD'}/<set id>/)`;
  }

  /** The root (or the nearest existing folder above it, where `put` will create it) is a writable folder. Creates nothing. */
  async check() {
    for (let dir = this.root; ; dir = dirname(dir)) {
      const info = await stat(dir).catch(() => undefined);
      if (info) {
        if (!info.isDirectory()) throw new PipelineError('DESTINATION_FAILED', `${dir} is not a folder`, { hint: 'Point `path` at a folder.' });
        await access(dir, constants.W_OK).catch(() => {
          throw new PipelineError('DESTINATION_FAILED', `${dir} is not writable`, { hint: 'Run as a user who may write there, or change `path`.' });
        });
        return;
      }
      if (dirname(dir) === dir) return;
    }
  }

  /**
   * Copies into a hidden upload file (itself written atomically by the core's writer), checks the
   * copy's size and sha256 against what the runner declared, and only then renames it over the
   * final name: a bad copy never replaces a good file, and a reader never sees half a file.
   * @param {string} setId
   * @param {string} name
   * @param {PutSource} source
   * @param {DestinationOperationOptions} [options]
   */
  async put(setId, name, source, options = {}) {
    const dir = setFolder(this.root, this.layout, setId);
    checkFileName(name);
    const upload = join(dir, `.upload-${randomBytes(6).toString('hex')}`);
    try {
      const written = await writeFileAtomic(upload, createReadStream(source.path), { signal: options.signal, onBytes: options.onBytes });
      if (written.sha256 !== source.sha256 || written.bytes !== source.bytes) {
        throw new PipelineError('CHECKSUM_MISMATCH', `${name} changed while it was copied to ${this.root} (sha256 ${written.sha256}, expected ${source.sha256})`);
      }
      await rename(upload, join(dir, name));
      await syncDir(dir);
    } finally {
      await rm(upload, { force: true });
    }
  }

  /**
   * Walks `YYYY/MM[/DD]/` and reports every set folder filed where its id says it belongs. Only
   * the presence of `manifest.json` is reported; the caller reads and validates it.
   * @returns {Promise<StoredSet[]>}
   */
  async list() {
    /** @type {StoredSet[]} */
    const sets = [];
    const depth = this.layout === 'year/month' ? 2 : 3;
    /** @param {string} dir @param {number} level */
    const walk = async (dir, level) => {
      const entries = await readdir(dir, { withFileTypes: true }).catch((/** @type {NodeJS.ErrnoException} */ e) => {
        if (e.code === 'ENOENT') return [];
        throw e;
      });
      for (const entry of entries) {
        if (!entry.isDirectory()) continue;
        const path = join(dir, entry.name);
        if (level < depth) {
          if (DATE_FOLDER.test(entry.name)) await walk(path, level + 1);
          continue;
        }
        // A folder filed under the wrong date is not ours to report (nor to delete).
        if (!parseSetId(entry.name) || setFolder(this.root, this.layout, entry.name) !== path) continue;
        // Every file with its size: the core compares them with the manifest (complete or damaged).
        /** @type {Array<{ name: string, bytes: number }>} */
        const files = [];
        /** @type {Date | undefined} */
        let manifestAt;
        for (const file of await readdir(path, { withFileTypes: true })) {
          if (!file.isFile()) continue;
          const info = await stat(join(path, file.name));
          files.push({ name: file.name, bytes: info.size });
          if (file.name === MANIFEST_NAME) manifestAt = info.mtime;
        }
        const modifiedAt = manifestAt ?? (await stat(path)).mtime;
        sets.push({ id: entry.name, hasManifest: manifestAt !== undefined, modifiedAt, files });
      }
    };
    await walk(this.root, 0);
    return sets.sort((a, b) => a.id.localeCompare(b.id));
  }

  /**
   * @param {string} setId
   * @param {string} name
   * @param {string} toPath
   * @param {DestinationOperationOptions} [options]
   */
  async get(setId, name, toPath, options = {}) {
    checkFileName(name);
    const from = join(setFolder(this.root, this.layout, setId), name);
    const info = await stat(from).catch(() => undefined);
    if (!info?.isFile()) throw new PipelineError('SET_NOT_FOUND', `${setId}/${name} is not in ${this.root}`);
    await writeFileAtomic(toPath, createReadStream(from), { signal: options.signal, onBytes: options.onBytes });
  }

  /**
   * Removes the set, then the date folders it leaves empty. A missing set is not an error.
   * @param {string} setId
   */
  async delete(setId) {
    const dir = setFolder(this.root, this.layout, setId);
    await rm(dir, { recursive: true, force: true });
    for (let parent = dirname(dir); parent !== this.root && parent.startsWith(this.root); parent = dirname(parent)) {
      // rmdir only removes empty folders; a concurrent put into a sibling set keeps its folder.
      const removed = await rmdir(parent).then(
        () => true,
        () => false,
      );
      if (!removed) break;
    }
  }
}

export default definePlugin({
  name: 'dated-folder',
  description: 'Destination: a local folder with sets filed by date (YYYY/MM/<set id>/).',
  destination: {
    options: DatedFolderOptions,
    create: (options, api) => new DatedFolderDestination(api.resolvePath(options.path), options.layout),
  },
});
