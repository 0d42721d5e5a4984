/**
 * A destination in a local folder. It serves the `local` plugin and the run's work dir, and is the
 * reference implementation of the Destination interface.
 */
import { constants, createReadStream } from 'node:fs';
import { readdir, rm, stat, access } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import { writeFileAtomic } from './atomic-file.js';
import { assertSetId, MANIFEST_NAME, type Destination, type DestinationOperationOptions, type PutSource, type StoredFile, type StoredSet } from './destination.js';
import { PipelineError } from './errors.js';
import { parseSetId } from './manifest.js';

export class LocalFolderDestination implements Destination {
  constructor(readonly root: string) {}

  describe(): string {
    return `local folder ${this.root}`;
  }

  /** Checks the folder (or the nearest folder above it, which `put` will create it in) is writable. Creates nothing. */
  async check(): Promise<void> {
    let dir = this.root;
    for (;;) {
      const info = await stat(dir).catch(() => undefined);
      if (info) {
        if (!info.isDirectory()) throw new PipelineError('DESTINATION_FAILED', `${dir} is not a folder`);
        await access(dir, constants.W_OK).catch(() => {
          throw new PipelineError('DESTINATION_FAILED', `${dir} is not writable`);
        });
        return;
      }
      if (dirname(dir) === dir) return;
      dir = dirname(dir);
    }
  }

  async put(setId: string, name: string, source: PutSource, options: DestinationOperationOptions = {}): Promise<void> {
    const target = join(this.setDir(setId), name);
    const written = await writeFileAtomic(target, createReadStream(source.path), { signal: options.signal, onBytes: options.onBytes });
    if (written.sha256 !== source.sha256 || written.bytes !== source.bytes) {
      await rm(target, { force: true });
      throw new PipelineError('CHECKSUM_MISMATCH', `${name} changed while it was copied to ${this.root} (sha256 ${written.sha256}, expected ${source.sha256})`);
    }
  }

  async list(): Promise<StoredSet[]> {
    const entries = await readdir(this.root, { withFileTypes: true }).catch((e: NodeJS.ErrnoException) => {
      if (e.code === 'ENOENT') return [];
      throw e;
    });
    const sets: StoredSet[] = [];
    for (const entry of entries) {
      if (!entry.isDirectory() || !parseSetId(entry.name)) continue;
      const dir = join(this.root, entry.name);
      const files: StoredFile[] = [];
      let manifestAt: Date | undefined;
      for (const file of await readdir(dir, { withFileTypes: true })) {
        if (!file.isFile()) continue;
        const info = await stat(join(dir, file.name));
        files.push({ name: file.name, bytes: info.size });
        if (file.name === MANIFEST_NAME) manifestAt = info.mtime;
      }
      const modifiedAt = manifestAt ?? (await stat(dir)).mtime;
      sets.push({ id: entry.name, hasManifest: manifestAt !== undefined, modifiedAt, files });
    }
    return sets.sort((a, b) => a.id.localeCompare(b.id));
  }

  async get(setId: string, name: string, toPath: string, options: DestinationOperationOptions = {}): Promise<void> {
    const from = join(this.setDir(setId), name);
    await stat(from).catch(() => {
      throw new PipelineError('SET_NOT_FOUND', `${setId}/${name} is not in ${this.root}`);
    });
    await writeFileAtomic(toPath, createReadStream(from), { signal: options.signal, onBytes: options.onBytes });
  }

  async delete(setId: string): Promise<void> {
    // The manifest goes first: a set deleted halfway is then partial, never one that looks damaged.
    await rm(join(this.setDir(setId), MANIFEST_NAME), { force: true });
    await rm(this.setDir(setId), { recursive: true, force: true });
  }

  private setDir(setId: string): string {
    assertSetId(setId);
    return join(this.root, setId);
  }
}
