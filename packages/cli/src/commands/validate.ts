import type { Command } from 'commander';
import { loadConfig } from '@backup-pipeline/core';
import { CLI_DIR } from '../builtins.js';
import { green } from '../output.js';
import { globalOptions } from '../session.js';

export default async function validate(command: Command): Promise<number> {
  const options = globalOptions(command);
  const config = await loadConfig({ file: options.config, pluginSearchDirs: [CLI_DIR] });
  const pipelines = Object.values(config.pipelines);
  if (options.json) {
    process.stdout.write(JSON.stringify({ ok: true, file: config.file, pipelines: pipelines.map((p) => p.name), destinations: Object.keys(config.destinations) }, null, 2) + '\n');
    return 0;
  }
  process.stdout.write(`${green('ok')} ${config.file}\n`);
  for (const p of pipelines) {
    process.stdout.write(`  pipeline ${p.name}: ${p.stages.map((s) => s.plugin.name).join(' → ')}${p.destinations.length ? ` ⇒ ${p.destinations.join(', ')}` : ''}\n`);
  }
  return 0;
}
