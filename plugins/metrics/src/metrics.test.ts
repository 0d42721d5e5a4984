import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runStages } from '@backup-pipeline/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { escapeLabelValue, FAMILIES, formatSample, parseTextfile, renderTextfile, type Sample } from './index.js';

const here = dirname(fileURLToPath(import.meta.url));
const tmpRoot = resolve(here, '../../../.vitest-tmp');
let dir: string;
let fixture: string;
let prom: string;

beforeAll(async () => {
  await mkdir(tmpRoot, { recursive: true });
  dir = await mkdtemp(join(tmpRoot, 'metrics-'));
  fixture = join(dir, 'fixture.mjs');
  prom = join(dir, 'textfile', 'backup_pipeline.prom');
  await writeFile(
    fixture,
    `import { definePlugin, PipelineError, writeFileAtomic, z } from '@backup-pipeline/core';
import { join } from 'node:path';
export default definePlugin({
  name: 'fixture',
  description: 'test stage',
  options: z.object({ fail: z.boolean().default(false) }).strict(),
  apply(hooks, options) {
    hooks.produce.tapPromise('fixture', async (ctx) => {
      await new Promise((r) => setTimeout(r, 20));
      if (options.fail) throw new PipelineError('FIXTURE_BROKE', 'the fixture failed on purpose');
      for (const [name, text] of [['db.dump', 'x'.repeat(1234)], ['env.tar', 'y'.repeat(56)]]) {
        const path = join(ctx.setDir, name);
        ctx.addArtifact({ name, path, kind: 'test', format: 'file', compression: 'none', meta: {}, ...(await writeFileAtomic(path, text)) });
      }
    });
    hooks.verify.tapPromise('fixture', async () => new Promise((r) => setTimeout(r, 5)));
  },
});
`,
  );
});
afterAll(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** Reads the file into `name{sorted labels} → value`, checking every family has HELP and TYPE first. */
async function scrape(): Promise<Map<string, number>> {
  const text = await readFile(prom, 'utf8');
  const lines = text.trimEnd().split('\n');
  const seen = new Set<string>();
  for (const line of lines) {
    const m = /^# (HELP|TYPE) (\S+) (.+)$/.exec(line);
    if (m) {
      if (m[1] === 'TYPE') expect(m[3]).toBe('gauge');
      seen.add(`${m[1]} ${m[2]}`);
      continue;
    }
    const name = /^[a-z_]+/.exec(line)![0];
    expect(seen.has(`HELP ${name}`) && seen.has(`TYPE ${name}`)).toBe(true);
  }
  return new Map(parseTextfile(text).map((s) => [formatSample({ ...s, value: 0 }).replace(/ 0$/, ''), s.value]));
}

const run = (fail = false, pipeline = 'nightly') =>
  runStages({ dir, pipeline, stages: [{ use: fixture, fail }, { use: 'metrics', path: './textfile/backup_pipeline.prom' }] });

describe('metrics through real runs', () => {
  it('writes every metric after a success, keeps the last success after a failure, and counts sets', async () => {
    // Another pipeline's samples already in the file (with a label that needs escaping) are kept.
    await mkdir(dirname(prom), { recursive: true });
    await writeFile(prom, renderTextfile(FAMILIES, [{ name: 'backup_pipeline_last_run_status', labels: { pipeline: 'we"ird\\one' }, value: 1 }]));

    const before = Date.now() / 1000;
    const ok = await run();
    expect(ok.error).toBeUndefined();
    expect((await stat(prom)).mode & 0o777).toBe(0o644);
    let m = await scrape();
    const lastRun = m.get('backup_pipeline_last_run_timestamp_seconds{pipeline="nightly"}')!;
    expect(lastRun).toBeGreaterThanOrEqual(Math.floor(before));
    expect(m.get('backup_pipeline_last_success_timestamp_seconds{pipeline="nightly"}')).toBe(lastRun);
    expect(m.get('backup_pipeline_last_run_status{pipeline="nightly"}')).toBe(1);
    expect(m.get('backup_pipeline_artifact_bytes{artifact="db.dump",pipeline="nightly"}')).toBe(1234);
    expect(m.get('backup_pipeline_artifact_bytes{artifact="env.tar",pipeline="nightly"}')).toBe(56);
    expect(m.get('backup_pipeline_sets{destination="work",pipeline="nightly"}')).toBe(1);
    expect(m.get('backup_pipeline_stage_duration_seconds{hook="produce",pipeline="nightly",plugin="fixture"}')).toBeGreaterThanOrEqual(0.015);
    // verify ran once per artifact: the durations are summed into one sample.
    expect(m.get('backup_pipeline_stage_duration_seconds{hook="verify",pipeline="nightly",plugin="fixture"}')).toBeGreaterThan(0);
    expect(m.get('backup_pipeline_last_run_status{pipeline="we\\"ird\\\\one"}')).toBe(1);

    const failed = await run(true);
    expect(failed.error?.code).toBe('FIXTURE_BROKE');
    m = await scrape();
    expect(m.get('backup_pipeline_last_run_status{pipeline="nightly"}')).toBe(0);
    expect(m.get('backup_pipeline_last_run_timestamp_seconds{pipeline="nightly"}')).toBeGreaterThan(lastRun);
    expect(m.get('backup_pipeline_last_success_timestamp_seconds{pipeline="nightly"}')).toBe(lastRun);
    expect(m.get('backup_pipeline_artifact_bytes{artifact="db.dump",pipeline="nightly"}')).toBe(1234);
    expect(m.get('backup_pipeline_sets{destination="work",pipeline="nightly"}')).toBe(1);
    expect(m.get('backup_pipeline_stage_duration_seconds{hook="produce",pipeline="nightly",plugin="fixture"}')).toBeGreaterThan(0);
    expect(m.has('backup_pipeline_stage_duration_seconds{hook="verify",pipeline="nightly",plugin="fixture"}')).toBe(false);
    expect(m.get('backup_pipeline_last_run_status{pipeline="we\\"ird\\\\one"}')).toBe(1);

    const third = await run();
    expect(third.error).toBeUndefined();
    m = await scrape();
    expect(m.get('backup_pipeline_sets{destination="work",pipeline="nightly"}')).toBe(2);
    expect(m.get('backup_pipeline_damaged_sets{destination="work",pipeline="nightly"}')).toBe(0);
    expect(m.get('backup_pipeline_last_run_status{pipeline="nightly"}')).toBe(1);
    expect(await readFile(prom, 'utf8')).not.toContain('.partial');

    // A damaged set is counted on every run, so an alert can fire on it.
    await writeFile(join(third.workDir, third.result!.summary.setId, 'db.dump'), 'short');
    await run();
    m = await scrape();
    expect(m.get('backup_pipeline_damaged_sets{destination="work",pipeline="nightly"}')).toBe(1);
    expect(m.get('backup_pipeline_sets{destination="work",pipeline="nightly"}')).toBe(2);
  });

  it('a metrics file that cannot be written is a warning, not a failed run', async () => {
    await writeFile(join(dir, 'not-a-folder'), 'x');
    const out = await runStages({ dir, stages: [{ use: fixture }, { use: 'metrics', path: './not-a-folder/x.prom' }] });
    expect(out.error).toBeUndefined();
    expect(out.logs.join('\n')).toContain('cannot write the metrics file');
  });

  it('rejects a path node_exporter would ignore', async () => {
    await expect(runStages({ dir, stages: [{ use: fixture }, { use: 'metrics', path: './m.txt' }] })).rejects.toThrow(/path: node_exporter reads only files ending in \.prom/);
  });
});

describe('text format', () => {
  it('escapes label values and HELP text, and parses them back', () => {
    expect(escapeLabelValue('a"b\\c\nd')).toBe('a\\"b\\\\c\\nd');
    const samples: Sample[] = [
      { name: 'backup_pipeline_artifact_bytes', labels: { pipeline: 'p', artifact: 'x"y\\z\nw' }, value: 12 },
      { name: 'backup_pipeline_last_run_status', labels: { pipeline: 'p' }, value: 0 },
    ];
    const text = renderTextfile(FAMILIES, samples);
    expect(text).toContain('backup_pipeline_artifact_bytes{artifact="x\\"y\\\\z\\nw",pipeline="p"} 12\n');
    expect(text).toContain('# TYPE backup_pipeline_last_run_status gauge\n');
    expect(parseTextfile(text)).toEqual(expect.arrayContaining(samples));
    expect(parseTextfile('garbage line\nfoo{a="1" 2\nbar 3 1700000000000\n')).toEqual([{ name: 'bar', labels: {}, value: 3 }]);
  });
});
