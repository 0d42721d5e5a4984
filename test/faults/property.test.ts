/**
 * A property test of "nothing lost": 200 steps of runs, kills, full disks, damage, clock jumps and
 * retention, in a seeded random order. After every step:
 *
 * - every set listed complete, in every destination, still restores: each artifact is there with
 *   the manifest's size and sha256;
 * - the newest complete set each destination held before the step is still there, complete
 *   (or, when the step damaged it on purpose, damaged — never deleted);
 * - no damaged set was deleted;
 * - after every step that ran a process to its end, the lock is free (a kill leaves a stale one,
 *   which the next run takes over).
 *
 * Each run is a real child process (the core's Runner, with the run's clock passed in, so the clock
 * can jump), killed with SIGKILL at random moments; destination `small` is a 2 MiB tmpfs, so
 * uploads to it fail with ENOSPC as it fills. The sets are small (no database), so 200 steps fit
 * in CI; the database paths are covered by the other fault tests.
 */
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { execa } from 'execa';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LocalFolderDestination, listSets, type SetInfo } from '@backup-pipeline/core';

const STEPS = Number(process.env.BP_PROPERTY_STEPS ?? 200);
const SEED = Number(process.env.BP_PROPERTY_SEED ?? 20261201);
const DAY = 86_400_000;

/** mulberry32: a small seeded PRNG, so a failing sequence can be replayed with its seed. */
function prng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return { next, int: (lo: number, hi: number) => lo + Math.floor(next() * (hi - lo + 1)), pick: <T>(xs: readonly T[]) => xs[Math.floor(next() * xs.length)]! };
}

let root: string;
let small: string;
let mounted = false;
const REPO = join(import.meta.dirname, '..', '..');

beforeAll(async () => {
  root = await mkdtemp(join(tmpdir(), 'bp-property-'));
  small = join(root, 'small');
  await mkdir(small);
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=2m,mode=0700', 'tmpfs', small], { stdio: 'pipe' });
    mounted = true;
  } catch (error) {
    // Under CI the test runs as root and must exercise ENOSPC; elsewhere the folder is a plain one.
    if (process.env.CI) throw new Error(`cannot mount a tmpfs for the full-disk faults: ${(error as Error).message}`);
  }
  const core = import.meta.resolve('@backup-pipeline/core');
  await writeFile(
    join(root, 'producer.mjs'),
    `import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { definePlugin, writeFileAtomic, z } from ${JSON.stringify(core)};
export default definePlugin({
  name: 'random-producer',
  description: 'one or two artifacts of random bytes',
  options: z.object({}).strict(),
  apply(hooks) {
    hooks.produce.tapPromise('random-producer', async (ctx) => {
      const count = 1 + (randomBytes(1)[0] % 2);
      for (let i = 0; i < count; i++) {
        const name = 'part-' + i + '.bin';
        const path = join(ctx.setDir, name);
        const digest = await writeFileAtomic(path, randomBytes(1024 + (randomBytes(2).readUInt16BE(0) % 3) * 60_000));
        ctx.addArtifact({ name, path, kind: 'test', format: 'file', compression: 'none', meta: {}, ...digest });
      }
    });
  },
});
`,
  );
  await writeFile(
    join(root, 'child.mjs'),
    `import { readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { createLogger, resolveConfig, Runner } from ${JSON.stringify(core)};
const [file, nowIso] = process.argv.slice(2);
const config = await resolveConfig(file, JSON.parse(readFileSync(file, 'utf8')), { cwd: dirname(file), pluginSearchDirs: [${JSON.stringify(REPO)}] });
const log = await createLogger({ secrets: config.secrets, format: 'json', level: 'error', write: (l) => process.stderr.write(l) });
const base = Date.parse(nowIso);
const started = Date.now();
try {
  const result = await new Runner(config, log).run(undefined, { now: () => new Date(base + Date.now() - started) });
  process.stdout.write(JSON.stringify({ ok: true, setId: result.summary.setId }) + '\\n');
} catch (error) {
  process.stdout.write(JSON.stringify({ ok: false, code: error.code, message: error.message }) + '\\n');
  process.exitCode = 1;
}
`,
  );
  const config = (policy: Record<string, unknown>) => ({
    workDir: './work',
    destinations: { big: { use: 'local', path: './big' }, small: { use: 'local', path: small } },
    pipelines: {
      nightly: {
        source: 'prop',
        stages: [{ use: './producer.mjs' }, { use: 'retention', incompleteGraceHours: 0, ...policy }],
        destinations: ['big', 'small'],
      },
    },
  });
  await writeFile(join(root, 'pipeline.config.json'), JSON.stringify(config({ keepLast: 3 })));
  await writeFile(join(root, 'prune.config.json'), JSON.stringify(config({ keepLast: 2 })));
});

afterAll(async () => {
  if (mounted) execFileSync('umount', [small], { stdio: 'pipe' });
  await rm(root, { recursive: true, force: true });
});

const DESTINATIONS = ['big', 'small', 'work'] as const;
type Dest = (typeof DESTINATIONS)[number];
const folderOf = (d: Dest) => (d === 'small' ? small : join(root, d));

async function snapshot(): Promise<Record<Dest, SetInfo[]>> {
  const out = {} as Record<Dest, SetInfo[]>;
  for (const d of DESTINATIONS) out[d] = await listSets(new LocalFolderDestination(folderOf(d)), { scratchDir: root });
  return out;
}

async function sha256(path: string): Promise<string> {
  return createHash('sha256').update(await readFile(path)).digest('hex');
}

describe(`nothing lost: ${STEPS} random steps (seed ${SEED})`, () => {
  it('keeps every complete set restorable and the newest complete set of every destination, whatever happens', { timeout: 1_200_000 }, async () => {
    const rnd = prng(SEED);
    let clock = Date.parse('2026-01-01T03:00:00Z');
    const counts: Record<string, number> = {};
    const damagedOnPurpose = new Set<string>();

    const run = (configFile = 'pipeline.config.json') => execa(process.execPath, [join(root, 'child.mjs'), join(root, configFile), new Date(clock).toISOString()], { cwd: root, reject: false });

    let before = await snapshot();
    for (let step = 0; step < STEPS; step++) {
      const kind = rnd.pick(['run', 'run', 'run', 'kill', 'kill', 'damage', 'clock', 'prune', 'fill'] as const);
      counts[kind] = (counts[kind] ?? 0) + 1;
      const what = `step ${step} (${kind}, seed ${SEED})`;
      clock += rnd.int(1, 6) * 3_600_000;
      let damaged: { dest: Dest; id: string } | undefined;

      if (kind === 'run') {
        const out = await run();
        // A run may fail (full disk, damaged sets reported); it must never hang or crash.
        expect(out.stdout, `${what}: ${out.stderr}`).toMatch(/^\{"ok":/);
      } else if (kind === 'kill') {
        const child = run();
        await new Promise((r) => setTimeout(r, rnd.int(0, 600)));
        child.kill('SIGKILL');
        await child;
      } else if (kind === 'clock') {
        // The clock jumps back a few days or forward a few weeks, then a run.
        clock += rnd.next() < 0.5 ? -rnd.int(1, 5) * DAY : rnd.int(1, 30) * DAY;
        const out = await run();
        expect(out.stdout, `${what}: ${out.stderr}`).toMatch(/^\{"ok":/);
      } else if (kind === 'prune') {
        const out = await run('prune.config.json');
        expect(out.stdout, `${what}: ${out.stderr}`).toMatch(/^\{"ok":/);
      } else if (kind === 'fill') {
        // Fill the small disk, run, then free it again.
        const filler = join(small, 'filler');
        await writeFile(filler, randomBytes(1)).catch(() => {});
        try {
          for (let i = 0; i < 64; i++) await writeFile(join(small, `filler-${i}`), randomBytes(64 * 1024));
        } catch {
          // full
        }
        const out = await run();
        expect(out.stdout, `${what}: ${out.stderr}`).toMatch(/^\{"ok":/);
        for (const f of await readdir(small)) if (f.startsWith('filler')) await rm(join(small, f), { force: true });
      } else {
        const dest = rnd.pick(DESTINATIONS);
        const complete = before[dest].filter((s) => s.state === 'complete');
        if (complete.length > 0) {
          const set = rnd.pick(complete);
          const dir = join(folderOf(dest), set.id);
          const artifact = rnd.pick(set.manifest!.artifacts);
          const how = rnd.int(0, 2);
          if (how === 0) await truncate(join(dir, artifact.name), Math.max(0, artifact.bytes - rnd.int(1, 100)));
          else if (how === 1) await rm(join(dir, artifact.name));
          else await writeFile(join(dir, 'manifest.json'), '{"format":"backup-pipeline/manifest@1","id":"', { mode: 0o600 });
          damaged = { dest, id: set.id };
          damagedOnPurpose.add(`${dest}/${set.id}`);
        }
      }

      const after = await snapshot();
      for (const d of DESTINATIONS) {
        const ids = new Map(after[d].map((s) => [s.id, s]));
        // Every complete set restores: each artifact present with the manifest's size and sha256.
        for (const set of after[d].filter((s) => s.state === 'complete')) {
          for (const a of set.manifest!.artifacts) {
            expect(await sha256(join(folderOf(d), set.id, a.name)), `${what}: ${d}/${set.id}/${a.name} is listed complete but does not match`).toBe(a.sha256);
          }
        }
        // The newest complete set of the destination survived (damaged only when this step did it).
        const newest = before[d].filter((s) => s.state === 'complete').at(-1);
        if (newest) {
          const now = ids.get(newest.id);
          expect(now, `${what}: the newest complete set ${d}/${newest.id} was deleted`).toBeDefined();
          const expected = damaged && damaged.dest === d && damaged.id === newest.id ? 'damaged' : 'complete';
          expect(now!.state, `${what}: ${d}/${newest.id}`).toBe(expected);
        }
        // No damaged set was ever deleted.
        for (const set of before[d].filter((s) => s.state === 'damaged')) {
          expect(ids.get(set.id)?.state, `${what}: the damaged set ${d}/${set.id} was deleted or changed`).toBe('damaged');
        }
        // Damage found only by this test is the only damage there is.
        for (const set of after[d].filter((s) => s.state === 'damaged')) {
          expect(damagedOnPurpose.has(`${d}/${set.id}`), `${what}: ${d}/${set.id} is damaged (${set.problem}) but this test did not damage it`).toBe(true);
        }
      }
      if (kind !== 'kill' && kind !== 'damage') {
        expect(existsSync(join(root, 'work', '.locks', 'nightly.lock')), `${what}: the lock was not released`).toBe(false);
      }
      before = after;
    }
    // The sequence exercised every kind of step, and at least one run succeeded after all of it.
    expect(Object.keys(counts).sort()).toEqual(['clock', 'damage', 'fill', 'kill', 'prune', 'run']);
    const last = await snapshot();
    for (const d of DESTINATIONS) expect(last[d].some((s) => s.state === 'complete'), `${d} holds no complete set at the end`).toBe(true);
  });
});
