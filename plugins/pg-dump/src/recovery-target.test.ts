/** pg-dump's restore tap refuses what a logical dump cannot do: a recovery target, a data dir. */
import { describe, expect, it } from 'vitest';
import { createHooks, isPipelineError, tapOnlyHooks, type Artifact, type PluginApi, type RestoreTarget, type RunContext } from '@backup-pipeline/core';
import plugin from './index.js';

const artifact: Artifact = { name: 'mastodon_production.dump', path: '/nonexistent/mastodon_production.dump', kind: 'database', format: 'pg-custom', compression: 'none', bytes: 1, sha256: '0'.repeat(64), meta: {} };

async function refusal(target: RestoreTarget): Promise<unknown> {
  const hooks = createHooks();
  plugin.apply!(tapOnlyHooks(hooks, 'pg-dump'), plugin.options!.parse({}) as never, {} as PluginApi);
  // The tap must refuse before it looks at the file or the context.
  return hooks.restore.get('pg-custom')!.promise(artifact, target, {} as RunContext).then(() => undefined, (error: unknown) => error);
}

describe('pg-dump restore tap and physical targets', () => {
  it.each([
    ['a point in time', { recoveryTarget: { time: '2026-12-01 14:03:00+00' }, database: 'x', jobs: 1 }, /cannot be recovered to a point in time/],
    ['a WAL position', { recoveryTarget: { lsn: '0/3000060' }, dataDir: '/tmp/x', jobs: 1 }, /cannot be recovered to a point in time/],
    ['a data dir', { dataDir: '/tmp/x', jobs: 1 }, /cannot be restored into a data dir/],
  ])('refuses %s with RESTORE_TARGET_REFUSED, naming the dump logical', async (_what, target, message) => {
    const error = await refusal(target as RestoreTarget);
    expect(isPipelineError(error) && error.code).toBe('RESTORE_TARGET_REFUSED');
    expect((error as Error).message).toMatch(message);
    expect((error as Error).message).toContain('is a logical dump (pg-custom)');
  });
});
