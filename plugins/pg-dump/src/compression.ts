/**
 * How dump bytes are compressed and read back. zstd and lz4 run as separate processes on the
 * stream (pg_dump writes with -Z0); gzip is pg_dump's own compression (inside a custom or
 * directory archive, so those files are read by pg_restore as they are). Restore and verify use
 * `plaintextStream` / `decompressToFile` so the knowledge lives in one place.
 */
import { createReadStream } from 'node:fs';
import { chmod, rm, stat } from 'node:fs/promises';
import type { Readable } from 'node:stream';
import { PipelineError, writeFileAtomic, type Artifact, type Compression, type KnownCompression, type ExecProcess, type RunContext } from '@backup-pipeline/core';

export interface CompressionOptions {
  method: KnownCompression;
  level?: number;
  /** zstd worker threads; 0 = one per core. */
  threads?: number;
}

/** Default levels: zstd 3 (fast, good ratio), lz4 1, gzip 6. */
export function defaultLevel(method: KnownCompression): number | undefined {
  return { zstd: 3, lz4: 1, gzip: 6, none: undefined }[method];
}

/** The command that compresses stdin to stdout, or undefined for `none`. */
export function compressCommand(options: CompressionOptions): [string, string[]] | undefined {
  const level = options.level ?? defaultLevel(options.method);
  switch (options.method) {
    case 'zstd':
      return ['zstd', ['-q', '-c', `-T${options.threads ?? 0}`, ...(level && level > 19 ? ['--ultra'] : []), `-${level}`]];
    case 'lz4':
      return ['lz4', ['-q', '-c', `-${level}`]];
    case 'gzip':
      return ['gzip', ['-c', `-${level}`]];
    case 'none':
      return undefined;
  }
}

/** The command that decompresses stdin to stdout, or undefined for `none`. */
export function decompressCommand(method: Compression): [string, string[]] | undefined {
  switch (method) {
    case 'zstd':
      return ['zstd', ['-q', '-d', '-c']];
    case 'lz4':
      return ['lz4', ['-q', '-d', '-c']];
    case 'gzip':
      return ['gzip', ['-d', '-c']];
    case 'none':
      return undefined;
    default:
      throw new PipelineError('COMPRESSION_UNKNOWN', `the compression "${method}" is not one pg-dump can read (zstd, lz4, gzip, none)`, {
        hint: 'Install and configure the plugin that wrote this compression.',
      });
  }
}

/** The artifact fields that say how to read it (an artifact, or its manifest entry). */
export type ReadableArtifact = Pick<Artifact, 'path' | 'format' | 'compression' | 'name'> & { meta?: Record<string, unknown> };

/**
 * The compression wrapped around the whole file, which must be undone before PostgreSQL's tools
 * read it. pg_dump's own gzip inside a custom or directory archive is not: pg_restore reads those.
 */
export function outerCompression(artifact: Pick<ReadableArtifact, 'format' | 'compression' | 'meta'>): Compression {
  const insideArchive = artifact.meta?.compressedBy === 'pg_dump' && artifact.format !== 'pg-plain';
  return insideArchive ? 'none' : artifact.compression;
}

export interface PlaintextStream {
  stream: Readable;
  /** Settles when the stream is fully read: rejects when the decompressor failed (truncated or corrupt input). */
  done: Promise<void>;
  /** Stops reading early. */
  cancel(): void;
}

/**
 * A decompressor's failure that says nothing about the file: it was stopped because another part
 * of its chain failed first, the run was interrupted, the program is missing, or it could not
 * write (a full disk). Only other failures mean the file is truncated or corrupt.
 */
function notAboutTheFile(error: unknown): boolean {
  const e = error as PipelineError | undefined;
  return e?.details?.stopped === true || ['ABORTED', 'EXEC_NOT_FOUND', 'NO_SPACE', 'ACCESS_DENIED'].includes(e?.code ?? '');
}

/**
 * What TOOL's failure to decompress the artifact is to say: ARTIFACT_CORRUPT, or the failure as it
 * is when it says nothing about the file (a full disk is not a corrupt backup: saying so could make
 * someone throw a good set away).
 */
function decompressFailure(artifact: ReadableArtifact, tool: string, error: unknown): unknown {
  if (notAboutTheFile(error)) return error;
  return new PipelineError('ARTIFACT_CORRUPT', `${artifact.name} cannot be decompressed with ${tool}: ${(error as Error).message}`, {
    hint: 'The file is truncated or corrupt; do not trust this backup.',
    cause: error,
  });
}

/** The artifact's content with its outer compression undone, as a stream (nothing buffered). */
export function plaintextStream(artifact: ReadableArtifact, ctx: Pick<RunContext, 'exec'>): PlaintextStream {
  const cmd = decompressCommand(outerCompression(artifact));
  if (!cmd) {
    const stream = createReadStream(artifact.path);
    const done = new Promise<void>((resolve, reject) => {
      stream.on('close', resolve);
      stream.on('error', reject);
    });
    return { stream, done, cancel: () => stream.destroy() };
  }
  const proc: ExecProcess = ctx.exec(cmd[0], cmd[1], { stdin: { file: artifact.path }, stdout: 'stream', label: `${cmd[0]} -d (${artifact.name})` });
  const done = proc.then(
    () => undefined,
    (error: unknown) => {
      throw decompressFailure(artifact, cmd[0], error);
    },
  );
  return { stream: proc.stdout!, done, cancel: () => void proc.kill() };
}

/**
 * Writes the artifact's content, outer compression undone, straight into the stdin of `consumer`
 * (started with `stdin: { fromProcess: true }`) over an OS pipe: the decompressor (or `cat`)
 * reads the file itself, so no byte passes through Node.js. `done` rejects with ARTIFACT_CORRUPT
 * when the decompressor fails.
 */
export function plaintextInto(artifact: ReadableArtifact, consumer: ExecProcess, ctx: Pick<RunContext, 'exec'>): Omit<PlaintextStream, 'stream'> {
  const cmd = decompressCommand(outerCompression(artifact)) ?? ['cat', []];
  const proc = ctx.exec(cmd[0], [...cmd[1], artifact.path], { stdout: { pipeTo: consumer }, label: `${cmd[0]}${cmd[0] === 'cat' ? '' : ' -d'} (${artifact.name})` });
  const done = proc.then(
    () => undefined,
    (error: unknown) => {
      throw decompressFailure(artifact, cmd[0], error);
    },
  );
  return { done, cancel: () => void proc.kill() };
}

/**
 * Writes the artifact's content, outer compression undone, to `dest` (one temp file, mode 0600).
 * zstd writes the file itself (`-o`, keeping the source's 0600 mode): the plaintext of a restore
 * (gigabytes) then never passes through Node.js, and this scratch copy is not fsynced.
 */
export async function decompressToFile(artifact: ReadableArtifact, dest: string, ctx: Pick<RunContext, 'exec' | 'signal'>): Promise<{ bytes: number }> {
  if (outerCompression(artifact) === 'zstd') {
    try {
      await ctx.exec('zstd', ['-q', '-d', '-f', '-o', dest, '--', artifact.path], { signal: ctx.signal, label: `zstd -d (${artifact.name})`, writes: dest });
      await chmod(dest, 0o600);
      return { bytes: (await stat(dest)).size };
    } catch (error) {
      await rm(dest, { force: true });
      throw decompressFailure(artifact, 'zstd', error);
    }
  }
  const plain = plaintextStream(artifact, ctx);
  try {
    const [digest] = await Promise.all([writeFileAtomic(dest, plain.stream, { signal: ctx.signal }), plain.done]);
    return { bytes: digest.bytes };
  } catch (error) {
    plain.cancel();
    await rm(dest, { force: true });
    throw error;
  }
}
