import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { isPipelineError, PipelineError } from './errors.js';
import { listSets } from './sets.js';
import { LocalFolderDestination } from './local-folder.js';
import { definePlugin, type Plugin } from './plugin.js';
import { Runner } from './runner.js';
import { failingDestinationPlugin, producerPlugin, silentLogger, tempDir, testConfig } from './test-fixtures.js';

/** Polls `condition` every 20 ms until it returns a truthy value (fails after 30 s). */
async function waitFor<T>(what: string, condition: () => Promise<T | undefined | false> | T | undefined | false): Promise<T> {
  const until = Date.now() + 30_000;
  for (;;) {
    const value = await condition();
    if (value) return value;
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The pid of a live child of `parent` whose argv is exactly `argv`, if any. */
async function childOf(parent: number, argv: string[]): Promise<number | undefined> {
  for (const name of await readdir('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const stat = await readFile(`/proc/${name}/stat`, 'utf8').catch(() => '');
    const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
    if (ppid !== parent) continue;
    const cmdline = await readFile(`/proc/${name}/cmdline`, 'utf8').catch(() => '');
    if (cmdline === argv.join('\0') + '\0') return Number(name);
  }
  return undefined;
}

async function alive(pid: number): Promise<boolean> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8').catch(() => '');
  return status !== '' && !/^State:\s+Z/m.test(status);
}

/** Records every lifecycle moment it sees. */
function recorder(events: string[], failAt?: string): Plugin {
  return definePlugin({
    name: 'recorder',
    description: 'records hook calls',
    apply(hooks) {
      const note = (name: string) => {
        events.push(name);
        if (name === failAt) throw new Error(`boom in ${name}`);
      };
      hooks.started.tapPromise('x', async () => note('started'));
      hooks.connect.tapPromise('x', async () => note('connect'));
      hooks.preflight.tapPromise('x', async () => note('preflight'));
      hooks.verify.tapPromise('x', async (a) => note(`verify:${a.name}`));
      hooks.transform.tapPromise('x', async (a) => (note(`transform:${a.name}`), a));
      hooks.shipped.tapPromise('x', async (r) => note(`shipped:${r.destination}`));
      hooks.retain.tapPromise('x', async () => note('retain'));
      hooks.succeeded.tapPromise('x', async () => note('succeeded'));
      hooks.failed.tapPromise('x', async (e) => note(`failed:${e.code}:${e.plugin}:${e.hook}`));
    },
  }) as Plugin;
}

describe('runner lifecycle', () => {
  it('runs the hooks in lifecycle order and writes a valid manifest last, then ships', async () => {
    const events: string[] = [];
    const dest = await tempDir();
    const config = await testConfig({ stages: [{ plugin: producerPlugin }, { plugin: recorder(events) }], destinations: { offsite: dest } });
    const result = await new Runner(config, await silentLogger()).run('nightly');
    expect(events).toEqual(['started', 'connect', 'preflight', 'verify:data.txt', 'transform:data.txt', 'shipped:offsite', 'retain', 'succeeded']);
    expect(result.summary.ok).toBe(true);
    const sets = await listSets(new LocalFolderDestination(dest));
    expect(sets).toHaveLength(1);
    expect(sets[0]!.complete).toBe(true);
    expect(sets[0]!.manifest!.artifacts[0]).toMatchObject({ name: 'data.txt', bytes: 12 });
    const work = await listSets(new LocalFolderDestination(config.workDir));
    expect(work.map((s) => s.complete)).toEqual([true]);
    const manifestStat = await stat(join(config.workDir, result.summary.setId, 'manifest.json'));
    expect(manifestStat.mode & 0o777).toBe(0o600);
    expect(result.manifest!.stages.map((s) => `${s.plugin}:${s.hook}`)).toContain('test-producer:produce');
  });

  it('stops at the first failing stage, tags the error, fires failed, ships and prunes nothing', async () => {
    const events: string[] = [];
    const dest = await tempDir();
    const config = await testConfig({ stages: [{ plugin: producerPlugin }, { plugin: recorder(events, 'verify:data.txt') }], destinations: { offsite: dest } });
    const error = await new Runner(config, await silentLogger()).run('nightly').catch((e: unknown) => e);
    expect(isPipelineError(error)).toBe(true);
    expect(error).toMatchObject({ code: 'PLUGIN_FAILED', plugin: 'recorder', hook: 'verify', message: 'boom in verify:data.txt' });
    expect(events).toEqual(['started', 'connect', 'preflight', 'verify:data.txt', 'failed:PLUGIN_FAILED:recorder:verify']);
    expect(await readdir(dest)).toEqual([]);
    // Nothing that looks like a set is left in the work dir.
    expect((await readdir(config.workDir)).filter((n) => !n.startsWith('.'))).toEqual([]);
  });

  it('keeps a PipelineError code and hint thrown by a plugin', async () => {
    const thrower = definePlugin({
      name: 'thrower',
      description: 't',
      apply(hooks) {
        hooks.preflight.tapPromise('ignored-name', async () => {
          throw new PipelineError('THING_MISSING', 'the thing is missing', { hint: 'add the thing' });
        });
      },
    }) as Plugin;
    const config = await testConfig({ stages: [{ plugin: producerPlugin }, { plugin: thrower }] });
    await expect(new Runner(config, await silentLogger()).run('nightly')).rejects.toMatchObject({
      code: 'THING_MISSING',
      hint: 'add the thing',
      plugin: 'thrower',
      hook: 'preflight',
    });
  });

  it('fails with NO_ARTIFACTS when nothing was produced', async () => {
    const config = await testConfig({ stages: [{ plugin: recorder([]) }] });
    await expect(new Runner(config, await silentLogger()).run('nightly')).rejects.toMatchObject({ code: 'NO_ARTIFACTS' });
  });

  it.each(['succeeded', 'shipped:offsite'])('treats an error in a %s tap as a warning only: the run still succeeds and ships', async (failAt) => {
    const events: string[] = [];
    const dest = await tempDir();
    const config = await testConfig({ stages: [{ plugin: producerPlugin }, { plugin: recorder(events, failAt) }], destinations: { offsite: dest } });
    const result = await new Runner(config, await silentLogger()).run('nightly');
    expect(result.summary.ok).toBe(true);
    expect(events).toContain(failAt);
    expect(events.at(-1)).toBe('succeeded');
    expect((await listSets(new LocalFolderDestination(dest))).map((s) => s.complete)).toEqual([true]);
  });

  it('treats an error in a failed tap as a warning only: the run fails with the original error', async () => {
    const events: string[] = [];
    const thrower = definePlugin({
      name: 'thrower',
      description: 't',
      apply(hooks) {
        hooks.preflight.tapPromise('thrower', async () => {
          throw new PipelineError('THING_MISSING', 'the thing is missing');
        });
        hooks.failed.tapPromise('thrower', async () => {
          events.push('failed tap threw');
          throw new Error('boom in failed');
        });
      },
    }) as Plugin;
    const config = await testConfig({ stages: [{ plugin: producerPlugin }, { plugin: thrower }] });
    await expect(new Runner(config, await silentLogger()).run('nightly')).rejects.toMatchObject({ code: 'THING_MISSING', message: 'the thing is missing', plugin: 'thrower' });
    expect(events).toEqual(['failed tap threw']);
  });

  it('times out a stage whose promise never settles', async () => {
    const hang = definePlugin({
      name: 'hang',
      description: 'never settles',
      apply(hooks) {
        hooks.produce.tapPromise('hang', () => new Promise(() => {}));
      },
    }) as Plugin;
    const config = await testConfig({ stages: [{ plugin: hang }], stageTimeoutMinutes: 0.002 });
    await expect(new Runner(config, await silentLogger()).run('nightly')).rejects.toMatchObject({ code: 'STAGE_TIMEOUT', plugin: 'hang', hook: 'produce' });
  });

  it('fails before any data moves when a destination is not usable', async () => {
    const bad = join(await tempDir(), 'file-not-dir');
    await writeFile(bad, 'x');
    const events: string[] = [];
    const config = await testConfig({ stages: [{ plugin: producerPlugin }, { plugin: recorder(events) }], destinations: { bad } });
    const error = await new Runner(config, await silentLogger()).run('nightly').catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'DESTINATION_FAILED', hook: 'preflight' });
    expect((error as Error).message).toContain('destination "bad"');
    expect(events).not.toContain('verify:data.txt');
  });

  it('fails the run naming the destination when an upload fails, keeping the others complete, without retention', async () => {
    const failing = failingDestinationPlugin('connection reset');
    const good = await tempDir();
    const events: string[] = [];
    const config = await testConfig({ stages: [{ plugin: producerPlugin }, { plugin: recorder(events) }], destinations: { good } });
    config.destinations.bad = { name: 'bad', plugin: failing, options: {} };
    config.pipelines.nightly!.destinations.push('bad');
    const error = await new Runner(config, await silentLogger()).run('nightly').catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'DESTINATION_FAILED' });
    expect((error as Error).message).toContain('"bad" (connection reset)');
    expect(events).not.toContain('retain');
    const sets = await listSets(new LocalFolderDestination(good));
    expect(sets.map((s) => s.complete)).toEqual([true]);
  });

  it('aborts on signal: children killed, set removed, lock released', async () => {
    // A marker argument tells this test's sleep apart from any other process on the machine.
    const marker = `${30 + (process.pid % 1000) / 1000}`;
    const sleeper = definePlugin({
      name: 'sleeper',
      description: 'runs sleep',
      apply(hooks) {
        hooks.produce.tapPromise('sleeper', async (ctx) => {
          await ctx.exec('sleep', [marker]);
        });
      },
    }) as Plugin;
    const config = await testConfig({ stages: [{ plugin: sleeper }] });
    const controller = new AbortController();
    const run = new Runner(config, await silentLogger()).run('nightly', { signal: controller.signal });
    const outcome = run.catch((e: unknown) => e);
    // Abort once the child really runs (not after a guessed delay).
    const child = await waitFor('the sleep child', () => childOf(process.pid, ['sleep', marker]));
    controller.abort();
    expect(await outcome).toMatchObject({ code: 'ABORTED' });
    await waitFor('the sleep child to end', async () => !(await alive(child)));
    expect((await readdir(config.workDir)).filter((n) => !n.startsWith('.'))).toEqual([]);
    expect(await readdir(join(config.workDir, '.locks'))).toEqual([]);
  });

  it('refuses a second concurrent run of the same pipeline with LOCKED naming the holder', async () => {
    // The first run is held inside produce (so it holds the lock) until the second has answered.
    let entered!: () => void;
    const inProduce = new Promise<void>((r) => (entered = r));
    let release!: () => void;
    const released = new Promise<void>((r) => (release = r));
    const held = definePlugin({
      name: 'held',
      description: 'waits in produce until released',
      apply(hooks) {
        hooks.produce.tapPromise('held', async () => {
          entered();
          await released;
        });
      },
    }) as Plugin;
    const config = await testConfig({ stages: [{ plugin: held }, { plugin: producerPlugin }] });
    const runner = new Runner(config, await silentLogger());
    const first = runner.run('nightly');
    await inProduce;
    const second = await runner.run('nightly').catch((e: unknown) => e);
    release();
    expect(second).toMatchObject({ code: 'LOCKED', exitCode: 75 });
    expect((second as Error).message).toContain(`pid ${process.pid}`);
    await expect(first).resolves.toMatchObject({ summary: { ok: true } });
  });

  it('gives two runs within one second ids that still sort in time order', async () => {
    const config = await testConfig({ stages: [{ plugin: producerPlugin }] });
    const runner = new Runner(config, await silentLogger());
    const at = new Date('2030-01-01T00:00:00.200Z');
    const first = await runner.run('nightly', { now: () => at });
    const second = await runner.run('nightly', { now: () => at });
    expect(first.summary.setId).toBe('20300101T000000Z-test');
    expect(second.summary.setId).toBe('20300101T000001Z-test');
  });

  it('gives plugins a tap-only view of the hooks, with taps named after the plugin', async () => {
    let seen: Record<string, unknown> = {};
    const spy = definePlugin({
      name: 'spy',
      description: 'looks at the hooks it gets',
      apply(hooks) {
        seen = { ...hooks.produce } as Record<string, unknown>;
        expect(() => (hooks.produce as unknown as { promise: () => void }).promise()).toThrow();
      },
    }) as Plugin;
    const config = await testConfig({ stages: [{ plugin: spy }, { plugin: producerPlugin }] });
    await new Runner(config, await silentLogger()).run('nightly');
    expect(Object.keys(seen).sort()).toEqual(['tap', 'tapAsync', 'tapPromise']);
  });

  it('dry-run runs connect, preflight and plan only and touches nothing', async () => {
    const events: string[] = [];
    const planner = definePlugin({
      name: 'planner',
      description: 'plans',
      options: z.object({}).strict(),
      apply(hooks) {
        hooks.plan.tapPromise('planner', async (plan) => plan.add({ plugin: 'planner', hook: 'produce', description: 'would dump', command: 'pg_dump -Fc' }));
      },
    }) as Plugin;
    const dest = await tempDir();
    const config = await testConfig({ stages: [{ plugin: recorder(events) }, { plugin: producerPlugin }, { plugin: planner }], destinations: { offsite: dest } });
    const result = await new Runner(config, await silentLogger()).run('nightly', { dryRun: true });
    expect(events).toEqual(['connect', 'preflight']);
    expect(result.plan!.steps.map((s) => s.description)).toEqual([`ship to "offsite": local folder ${dest}`, `keep the set in the work dir ${config.workDir}`, 'would dump']);
    expect(await readdir(dest)).toEqual([]);
    expect(await readdir(config.workDir).catch(() => [])).toEqual([]);
  });

  it('masks registered secrets in the error a stage throws, raw, JSON-escaped and URL-encoded', async () => {
    const secret = 'hunter2:\\se"cret word';
    const leaky = definePlugin({
      name: 'leaky',
      description: 'leaks into its error',
      apply(hooks) {
        hooks.connect.tapPromise('leaky', async (ctx) => {
          ctx.secrets.add(secret);
        });
        hooks.produce.tapPromise('leaky', async () => {
          throw new Error(`login failed: ${secret} / ${JSON.stringify(secret)} / postgres://u:${encodeURIComponent(secret)}@h/db`);
        });
      },
    }) as Plugin;
    const config = await testConfig({ stages: [{ plugin: leaky }] });
    const error = await new Runner(config, await silentLogger()).run('nightly').catch((e: unknown) => e);
    expect(error).toMatchObject({ code: 'PLUGIN_FAILED', plugin: 'leaky', hook: 'produce' });
    expect((error as Error).message).toBe('login failed: *** / "***" / postgres://u:***@h/db');
  });

  it('refuses a manifest with a secret in a free-form field (MANIFEST_INVALID naming it), and ships nothing', async () => {
    const leaky = definePlugin({
      name: 'leaky',
      description: 'leaks',
      apply(hooks) {
        hooks.connect.tapPromise('leaky', async (ctx) => {
          ctx.secrets.add('hunter2:\\secret');
          ctx.facts.password = 'hunter2:\\secret';
        });
      },
    }) as Plugin;
    const config = await testConfig({ stages: [{ plugin: leaky }, { plugin: producerPlugin }] });
    const error = await new Runner(config, await silentLogger()).run('nightly').catch((e: unknown) => e);
    expect(isPipelineError(error) && `${error.code}: ${error.message}`).toMatch(/^MANIFEST_INVALID: .*facts\.password holds a registered secret/);
    expect((await new LocalFolderDestination(config.workDir).list()).filter((s) => s.hasManifest)).toEqual([]);
  });

  it('never masks a manifest: a weak password that equals the source name leaves the set id and names intact', async () => {
    const weak = definePlugin({
      name: 'weak',
      description: 'registers a weak password',
      apply(hooks) {
        hooks.connect.tapPromise('weak', async (ctx) => ctx.secrets.add(ctx.source));
      },
    }) as Plugin;
    const config = await testConfig({ stages: [{ plugin: weak }, { plugin: producerPlugin }] });
    const result = await new Runner(config, await silentLogger()).run('nightly');
    const sets = await listSets(new LocalFolderDestination(config.workDir));
    expect(sets.map((s) => [s.id, s.state])).toEqual([[result.summary.setId, 'complete']]);
    expect(sets[0]!.manifest!.id).toBe(result.summary.setId);
  });
});
