/**
 * The `rake` stage: runs a rake task of the Mastodon app (`bundle exec rake <task>` in `~/live`)
 * and collects the files it writes as artifacts. Upstream Mastodon ships NO instance-backup rake
 * task: `mastodon:backup:create` (the default name) must be provided by the site or a fork.
 * Built on the `command` stage's mechanism.
 */
import { definePlugin, z } from '@backup-pipeline/core';
import { OUTPUT_DIR_ENV, StdoutOption, tapCommandStage } from '@backup-pipeline/plugin-command';

export const RakeOptions = z
  .object({
    command: z
      .array(z.string().min(1))
      .min(1)
      .default(['bundle', 'exec', 'rake'])
      .describe('How to run rake, as a list; the task is appended. Default: ["bundle", "exec", "rake"].'),
    task: z
      .string()
      .min(1)
      .default('mastodon:backup:create')
      .describe('The rake task (with arguments, e.g. "site:backup[full]"). Upstream Mastodon has no backup task: your site must provide it.'),
    appDir: z.string().min(1).default('~/live').describe('The Mastodon app folder the task runs in (relative to the config file; `~/` allowed).'),
    env: z
      .record(z.string(), z.string())
      .default({})
      .describe('Extra environment variables, merged over RAILS_ENV=production. Values of names containing PASS, SECRET, TOKEN, KEY or CREDENTIAL are masked.'),
    outputDir: z
      .string()
      .min(1)
      .optional()
      .describe(`Folder the task writes its files to (also passed as $${OUTPUT_DIR_ENV}). Default: a fresh private folder of the run.`),
    outputs: z.array(z.string().min(1)).min(1).default(['*']).describe('Globs (relative to the output folder; *, ?, **, {a,b}) of the files to collect.'),
    timeoutMinutes: z.number().positive().optional().describe('Stop the task after this many minutes.'),
    stdout: StdoutOption.optional().describe('The task writes its backup to standard output: that stream is the artifact, compressed, hashed and encrypted in one pass (`outputs` is then not collected).'),
  })
  .strict();

export default definePlugin({
  name: 'rake',
  description: 'Runs a site-provided rake task of the Mastodon app and collects the files it writes (upstream Mastodon has no backup task).',
  options: RakeOptions,
  apply(hooks, options, api) {
    tapCommandStage(
      hooks,
      {
        command: [...options.command, options.task],
        cwd: api.resolvePath(options.appDir),
        env: { RAILS_ENV: 'production', ...options.env },
        outputDir: options.outputDir === undefined ? undefined : api.resolvePath(options.outputDir),
        outputs: options.outputs,
        kind: 'rake',
        timeoutMinutes: options.timeoutMinutes,
        stdout: options.stdout,
      },
      api,
    );
  },
});
