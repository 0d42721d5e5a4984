/**
 * The `files` stage: archives Mastodon's `.env.production` (the secrets a restored database needs)
 * and/or its local media (`public/system`) as tar artifacts, streamed from the system `tar`
 * (through `zstd -T0` or `gzip`) straight into the set — never held in memory — in one pass
 * through the core (`ctx.streamArtifact`: an encryptor that offers a filter is spliced in).
 *
 * The secrets must only ever leave the host encrypted: a late `transform` tap refuses an
 * unencrypted secrets artifact (FILES_UNENCRYPTED_SECRETS) unless `allowUnencrypted: true`, so put
 * an encryption stage (gpg) in the pipeline.
 */
import { parseEnvFile } from '@backup-pipeline/plugin-credentials';
import { mkdir, mkdtemp, readdir, readFile, rm, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { COMPRESSION_EXTENSION, defaultCompressor, definePlugin, describeObjectStorage, mastodonObjectStorage, PipelineError, recordDrill, z, type Artifact, type ExecProcess, type RestoreContext, type RunContext } from '@backup-pipeline/core';

export const FilesOptions = z
  .object({
    envFile: z
      .string()
      .min(1)
      .optional()
      .describe('Mastodon env file to archive as the `secrets` artifact (e.g. ~/live/.env.production). Also read for S3_ENABLED.'),
    mediaDir: z.string().min(1).optional().describe('Local media folder to archive (e.g. ~/live/public/system). Skipped when the env file says S3_ENABLED=true.'),
    excludeCache: z.boolean().default(true).describe('Leave out `cache/` inside mediaDir (remote media Mastodon fetches again).'),
    compression: z.enum(['zstd', 'gzip', 'none']).default('zstd').describe('Compress the tar streams with `zstd -T0` (default), `gzip`, or not at all.'),
    allowUnencrypted: z
      .boolean()
      .default(false)
      .describe('Ship the secrets artifact even when no stage encrypted it. Default false: the run fails with FILES_UNENCRYPTED_SECRETS.'),
  })
  .strict()
  .refine((o) => o.envFile !== undefined || o.mediaDir !== undefined, { message: 'set envFile, mediaDir, or both' });

export type FilesOptions = z.output<typeof FilesOptions>;

const SECRET_NAME = /PASS|SECRET|KEY|TOKEN|SALT|CREDENTIAL|OTP/i;
/** What a restored Mastodon database cannot do without (sessions, 2FA). */
const MASTODON_SECRETS = ['SECRET_KEY_BASE', 'OTP_SECRET'];

/** Files and bytes under a folder (a restore drill's count). */
async function treeSize(dir: string): Promise<{ files: number; bytes: number }> {
  let files = 0;
  let bytes = 0;
  for (const entry of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (!entry.isFile()) continue;
    files++;
    bytes += (await stat(join(entry.parentPath, entry.name))).size;
  }
  return { files, bytes };
}

/** tar's flag for reading each compression it writes. */
const TAR_FLAG: Record<string, string[]> = { zstd: ['--zstd'], gzip: ['-z'], none: [] };

interface TarJob {
  /** Folder tar changes into. */
  cwd: string;
  members: string[];
  excludes?: string[];
  target: string;
  compression: FilesOptions['compression'];
  /** tar exit codes accepted (1: a file changed while it was read). */
  okExitCodes: number[];
}

/**
 * tar → (zstd|gzip) → file in one pass through the core (`ctx.streamArtifact`): verifiers may read
 * the tar stream, the transforms' filters (gpg, age) are spliced after the compressor, and the file
 * is written and hashed once; every process's exit status is checked, nothing is left on failure.
 * Returns the artifact (named after the filters) and tar's exit code.
 */
export async function streamTar(
  ctx: Pick<RunContext, 'exec' | 'signal' | 'setDir' | 'streamArtifact'>,
  job: TarJob,
  planned: { name: string; kind: string; meta: Record<string, unknown> },
): Promise<{ artifact: Artifact; tarExitCode: number }> {
  const excludes = (job.excludes ?? []).map((e) => `--exclude=${e}`);
  let tar: ExecProcess | undefined;
  const made = await ctx.streamArtifact({
    artifact: { ...planned, format: 'tar', compression: job.compression },
    dir: dirname(job.target),
    start: (stdout) => (tar = ctx.exec('tar', ['-C', job.cwd, '--sort=name', '--anchored', ...excludes, '-cf', '-', '--', ...job.members], { stdout, okExitCodes: job.okExitCodes })),
    compressor: defaultCompressor(job.compression),
    task: planned.kind,
  });
  return { artifact: made.artifact, tarExitCode: (await tar!).exitCode };
}

export default definePlugin({
  name: 'files',
  description: "Archives Mastodon's .env.production (secrets, must be encrypted) and local media as streamed tar artifacts.",
  options: FilesOptions,
  apply(hooks, options, { log, resolvePath, secrets }) {
    const envFile = options.envFile === undefined ? undefined : resolvePath(options.envFile);
    const mediaDir = options.mediaDir === undefined ? undefined : resolvePath(options.mediaDir);
    const ext = `.tar${COMPRESSION_EXTENSION[options.compression]}`;

    const readEnv = async (): Promise<Record<string, string>> => {
      if (!envFile) return {};
      const vars = Object.fromEntries([...parseEnvFile(await readFile(envFile, 'utf8'), envFile)].map(([name, entry]) => [name, entry.value]));
      for (const [name, value] of Object.entries(vars)) if (SECRET_NAME.test(name) && value.length >= 6) secrets.add(value);
      return vars;
    };

    hooks.preflight.tapPromise('files', async (ctx) => {
      if (envFile && !(await stat(envFile).catch(() => undefined))?.isFile()) {
        throw new PipelineError('FILES_MISSING', `env file ${envFile} does not exist`, { hint: 'Fix `envFile` (usually ~/live/.env.production) or run as the user that can read it.' });
      }
      const s3 = mastodonObjectStorage(await readEnv());
      if (s3) {
        // Say it before anything runs: a media folder on this host holds no uploads then.
        ctx.facts.mediaStorage = `object storage: ${describeObjectStorage(s3)}`;
        const said = `media is in object storage (S3_ENABLED=true in ${envFile}, ${describeObjectStorage(s3)}): it is not in this set`;
        log.warn({ envFile }, `${said}${mediaDir ? `; ${mediaDir} is not archived` : ''}. Back the bucket up with a bucket-copy stage.`);
      }
      if (mediaDir && !s3 && !(await stat(mediaDir).catch(() => undefined))?.isDirectory()) {
        throw new PipelineError('FILES_MISSING', `media folder ${mediaDir} does not exist`, { hint: 'Fix `mediaDir` (usually ~/live/public/system).' });
      }
    });

    hooks.plan.tapPromise('files', async (plan) => {
      if (envFile) plan.add({ description: `archive ${envFile} as secrets${ext}${options.allowUnencrypted ? ' (unencrypted allowed)' : ' (refused unless encrypted)'}` });
      if (mediaDir) plan.add({ description: `archive ${mediaDir} as media${ext}${options.excludeCache ? ' without cache/' : ''} (skipped when S3_ENABLED=true)` });
    });

    hooks.produce.tapPromise('files', async (ctx) => {
      const env = await readEnv();
      const add = (artifact: Artifact) => {
        ctx.addArtifact(artifact);
        log.info({ artifact: artifact.name, bytes: artifact.bytes }, `archived ${artifact.name} (${artifact.bytes} bytes)`);
      };
      if (envFile) {
        const name = `secrets${ext}`;
        const made = await streamTar(ctx, { cwd: dirname(envFile), members: [basename(envFile)], target: join(ctx.setDir, name), compression: options.compression, okExitCodes: [0] }, { name, kind: 'secrets', meta: { file: basename(envFile) } });
        add(made.artifact);
      }
      if (mediaDir) {
        if (mastodonObjectStorage(env)) {
          log.warn({ mediaDir }, `media not archived: ${basename(envFile ?? '.env')} says S3_ENABLED=true (media lives in object storage; back it up with a bucket-copy stage)`);
          return;
        }
        const name = `media${ext}`;
        const digest = await streamTar(
          ctx,
          {
            cwd: mediaDir,
            members: ['.'],
            excludes: options.excludeCache ? ['./cache'] : [],
            target: join(ctx.setDir, name),
            compression: options.compression,
            okExitCodes: [0, 1],
          },
          { name, kind: 'files', meta: { folder: basename(mediaDir), excludeCache: options.excludeCache } },
        );
        if (digest.tarExitCode === 1) log.warn({ mediaDir }, 'some media files changed while they were archived (tar exit 1); the archive is still usable');
        add(digest.artifact);
      }
    });

    // The restore half: the archives are unpacked into the folder given (`pipeline restore --files-to DIR`):
    // the env file into DIR itself, media into DIR/<its folder name>. Nothing existing is overwritten.
    hooks.restore.for('tar').tapPromise('files', async (artifact, target, ctx) => {
      if (!target.directory) return undefined;
      const started = Date.now();
      const readable = TAR_FLAG[artifact.compression] !== undefined ? artifact : await ctx.decompress(artifact);
      const into = artifact.kind === 'files' ? join(target.directory, typeof artifact.meta.folder === 'string' ? basename(artifact.meta.folder) : 'media') : target.directory;
      await mkdir(into, { recursive: true, mode: 0o700 });
      const flag = TAR_FLAG[readable.compression] ?? [];
      const listed = await ctx.exec('tar', ['-t', ...flag, '-f', readable.path], { label: 'tar -t' });
      await ctx.exec('tar', ['-x', ...flag, '--keep-old-files', '--no-same-owner', '--no-same-permissions', '-C', into, '-f', readable.path], { label: 'tar -x' }).catch((error: unknown) => {
        throw new PipelineError('FILES_RESTORE_FAILED', `${artifact.name} could not be unpacked into ${into}: ${(error as Error).message}`, {
          hint: 'Files that already exist are never overwritten: restore into an empty folder.',
          cause: error,
        });
      });
      const files = listed.stdout.split('\n').filter((l) => l && !l.endsWith('/'));
      log.info({ artifact: artifact.name, into, files: files.length }, `unpacked ${artifact.name} into ${into} (${files.length} files)`);
      return { artifact: artifact.name, into, files: files.slice(0, 100), mismatches: [], durationMs: Date.now() - started };
    });

    // `pipeline verify SET --restore-test`: unpack each archive into a throwaway folder through the
    // restore step above (as `restore --files-to` does), count what came out, and for the secrets
    // check the env file parses and holds the keys a restored database needs.
    // During a run that verify tap checks nothing (it drills stored sets only): say so on every
    // stream, so an encryptor's filter can be spliced into it (see the `verifyStream` hook).
    hooks.verifyStream.tapPromise('files', async (request) => request.claim());
    hooks.verify.tapPromise('files', async (artifact, ctx) => {
      if (artifact.format !== 'tar' || !('request' in ctx) || !(ctx as RestoreContext).request.restoreTest) return;
      const started = Date.now();
      const into = await mkdtemp(join(ctx.tmpDir, 'files-drill-'));
      try {
        await ctx.restore(artifact, { directory: into, jobs: 1 });
        const found = await treeSize(into);
        let detail = `${found.files} file${found.files === 1 ? '' : 's'} (${found.bytes} bytes) unpacked`;
        if (artifact.kind === 'secrets') {
          const name = typeof artifact.meta.file === 'string' ? basename(artifact.meta.file) : '.env.production';
          const vars = parseEnvFile(await readFile(join(into, name), 'utf8'), name);
          const lacking = MASTODON_SECRETS.filter((k) => !vars.get(k)?.value);
          detail = `${name} unpacked and parsed${lacking.length ? `; it LACKS ${lacking.join(', ')}` : `, with ${MASTODON_SECRETS.join(', ')}`}`;
        }
        recordDrill(artifact, { part: artifact.kind === 'secrets' ? 'secrets' : 'media', bytes: artifact.bytes, durationMs: Date.now() - started, detail });
      } finally {
        await rm(into, { recursive: true, force: true });
      }
    });

    hooks.transform.tapPromise({ name: 'files', stage: 100 }, async (artifact) => {
      if (artifact.kind === 'secrets' && !artifact.encryption && !options.allowUnencrypted) {
        throw new PipelineError('FILES_UNENCRYPTED_SECRETS', `${artifact.name} holds the Mastodon secrets and no stage encrypted it`, {
          hint: 'Add an encryption stage (gpg, age) to the pipeline, or set allowUnencrypted: true if the destinations are yours alone.',
        });
      }
      return artifact;
    });
  },
});
