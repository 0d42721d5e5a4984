/**
 * Type tests for the plugin API. `tsc -b` compiles this file, so every `@ts-expect-error` below
 * is enforced by the build: if the API starts accepting one of these mistakes, the build fails.
 * (`expectTypeOf` assertions are checked by the same compilation; at run time they are no-ops.)
 */
import { describe, expectTypeOf, it } from 'vitest';
import { z } from 'zod';
import type { Destination, PutSource } from './destination.js';
import type { Artifact, Plan, ProgressEvent, RunContext, RunSummary, ShipReport, StageEvent } from './context.js';
import type { PipelineError } from './errors.js';
import type { ExecProcess } from './exec.js';
import { LocalFolderDestination } from './local-folder.js';
import { definePlugin, isPlugin, type PluginApi, type PluginDefinition } from './plugin.js';

describe('definePlugin types', () => {
  it('infers the options of apply from the zod schema (output type, defaults applied)', () => {
    const plugin = definePlugin({
      name: 'typed',
      description: 'typed options',
      options: z
        .object({
          recipients: z.array(z.string().min(1)).min(1),
          keepPlaintext: z.boolean().default(false),
          level: z.number().int().optional(),
          mode: z.enum(['fast', 'safe']).default('safe'),
          timeout: z.string().transform((s) => Number.parseInt(s, 10)),
        })
        .strict(),
      apply(_hooks, options, api) {
        expectTypeOf(options).toEqualTypeOf<{
          recipients: string[];
          keepPlaintext: boolean;
          level?: number | undefined;
          mode: 'fast' | 'safe';
          timeout: number;
        }>();
        // A default makes the option required in what the plugin sees.
        expectTypeOf(options.keepPlaintext).toEqualTypeOf<boolean>();
        expectTypeOf(options.timeout).toEqualTypeOf<number>();
        // @ts-expect-error an option the schema does not declare
        void options.recipient;
        expectTypeOf(api).toEqualTypeOf<PluginApi>();
        expectTypeOf(api.resolvePath).toEqualTypeOf<(path: string) => string>();
      },
    });
    expectTypeOf(plugin.options!).toHaveProperty('parse');
    // The input type keeps defaults optional: that is what a config file may leave out.
    type Input = z.input<NonNullable<typeof plugin.options>>;
    expectTypeOf<Input['keepPlaintext']>().toEqualTypeOf<boolean | undefined>();
  });

  it('gives a plugin without options `unknown` options', () => {
    definePlugin({
      name: 'no-options',
      description: 'takes nothing',
      apply(_hooks, options) {
        expectTypeOf(options).toBeUnknown();
      },
    });
  });

  it('requires a name and a description', () => {
    // @ts-expect-error description is missing
    definePlugin({ name: 'x', apply() {} });
    // @ts-expect-error name is missing
    definePlugin({ description: 'x', apply() {} });
    // @ts-expect-error options must be a zod schema
    definePlugin({ name: 'x', description: 'x', options: { path: 'string' }, apply() {} });
  });

  it('returns something the runtime check accepts', () => {
    const plugin = definePlugin({ name: 'x', description: 'x', apply() {} });
    expectTypeOf(plugin).toExtend<PluginDefinition<z.ZodType, z.ZodType>>();
    expectTypeOf(isPlugin).guards.toHaveProperty('name');
  });
});

describe('hook tap types', () => {
  it('passes typed arguments to every tap', () => {
    definePlugin({
      name: 'taps',
      description: 'taps every hook',
      apply(hooks) {
        hooks.started.tapPromise('taps', async (ctx) => void expectTypeOf(ctx).toEqualTypeOf<RunContext>());
        hooks.connect.tapPromise('taps', async (ctx) => {
          expectTypeOf(ctx.exec).returns.toEqualTypeOf<ExecProcess>();
          expectTypeOf(ctx.signal).toEqualTypeOf<AbortSignal>();
          // @ts-expect-error the context is read-only where the core owns it
          ctx.setId = 'x';
          ctx.pg = undefined; // …and writable where a plugin is meant to fill it in
        });
        hooks.preflight.tap('taps', (ctx) => void expectTypeOf(ctx).toEqualTypeOf<RunContext>());
        hooks.plan.tapPromise('taps', async (plan, ctx) => {
          expectTypeOf(plan).toEqualTypeOf<Plan>();
          expectTypeOf(ctx).toEqualTypeOf<RunContext>();
          plan.add({ description: 'would do something', command: 'tool --flag' });
        });
        hooks.produce.tapPromise('taps', async (ctx) => void expectTypeOf(ctx.addArtifact).parameter(0).toEqualTypeOf<Artifact>());
        hooks.verify.tapPromise('taps', async (artifact, ctx) => {
          expectTypeOf(artifact).toEqualTypeOf<Artifact>();
          expectTypeOf(ctx).toEqualTypeOf<RunContext>();
        });
        hooks.transform.tapPromise('taps', async (artifact, ctx) => {
          expectTypeOf(artifact).toEqualTypeOf<Artifact>();
          expectTypeOf(ctx).toEqualTypeOf<RunContext>();
          return { ...artifact, name: `${artifact.name}.gpg` };
        });
        hooks.shipped.tapPromise('taps', async (report) => void expectTypeOf(report).toEqualTypeOf<ShipReport>());
        hooks.retain.tapPromise('taps', async (ctx) => void expectTypeOf(ctx.destinations[0]!.destination).toEqualTypeOf<Destination>());
        hooks.succeeded.tapPromise('taps', async (summary, ctx) => {
          expectTypeOf(summary).toEqualTypeOf<RunSummary>();
          expectTypeOf(ctx).toEqualTypeOf<RunContext>();
        });
        hooks.failed.tapPromise('taps', async (error, summary, ctx) => {
          expectTypeOf(error).toEqualTypeOf<PipelineError>();
          expectTypeOf(summary).toEqualTypeOf<RunSummary>();
          expectTypeOf(ctx).toEqualTypeOf<RunContext>();
        });
        hooks.stageStart.tap('taps', (event) => void expectTypeOf(event).toEqualTypeOf<StageEvent>());
        hooks.progress.tap('taps', (event) => void expectTypeOf(event).toEqualTypeOf<ProgressEvent>());
        // Tap options (ordering) are accepted; the core names the tap after the plugin anyway.
        hooks.verify.tapPromise({ name: 'taps', stage: -10 }, async () => {});
        hooks.verify.tapAsync('taps', (_artifact, _ctx, callback) => callback());
      },
    });
  });

  it('requires transform taps to return the (new) artifact', () => {
    definePlugin({
      name: 'bad-transform',
      description: 'forgets to return the artifact',
      apply(hooks) {
        // @ts-expect-error a waterfall tap must resolve to an Artifact
        hooks.transform.tapPromise('bad-transform', async () => {});
        // @ts-expect-error …not to something else
        hooks.transform.tapPromise('bad-transform', async (artifact) => artifact.name);
        // @ts-expect-error a sync transform tap returns an Artifact too
        hooks.transform.tap('bad-transform', () => undefined);
        hooks.transform.tap('ok-transform', (artifact) => artifact);
      },
    });
  });

  it('rejects taps with the wrong argument types', () => {
    definePlugin({
      name: 'bad-taps',
      description: 'mistyped taps',
      apply(hooks) {
        // @ts-expect-error verify's first argument is an Artifact, not the context
        hooks.verify.tapPromise('bad-taps', async (ctx: RunContext) => void ctx);
        // @ts-expect-error produce takes only the context
        hooks.produce.tapPromise('bad-taps', async (_ctx: RunContext, artifact: Artifact) => void artifact);
        // @ts-expect-error a hook the lifecycle does not have
        void hooks.ship;
      },
    });
  });

  it('lets only the core call hooks: plugins get a tap-only view', () => {
    definePlugin({
      name: 'caller',
      description: 'tries to drive the lifecycle',
      apply(hooks) {
        // @ts-expect-error plugins cannot call hooks
        void hooks.produce.promise;
        // @ts-expect-error …nor call a sync hook
        hooks.progress.call({ plugin: 'caller', task: 'x' });
        // @ts-expect-error …nor intercept one
        void hooks.verify.intercept;
        // @ts-expect-error …nor replace a hook
        hooks.verify = hooks.transform;
      },
    });
  });
});

describe('destination types', () => {
  it('types the options of create from the destination schema', () => {
    const plugin = definePlugin({
      name: 'typed-destination',
      description: 'a destination',
      destination: {
        options: z.object({ path: z.string(), layout: z.enum(['flat', 'dated']).default('flat') }).strict(),
        create(options, api) {
          expectTypeOf(options).toEqualTypeOf<{ path: string; layout: 'flat' | 'dated' }>();
          expectTypeOf(api).toEqualTypeOf<PluginApi>();
          // @ts-expect-error not an option of this destination
          void options.bucket;
          return new LocalFolderDestination(api.resolvePath(options.path));
        },
      },
    });
    expectTypeOf(plugin.destination!.create).returns.toEqualTypeOf<Destination | Promise<Destination>>();
  });

  it('requires create to return a Destination', () => {
    definePlugin({
      name: 'bad-destination',
      description: 'returns the wrong thing',
      destination: {
        options: z.object({ path: z.string() }),
        // @ts-expect-error missing put, list, get and delete
        create: () => ({ describe: () => 'half a destination' }),
      },
    });
    expectTypeOf<Destination['put']>().parameter(2).toEqualTypeOf<PutSource>();
    // check is optional; put, list, get, delete and describe are not.
    expectTypeOf<Omit<Destination, 'check'>>().toExtend<Destination>();
    expectTypeOf<Omit<Destination, 'list'>>().not.toExtend<Destination>();
  });
});
