/**
 * The manifest is written last: a recording destination sees, for each destination, every artifact
 * put resolve before the manifest put starts, and the manifest put is the last put of the set. A
 * destination whose artifact put fails never receives a manifest.
 */
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { writeFileAtomic } from './atomic-file.js';
import { MANIFEST_NAME, type Destination } from './destination.js';
import { definePlugin, type Plugin } from './plugin.js';
import { Runner } from './runner.js';
import { silentLogger, testConfig } from './test-fixtures.js';

type Event = { destination: string; what: 'start' | 'end' | 'fail'; name: string };

/** A destination that records when each put starts and resolves; artifact puts take a few event-loop turns. */
function recordingDestination(events: Event[], failOn?: string): Plugin {
  return definePlugin({
    name: 'recording',
    description: 'records puts',
    destination: {
      options: z.object({ label: z.string() }).strict(),
      create: (o: { label: string }): Destination => ({
        describe: () => `recording ${o.label}`,
        put: async (_setId, name) => {
          events.push({ destination: o.label, what: 'start', name });
          // Several turns of the event loop, so an unawaited put would resolve after a later start.
          for (let i = 0; i < 5; i++) await new Promise((r) => setImmediate(r));
          if (name === failOn) {
            events.push({ destination: o.label, what: 'fail', name });
            throw new Error(`refused ${name}`);
          }
          events.push({ destination: o.label, what: 'end', name });
        },
        list: async () => [],
        get: async () => {},
        delete: async () => {},
      }),
    },
  }) as Plugin;
}

const threeArtifacts = definePlugin({
  name: 'three',
  description: 'writes three artifacts',
  apply(hooks) {
    hooks.produce.tapPromise('three', async (ctx) => {
      for (const name of ['a.dump', 'b.tar', 'c.txt']) {
        const path = join(ctx.setDir, name);
        const digest = await writeFileAtomic(path, `content of ${name}`);
        ctx.addArtifact({ name, path, kind: 'test', format: 'file', compression: 'none', meta: {}, ...digest });
      }
    });
  },
}) as Plugin;

async function runWith(events: Event[], labels: string[], failOn?: { label: string; name: string }) {
  const config = await testConfig({ stages: [{ plugin: threeArtifacts }] });
  for (const label of labels) {
    config.destinations[label] = { name: label, plugin: recordingDestination(events, failOn?.label === label ? failOn.name : undefined), options: { label } };
    config.pipelines.nightly!.destinations.push(label);
  }
  return new Runner(config, await silentLogger()).run('nightly').catch((e: unknown) => e);
}

describe('shipping order', () => {
  it.each([[['one']], [['one', 'two', 'three']]])('puts the manifest last, after every artifact put resolved (destinations %j)', async (labels) => {
    const events: Event[] = [];
    const result = await runWith(events, labels);
    expect(result).toMatchObject({ summary: { ok: true } });
    for (const label of labels) {
      const mine = events.filter((e) => e.destination === label);
      const starts = mine.filter((e) => e.what === 'start').map((e) => e.name);
      expect(starts.slice().sort()).toEqual(['a.dump', 'b.tar', 'c.txt', MANIFEST_NAME].sort());
      expect(starts.at(-1), `the last put to ${label}`).toBe(MANIFEST_NAME);
      const manifestStart = mine.findIndex((e) => e.what === 'start' && e.name === MANIFEST_NAME);
      for (const name of ['a.dump', 'b.tar', 'c.txt']) {
        const end = mine.findIndex((e) => e.what === 'end' && e.name === name);
        expect(end, `${name} put to ${label} resolved`).toBeGreaterThanOrEqual(0);
        expect(end, `${name} resolved before the manifest put to ${label} started`).toBeLessThan(manifestStart);
      }
      expect(mine.filter((e) => e.name === MANIFEST_NAME && e.what === 'end')).toHaveLength(1);
    }
  });

  it('never puts the manifest to a destination whose artifact put failed; the others get theirs last', async () => {
    const events: Event[] = [];
    const error = await runWith(events, ['good', 'bad'], { label: 'bad', name: 'b.tar' });
    expect(error).toMatchObject({ code: 'DESTINATION_FAILED' });
    expect(events.filter((e) => e.destination === 'bad' && e.name === MANIFEST_NAME)).toEqual([]);
    expect(events.filter((e) => e.destination === 'good' && e.what === 'start').at(-1)?.name).toBe(MANIFEST_NAME);
  });
});
