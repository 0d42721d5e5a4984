/**
 * Getting a stored set back: find it (an id or "latest") in the work dir or a destination, fetch
 * every artifact, check every sha256 against the manifest, and decrypt — checking the plaintext's
 * sha256 too. Shared by `restore`, `verify` and `demo`.
 */
import { rm } from 'node:fs/promises';
import { join } from 'node:path';
import {
  hashFile,
  listSets,
  PipelineError,
  type Artifact,
  type Manifest,
  type NamedDestination,
  type ResolvedPipeline,
  type RunContext,
  type SetInfo,
} from '@backup-pipeline/core';
import { decrypt, type GpgOptions } from '@backup-pipeline/plugin-gpg';

export interface LocatedSet {
  from: NamedDestination;
  set: SetInfo & { manifest: Manifest };
}

/** The set `id` (or the newest complete one for "latest") from the first destination that has it complete. */
export async function locateSet(destinations: readonly NamedDestination[], id: string): Promise<LocatedSet> {
  const problems: string[] = [];
  for (const from of destinations) {
    const sets = await listSets(from.destination);
    const set = id === 'latest' ? sets.filter((s) => s.complete).at(-1) : sets.find((s) => s.id === id);
    if (set?.complete && set.manifest) return { from, set: set as LocatedSet['set'] };
    if (set) problems.push(`${from.name}: ${set.problem ?? 'incomplete'}`);
  }
  if (problems.length > 0) {
    throw new PipelineError('SET_INCOMPLETE', `set ${id} is not complete anywhere (${problems.join('; ')})`);
  }
  throw new PipelineError('SET_NOT_FOUND', `${id === 'latest' ? 'no complete set' : `set ${id} was not found`} in ${destinations.map((d) => d.name).join(', ')}`);
}

export interface FetchOptions {
  gnupgHome?: string;
  passphraseFile?: string;
}

/** Decryption settings: the command's flags, else the pipeline's gpg stage. */
export function decryptionOptions(pipeline: ResolvedPipeline, flags: FetchOptions, resolvePath: (p: string) => string): FetchOptions {
  const gpg = pipeline.stages.find((s) => s.plugin.name === 'gpg')?.options as GpgOptions | undefined;
  const pick = (flag?: string, configured?: string) => (flag ? resolvePath(flag) : configured ? resolvePath(configured) : undefined);
  return { gnupgHome: pick(flags.gnupgHome, gpg?.gnupgHome), passphraseFile: pick(flags.passphraseFile, gpg?.passphraseFile) };
}

/** Fetches every artifact of the set into `dir`, checks it, decrypts it; returns plaintext artifacts. */
export async function fetchSet(located: LocatedSet, dir: string, ctx: Pick<RunContext, 'signal' | 'secrets' | 'log'>, options: FetchOptions = {}): Promise<Artifact[]> {
  const { from, set } = located;
  const out: Artifact[] = [];
  for (const entry of set.manifest.artifacts) {
    const path = join(dir, entry.name);
    ctx.log.info({ destination: from.name, setId: set.id, artifact: entry.name }, `fetching ${entry.name} from ${from.name}`);
    await from.destination.get(set.id, entry.name, path, { signal: ctx.signal });
    const got = await hashFile(path, ctx.signal);
    if (got.sha256 !== entry.sha256 || got.bytes !== entry.bytes) {
      throw new PipelineError('CHECKSUM_MISMATCH', `${from.name}/${set.id}/${entry.name} does not match its manifest (sha256 ${got.sha256.slice(0, 16)}…, ${got.bytes} bytes; expected ${entry.sha256.slice(0, 16)}…, ${entry.bytes} bytes)`, {
        details: { destination: from.name, setId: set.id, artifact: entry.name },
      });
    }
    let artifact: Artifact = { ...entry, path, meta: entry.meta ?? {} };
    if (entry.encryption) {
      if (!entry.plain) throw new PipelineError('MANIFEST_INVALID', `${entry.name} is encrypted but the manifest does not describe its plaintext`);
      const plainPath = join(dir, entry.plain.name);
      const plain = await decrypt(path, { to: plainPath, gnupgHome: options.gnupgHome, passphraseFile: options.passphraseFile, signal: ctx.signal, secrets: ctx.secrets });
      if (plain.sha256 !== entry.plain.sha256) {
        throw new PipelineError('CHECKSUM_MISMATCH', `${entry.name} decrypts to content that does not match the manifest (sha256 ${plain.sha256.slice(0, 16)}…)`);
      }
      await rm(path, { force: true });
      artifact = { ...artifact, name: entry.plain.name, path: plainPath, bytes: plain.bytes, sha256: plain.sha256, encryption: undefined };
    }
    out.push(artifact);
  }
  return out;
}
