import { readFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import type { Command } from 'commander';
import { candidateNames, createHooks, KEYED_HOOKS, loadConfig, resolvePlugin, SecretRegistry, tapOnlyHooks, z, type Plugin, type HookName } from '@backup-pipeline/core';
import { BUILTIN_PLUGINS, CLI_DIR } from '../builtins.js';
import { dim, output } from '../output.js';
import { globalOptions, openLogger } from '../session.js';

/** The hooks a plugin taps, found by applying it to a fresh set of hooks that only records. */
export function tappedHooks(plugin: Plugin, options: unknown, log: import('@backup-pipeline/core').Logger): string[] {
  if (!plugin.apply) return [];
  const hooks = createHooks();
  // Keyed hooks: `restore[pg-custom]`, recorded as the plugin asks for each key.
  const keyed: Array<{ name: string; hook: { taps: unknown[] } }> = [];
  for (const name of KEYED_HOOKS) {
    (hooks[name] as unknown as { intercept(i: object): void }).intercept({ factory: (key: string, hook: { taps: unknown[] }) => (keyed.push({ name: `${name}[${key}]`, hook }), hook) });
  }
  try {
    plugin.apply(tapOnlyHooks(hooks, plugin.name), options as never, { name: plugin.name, log, secrets: new SecretRegistry(), configDir: process.cwd(), resolvePath: (p) => p });
  } catch {
    // Options may be required to apply; the list stays partial.
  }
  const plain = (Object.keys(hooks) as HookName[]).filter((h) => !(KEYED_HOOKS as readonly string[]).includes(h) && (hooks[h] as unknown as { taps: unknown[] }).taps.length > 0);
  return [...plain, ...keyed.filter((k) => k.hook.taps.length > 0).map((k) => k.name)];
}

interface OptionDoc {
  name: string;
  type: string;
  default?: unknown;
  required: boolean;
  description?: string;
}

export function describeOptions(schema: z.ZodType | undefined): OptionDoc[] {
  if (!schema) return [];
  const json = z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' }) as { properties?: Record<string, Record<string, unknown>>; required?: string[] };
  return Object.entries(json.properties ?? {}).map(([name, p]) => ({
    name,
    type: typeName(p),
    default: p.default,
    required: (json.required ?? []).includes(name) && p.default === undefined,
    description: p.description as string | undefined,
  }));
}

function typeName(p: Record<string, unknown>): string {
  if (Array.isArray(p.enum)) return p.enum.map((v) => JSON.stringify(v)).join(' | ');
  if (p.const !== undefined) return JSON.stringify(p.const);
  if (Array.isArray(p.anyOf)) return (p.anyOf as Array<Record<string, unknown>>).map(typeName).join(' | ');
  if (p.type === 'array') return `${typeName((p.items ?? {}) as Record<string, unknown>)}[]`;
  return typeof p.type === 'string' ? p.type : Array.isArray(p.type) ? p.type.join(' | ') : 'object';
}

/** The `name` of the package.json nearest above a module file (the plugin's real package name). */
async function packageNameOf(file: string): Promise<string | undefined> {
  for (let dir = dirname(file); ; dir = dirname(dir)) {
    const pkg = await readFile(join(dir, 'package.json'), 'utf8').then((t) => JSON.parse(t) as { name?: string }, () => undefined);
    if (pkg?.name) return pkg.name;
    if (dirname(dir) === dir) return undefined;
  }
}

export default async function plugins(command: Command): Promise<number> {
  const options = globalOptions(command);
  const log = await openLogger({ ...options, logLevel: 'silent' });
  const config = await loadConfig({ file: options.config, pluginSearchDirs: [CLI_DIR] }).catch(() => undefined);
  const configDir = config?.dir ?? process.cwd();
  // Every built-in, and every plugin the config uses — stages and destinations — by the `use:` that named it.
  const specs = new Map<string, { spec: string; options?: unknown }>();
  for (const spec of BUILTIN_PLUGINS) specs.set(spec, { spec });
  for (const [name, p] of Object.entries(config?.raw.pipelines ?? {})) {
    (p.stages as Array<{ use: string }>).forEach((entry, i) => {
      const stage = config!.pipelines[name]?.stages[i];
      if (stage) specs.set(stage.plugin.name, { spec: entry.use, options: specs.get(stage.plugin.name)?.options ?? stage.options });
    });
  }
  for (const [name, d] of Object.entries((config?.raw.destinations ?? {}) as Record<string, { use: string }>)) {
    const plugin = config!.destinations[name]?.plugin;
    if (plugin && !specs.has(plugin.name)) specs.set(plugin.name, { spec: d.use });
  }
  const loaded: Array<{ plugin: Plugin; file?: string; options?: unknown }> = [];
  for (const { spec, options: configured } of specs.values()) {
    const found = await resolvePlugin(spec, [configDir, process.cwd(), CLI_DIR], configDir).catch(() => undefined);
    if (found && !loaded.some((l) => l.plugin.name === found.plugin.name)) loaded.push({ plugin: found.plugin, file: found.file, options: configured });
  }
  const described = [];
  for (const { plugin, file, options: configured } of loaded) {
    described.push({
      name: plugin.name,
      package: (file && (await packageNameOf(file))) ?? candidateNames(plugin.name)[0],
      description: plugin.description,
      kind: [plugin.apply ? 'stage' : '', plugin.destination ? 'destination' : ''].filter(Boolean).join(' + '),
      // With the options the config gives it, when it has them: an apply that needs its options then shows its taps too.
      hooks: tappedHooks(plugin, configured ?? parseDefaults(plugin.options), log),
      options: describeOptions(plugin.options),
      destinationOptions: describeOptions(plugin.destination?.options),
    });
  }
  if (options.json) {
    output.json(described);
    return 0;
  }
  for (const p of described) {
    output.stdout(`${p.name} (${p.kind}) — ${p.description}\n`);
    output.stdout(`  ${dim('package:')} ${p.package}\n`);
    if (p.hooks.length) output.stdout(`  ${dim('taps:')} ${p.hooks.join(', ')}\n`);
    for (const [title, list] of [['options', p.options], ['destination options', p.destinationOptions]] as const) {
      if (list.length === 0) continue;
      output.stdout(`  ${dim(title + ':')}\n`);
      for (const o of list) {
        const def = o.default !== undefined ? ` = ${JSON.stringify(o.default)}` : o.required ? ' (required)' : '';
        output.stdout(`    ${o.name}: ${o.type}${def}${o.description ? `  — ${o.description}` : ''}\n`);
      }
    }
  }
  return 0;
}

function parseDefaults(schema: z.ZodType | undefined): unknown {
  const r = schema?.safeParse({});
  return r?.success ? r.data : {};
}
