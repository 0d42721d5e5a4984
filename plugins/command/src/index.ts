/**
 * The `command` stage: runs a program (an argv array, never a shell string) and collects the files
 * it wrote as artifacts of the set. The `rake` stage is built on the same mechanism
 * (`tapCommandStage`).
 *
 * The program gets `BACKUP_OUTPUT_DIR` in its environment: the folder whose files matching
 * `outputs` become artifacts. By default it is a fresh private folder of this run; with
 * `outputDir` set it is that folder, and files older than the command's start are ignored (left
 * over from an earlier run). Collected files are moved into the set: streamed into it with mode
 * 0600 and sha256, then removed from the output folder.
 *
 * With `stdout`, the program's standard output is the artifact instead (no file is collected):
 * made in one pass by the core (`ctx.streamArtifact`: compressed, hashed and encrypted while the
 * program writes it, never staged in plain).
 */
import { createReadStream } from 'node:fs';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import { basename, join } from 'node:path';
import {
  COMPRESSION_EXTENSION,
  defaultCompressor,
  definePlugin,
  displayCommand,
  PipelineError,
  writeFileAtomic,
  z,
  type Artifact,
  type Compression,
  type ExecOptions,
  type PluginApi,
  type RunContext,
  type TapOnlyHooks,
} from '@backup-pipeline/core';
import { findOutputs } from './output-glob.js';

export { findOutputs, globToRegExp } from './output-glob.js';

export const OUTPUT_DIR_ENV = 'BACKUP_OUTPUT_DIR';

export interface CommandStageOptions {
  /** Program and arguments. */
  command: readonly string[];
  /** Working directory (already resolved). Default: the current one. */
  cwd?: string;
  /** Added to the inherited environment. */
  env?: Record<string, string>;
  /** Folder the outputs are read from (already resolved). Default: a fresh private folder. */
  outputDir?: string;
  /** Globs, relative to the output folder, of the files to collect. */
  outputs: readonly string[];
  /** Artifact kind (`command`, `rake`…). */
  kind: string;
  timeoutMinutes?: number;
  /** The program's stdout is the artifact (named `name`, plus the compression's extension). */
  stdout?: StdoutArtifact;
}

export type StdoutArtifact = z.output<typeof StdoutOption>;

/** `stdout`: the program writes its backup to standard output. */
export const StdoutOption = z
  .object({
    name: z.string().regex(/^(?!\.\.?$)[^/\0]+$/, 'a file name (no folder)').describe('The artifact\'s file name (e.g. `site-backup.tar`); the compression\'s extension is appended.'),
    compression: z.enum(['zstd', 'gzip', 'none']).default('zstd').describe('Compression applied on the stream (default zstd). `none` when the program compresses its own output.'),
  })
  .strict();

const SECRET_NAME = /PASS|SECRET|TOKEN|KEY|CREDENTIAL/i;

export function compressionOf(name: string): Compression {
  if (/\.(gz|tgz)$/i.test(name)) return 'gzip';
  if (/\.(zst|tzst)$/i.test(name)) return 'zstd';
  if (/\.lz4$/i.test(name)) return 'lz4';
  return 'none';
}

/** Runs the command and moves its outputs into `ctx.setDir`; adds and returns the artifacts. */
export async function runCommandStage(ctx: RunContext, options: CommandStageOptions, api: Pick<PluginApi, 'name' | 'log'>): Promise<Artifact[]> {
  const [file, ...args] = options.command;
  if (!file) throw new PipelineError('COMMAND_INVALID', 'command is empty', { hint: 'Give the program and its arguments as a list.' });
  const outputDir = options.outputDir ?? (await mkdtemp(join(ctx.tmpDir, `${api.name}-out-`)));
  const started = Date.now();
  api.log.info({ command: displayCommand(file, args, ctx.secrets), cwd: options.cwd }, `running ${displayCommand(file, args, ctx.secrets)}`);
  const run = {
    cwd: options.cwd,
    env: { ...options.env, [OUTPUT_DIR_ENV]: outputDir },
    timeoutMs: options.timeoutMinutes === undefined ? undefined : options.timeoutMinutes * 60_000,
  };
  if (options.stdout) return [await streamStdout(ctx, options, options.stdout, run)];
  const result = await ctx.exec(file, args, run);
  if (result.stdout.trim()) api.log.debug({ stdout: result.stdout.trimEnd().split('\n').slice(-20).join('\n') }, 'command output');

  const matched = await findOutputs(outputDir, options.outputs).catch((error: NodeJS.ErrnoException) => {
    if (error.code === 'ENOENT') return [];
    throw error;
  });
  const fresh: string[] = [];
  for (const rel of matched) {
    // 2 s of slack for file systems with coarse timestamps.
    if ((await stat(join(outputDir, rel))).mtimeMs < started - 2_000) api.log.warn({ file: rel }, `ignoring ${rel}: older than this run (left over from an earlier one)`);
    else fresh.push(rel);
  }
  if (fresh.length === 0) {
    throw new PipelineError('COMMAND_NO_OUTPUT', `${basename(file)} succeeded but wrote no file matching ${options.outputs.join(', ')} in ${outputDir}`, {
      hint: `Make the command write its backup into $${OUTPUT_DIR_ENV} (or the configured outputDir), or fix \`outputs\`.`,
      details: { outputDir, outputs: options.outputs, ignoredStale: matched.length },
    });
  }

  const artifacts: Artifact[] = [];
  for (const rel of fresh) {
    const from = join(outputDir, rel);
    const name = basename(rel);
    const path = join(ctx.setDir, name);
    const digest = await writeFileAtomic(path, createReadStream(from), {
      signal: ctx.signal,
      onBytes: (bytes) => ctx.progress({ task: 'collect', bytes, message: name }),
    });
    await rm(from, { force: true });
    const artifact: Artifact = {
      name,
      path,
      kind: options.kind,
      format: 'file',
      compression: compressionOf(name),
      bytes: digest.bytes,
      sha256: digest.sha256,
      meta: { command: displayCommand(file, args, ctx.secrets), output: rel },
    };
    ctx.addArtifact(artifact);
    artifacts.push(artifact);
    api.log.info({ artifact: name, bytes: digest.bytes }, `collected ${name} (${digest.bytes} bytes)`);
  }
  return artifacts;
}

/** The program's stdout as one artifact, made in one pass by the core. */
async function streamStdout(ctx: RunContext, options: CommandStageOptions, out: StdoutArtifact, run: ExecOptions): Promise<Artifact> {
  const [file, ...args] = options.command as [string, ...string[]];
  const program = defaultCompressor(out.compression);
  const name = out.name + COMPRESSION_EXTENSION[out.compression];
  const made = await ctx.streamArtifact({
    artifact: { name, kind: options.kind, format: 'file', compression: program ? out.compression : compressionOf(name), meta: { command: displayCommand(file, args, ctx.secrets), output: 'stdout' } },
    dir: ctx.setDir,
    start: (stdout) => ctx.exec(file, args, { ...run, stdout }),
    compressor: program,
    task: 'collect',
  });
  if (made.head.length === 0) {
    await rm(made.artifact.path, { force: true });
    throw new PipelineError('COMMAND_NO_OUTPUT', `${basename(file)} succeeded but wrote nothing on its standard output`, {
      hint: 'With `stdout` set the program must write its backup to standard output; an empty output is never a backup.',
    });
  }
  ctx.addArtifact(made.artifact);
  return made.artifact;
}

/** Taps preflight (cwd exists), plan (the command line) and produce (run and collect) for a command-like stage. */
export function tapCommandStage(hooks: TapOnlyHooks, options: CommandStageOptions, api: Pick<PluginApi, 'name' | 'log' | 'secrets'>): void {
  for (const [name, value] of Object.entries(options.env ?? {})) if (SECRET_NAME.test(name)) api.secrets.add(value);
  const [file = '', ...args] = options.command;

  hooks.preflight.tapPromise(api.name, async () => {
    for (const [what, dir] of [['cwd', options.cwd], ['outputDir', options.outputDir]] as const) {
      if (dir === undefined) continue;
      const s = await stat(dir).catch(() => undefined);
      if (!s?.isDirectory()) {
        throw new PipelineError('COMMAND_DIR_MISSING', `${what} ${dir} is not a folder`, { hint: `Create it or fix \`${what}\` in the ${api.name} stage.` });
      }
    }
  });

  hooks.plan.tapPromise(api.name, async (plan, ctx) => {
    const collect = options.stdout
      ? `stream its standard output into ${options.stdout.name}${COMPRESSION_EXTENSION[options.stdout.compression]} (one pass)`
      : `collect ${options.outputs.join(', ')} from ${options.outputDir ?? `$${OUTPUT_DIR_ENV}`}`;
    plan.add({
      description: `run in ${options.cwd ?? process.cwd()}, ${collect} as "${options.kind}" artifacts`,
      command: displayCommand(file, args, ctx.secrets),
    });
  });

  hooks.produce.tapPromise(api.name, async (ctx) => {
    await runCommandStage(ctx, options, api);
  });
}

export const CommandOptions = z
  .object({
    command: z.array(z.string().min(1)).min(1).describe('Program and its arguments, as a list (never a shell string): ["/usr/local/bin/my-backup", "--fast"].'),
    cwd: z.string().min(1).optional().describe('Working directory (relative to the config file; `~/` allowed). Default: the current directory.'),
    env: z.record(z.string(), z.string()).default({}).describe('Extra environment variables. Values of names containing PASS, SECRET, TOKEN, KEY or CREDENTIAL are masked in logs.'),
    outputDir: z
      .string()
      .min(1)
      .optional()
      .describe(`Folder the outputs are collected from (also passed as $${OUTPUT_DIR_ENV}). Default: a fresh private folder of the run.`),
    outputs: z.array(z.string().min(1)).min(1).default(['*']).describe('Globs (relative to the output folder; *, ?, **, {a,b}) of the files to collect.'),
    timeoutMinutes: z.number().positive().optional().describe('Stop the command after this many minutes.'),
    stdout: StdoutOption.optional().describe('The program writes its backup to standard output: that stream is the artifact, compressed, hashed and encrypted in one pass (`outputs` is then not collected).'),
  })
  .strict();

export default definePlugin({
  name: 'command',
  description: 'Runs a program (argv list) and collects the files it writes as artifacts.',
  options: CommandOptions,
  apply(hooks, options, api) {
    tapCommandStage(
      hooks,
      {
        command: options.command,
        cwd: options.cwd === undefined ? undefined : api.resolvePath(options.cwd),
        env: options.env,
        outputDir: options.outputDir === undefined ? undefined : api.resolvePath(options.outputDir),
        outputs: options.outputs,
        kind: 'command',
        timeoutMinutes: options.timeoutMinutes,
        stdout: options.stdout,
      },
      api,
    );
  },
});
