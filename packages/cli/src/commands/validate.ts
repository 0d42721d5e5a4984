import type { Command } from 'commander';
import { loadConfig } from '@backup-pipeline/core';
import { CLI_DIR } from '../builtins.js';
import { green, output } from '../output.js';
import { globalOptions } from '../session.js';

export default async function validate(command: Command): Promise<number> {
  const options = globalOptions(command);
  const config = await loadConfig({ file: options.config, pluginSearchDirs: [CLI_DIR] });
  output.useSecrets(config.secrets);
  const pipelines = Object.values(config.pipelines);
  if (options.json) {
    output.json({ ok: true, file: config.file, found: config.found, pipelines: pipelines.map((p) => p.name), destinations: Object.keys(config.destinations) });
    return 0;
  }
  output.stdout(`${green('ok')} ${config.file}${config.found === 'option' ? '' : ` (found: ${config.found})`}\n`);
  for (const p of pipelines) {
    output.stdout(`  pipeline ${p.name}: ${p.stages.map((s) => s.plugin.name).join(' → ')}${p.destinations.length ? ` ⇒ ${p.destinations.join(', ')}` : ''}\n`);
  }
  return 0;
}
