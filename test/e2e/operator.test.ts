/** The README's first command and the shipped Mastodon config, through the real CLI. */
import { mkdtemp, readdir } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { pipeline, ROOT } from './support.js';

describe('operator experience', () => {
  it('`pipeline demo` backs up a throwaway Mastodon database end to end, restores it and finds it identical', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'bp-demo-'));
    const result = await pipeline(['demo', '--dir', join(dir, 'demo-backups'), '--scale', 'tiny'], dir);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(result.stdout).toMatch(/set \d{8}T\d{6}Z-mastodon, backed up in/);
    expect(result.stdout).toMatch(/public\.statuses\s+\d+\s+identical/);
    expect(result.stdout).toContain('the restored database is identical to the source');
    expect(result.stdout).not.toContain('DIFFERENT');
    const local = await readdir(join(dir, 'demo-backups', 'local'));
    expect(local).toHaveLength(1);
  });

  it('ships config/mastodon.yaml valid as written', async () => {
    const result = await pipeline(['validate', '--config', join(ROOT, 'config', 'mastodon.yaml')], ROOT);
    expect(result.exitCode, result.stderr).toBe(0);
    expect(result.stdout).toContain('pipeline nightly: credentials → pg-dump → verify → files → gpg → retention → notify → metrics ⇒ local, nas');
  });
});
