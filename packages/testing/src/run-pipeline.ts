/**
 * Runs a one-pipeline config through the real core (resolveConfig + Runner), the way the CLI
 * does, capturing every log line: plugin tests use it to prove behaviour through the public surface.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger, isPipelineError, resolveConfig, Runner, type PipelineError, type RunOptions, type RunResult } from '@backup-pipeline/core';

export interface RunStagesOptions {
  stages: Array<Record<string, unknown> & { use: string }>;
  /** Folder of the (virtual) config file; default: a new temp folder, removed by `cleanup()`. */
  dir?: string;
  dryRun?: boolean;
  env?: NodeJS.ProcessEnv;
  /** Where plugins are resolved from besides the config folder (default: the working directory). */
  pluginSearchDirs?: string[];
  pipeline?: string;
  /** Taps the run's hooks from outside (progress events…). */
  observe?: RunOptions['observe'];
}

export interface RunStagesOutcome {
  result?: RunResult;
  error?: PipelineError;
  /** Every log line, as written (masked). */
  logs: string[];
  dir: string;
  workDir: string;
  cleanup(): Promise<void>;
}

/** Resolves the config (throws CONFIG_INVALID like the CLI) and runs it; a failed run is returned as `error`. */
export async function runStages(options: RunStagesOptions): Promise<RunStagesOutcome> {
  const dir = options.dir ?? (await mkdtemp(join(tmpdir(), 'bp-run-')));
  const name = options.pipeline ?? 'test';
  const workDir = join(dir, 'backups');
  const content = { workDir, pipelines: { [name]: { source: 'test', stages: options.stages } } };
  const config = await resolveConfig(join(dir, 'pipeline.config.json'), content, {
    env: options.env ?? process.env,
    cwd: dir,
    pluginSearchDirs: options.pluginSearchDirs ?? [process.cwd()],
  });
  const logs: string[] = [];
  const logger = await createLogger({ secrets: config.secrets, format: 'json', level: 'debug', write: (l) => void logs.push(l) });
  const outcome: RunStagesOutcome = {
    logs,
    dir,
    workDir,
    cleanup: async () => {
      if (!options.dir) await rm(dir, { recursive: true, force: true });
    },
  };
  try {
    outcome.result = await new Runner(config, logger).run(name, { dryRun: options.dryRun, observe: options.observe });
  } catch (error) {
    if (!isPipelineError(error)) throw error;
    outcome.error = error;
  }
  return outcome;
}
