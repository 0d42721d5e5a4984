/**
 * The core and the CLI know plugins only through hooks and definePlugin's declarations: no source
 * file of theirs imports a plugin package, and ESLint fails when one is added.
 */
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { ESLint } from 'eslint';
import { describe, expect, it } from 'vitest';
import { ROOT } from './gen-docs.js';

async function sources(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const entry of await readdir(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory() && entry.name !== '__snapshots__') out.push(...(await sources(path)));
    else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.test.ts') && entry.name !== 'test-fixtures.ts') out.push(path);
  }
  return out;
}

describe('package boundaries', () => {
  it('no source file of the core or the CLI imports a plugin package', async () => {
    const offenders: string[] = [];
    for (const pkg of ['core', 'cli']) {
      for (const file of await sources(join(ROOT, 'packages', pkg, 'src'))) {
        const text = await readFile(file, 'utf8');
        if (/(?:from|import\()\s*['"]@backup-pipeline\/plugin-/.test(text)) offenders.push(file);
      }
    }
    expect(offenders).toEqual([]);
  });

  it('ESLint rejects a plugin import in the core or the CLI, and allows it in a plugin and in tests', async () => {
    const eslint = new ESLint({ cwd: ROOT });
    const code = "import { decrypt } from '@backup-pipeline/plugin-gpg';\nexport const d = decrypt;\n";
    const rules = async (filePath: string) => (await eslint.lintText(code, { filePath: join(ROOT, filePath) }))[0]!.messages.map((m) => m.ruleId);
    expect(await rules('packages/cli/src/commands/new-command.ts')).toContain('no-restricted-imports');
    expect(await rules('packages/core/src/new-module.ts')).toContain('no-restricted-imports');
    expect(await rules('plugins/verify/src/new-module.ts')).not.toContain('no-restricted-imports');
    expect(await rules('packages/cli/src/new.test.ts')).not.toContain('no-restricted-imports');
  });
});
