import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SecretRegistry, createLogger } from '@backup-pipeline/core';
import { describeDestinationConformance } from '@backup-pipeline/testing/conformance';
import { describe, expect, it } from 'vitest';
import plugin from './index.js';

async function make(path: string, configDir: string) {
  const secrets = new SecretRegistry();
  const log = await createLogger({ secrets, level: 'silent' });
  const options = plugin.destination!.options.parse({ path });
  return plugin.destination!.create(options, { name: 'local', log, secrets, configDir, resolvePath: (p) => (p.startsWith('/') ? p : join(configDir, p)) });
}

describeDestinationConformance('local plugin', async () => {
  const root = await mkdtemp(join(tmpdir(), 'plugin-local-'));
  return { destination: await make('sets', root), teardown: () => rm(root, { recursive: true, force: true }) };
});

describe('local options', () => {
  it('rejects unknown options and a missing path', () => {
    expect(plugin.destination!.options.safeParse({ path: '/x', extra: 1 }).success).toBe(false);
    expect(plugin.destination!.options.safeParse({}).success).toBe(false);
  });
  it('resolves a relative path from the config folder', async () => {
    const d = await make('backups', '/srv/conf');
    expect(d.describe()).toBe('local folder /srv/conf/backups');
  });
});
