#!/usr/bin/env node
/**
 * backup-pipeline benchmark: `pipeline run` against the common hand-written recipe and the
 * pg_dump floor, and `pipeline restore` against the recipe's manual restore, on one throwaway
 * Mastodon-shaped database per size, interleaved (recipe, pipeline, floor, restores; again…).
 *
 *   npm run bench -- --scale 0.2,1 --runs 3
 *
 * Options: --scale GB[,GB…] (default 1), --runs N (default 3), --cold-runs N (default 10),
 *          --profile (one extra pipeline run with --cpu-prof and /usr/bin/time -v, per size),
 *          --text realistic|simple (the generator's content; default realistic, see bench/README.md),
 *          --ratio-only (generate and report dumpRatio only: no timed contenders, no cold start),
 *          --out DIR (default bench/results).
 * Everything it starts (cluster, gpg-agent, temp dirs, children) is removed on exit and on Ctrl-C.
 * Loopback only: the cluster listens on 127.0.0.1.
 */
import { spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readdirSync, statSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { availableParallelism, cpus, loadavg, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createGpgHome, generateMastodonData, loadMastodonSchema, startPostgres } from '@backup-pipeline/testing';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const CLI = join(ROOT, 'packages/cli/bin/pipeline.js');
const PRELOAD = join(ROOT, 'bench/rss-preload.js');
const TIME = '/usr/bin/time';

const { values: flags } = parseArgs({
  options: {
    scale: { type: 'string', default: '1' },
    runs: { type: 'string', default: '3' },
    'cold-runs': { type: 'string', default: '10' },
    profile: { type: 'boolean', default: false },
    text: { type: 'string', default: 'realistic' },
    'ratio-only': { type: 'boolean', default: false },
    out: { type: 'string', default: join(ROOT, 'bench/results') },
  },
});
const scales = flags.scale.split(',').map(Number).filter((n) => n > 0);
const RUNS = Math.max(1, Number(flags.runs));
const COLD_RUNS = Math.max(1, Number(flags['cold-runs']));
const TEXT = flags.text;
const RATIO_ONLY = flags['ratio-only'];
if (TEXT !== 'realistic' && TEXT !== 'simple') {
  console.error(`--text must be realistic or simple, not ${TEXT}`);
  process.exit(2);
}
if (!existsSync(TIME)) {
  console.error('bench needs /usr/bin/time (apt-get install time)');
  process.exit(2);
}

// ---------------------------------------------------------------- cleanup, also on Ctrl-C
const cleanups = [];
const children = new Set();
let aborting = false;
async function cleanupAll() {
  for (const child of children) killTree(child);
  while (cleanups.length) {
    const fn = cleanups.pop();
    await Promise.resolve()
      .then(fn)
      .catch((e) => console.error(`cleanup: ${e.message}`));
  }
}
function killTree(child) {
  try {
    process.kill(-child.pid, 'SIGTERM'); // its own process group (detached)
  } catch {
    /* gone */
  }
}
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    if (aborting) return;
    aborting = true;
    console.error(`\n${sig}: stopping children, the cluster and removing temp files…`);
    cleanupAll().finally(() => process.exit(sig === 'SIGINT' ? 130 : 143));
  });
}

// ---------------------------------------------------------------- measuring one command
const median = (xs) => {
  const s = xs.filter((x) => typeof x === 'number' && Number.isFinite(x)).sort((a, b) => a - b);
  if (s.length === 0) return null;
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const round = (x, d = 3) => (x == null ? null : Math.round(x * 10 ** d) / 10 ** d);

/**
 * Runs argv under /usr/bin/time in its own process group. Wall from hrtime; CPU (user+sys) and
 * the largest process's peak RSS of the whole waited-for tree from /usr/bin/time.
 */
async function measure(argv, { env = {}, cwd = ROOT, stdout = 'ignore', timeArgs = ['-f', '%e %U %S %M'] } = {}) {
  if (aborting) throw new Error('aborted');
  const timeFile = join(tmpRoot, `time-${randomBytes(4).toString('hex')}`);
  const started = process.hrtime.bigint();
  const child = spawn(TIME, [...timeArgs, '-o', timeFile, '--', ...argv], {
    cwd,
    env: { ...process.env, ...env },
    stdio: ['ignore', stdout === 'capture' ? 'pipe' : 'ignore', 'pipe'],
    detached: true,
  });
  children.add(child);
  let out = '';
  let err = '';
  child.stdout?.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err = (err + d).slice(-8000)));
  const code = await new Promise((r) => child.on('close', (c, s) => r(c ?? s)));
  children.delete(child);
  const wallMs = Number(process.hrtime.bigint() - started) / 1e6;
  const timeText = await readFile(timeFile, 'utf8').catch(() => '');
  await rm(timeFile, { force: true });
  if (code !== 0) throw new Error(`${argv.join(' ').slice(0, 200)} exited ${code}:\n${err}\n${timeText}`);
  const last = timeText.trim().split('\n').at(-1) ?? '';
  const [, user, sys, maxKB] = last.split(/\s+/).map(Number);
  return { wallMs, cpuMs: (user + sys) * 1000, treeMaxRssMB: maxKB / 1024, stdout: out, stderr: err, timeText };
}

// ---------------------------------------------------------------- environment
const tmpRoot = await mkdtemp('/tmp/bp-bench-');
await chmod(tmpRoot, 0o755); // the postgres user (cluster runs as it when we are root) needs nothing here, but pg_dump does not care
cleanups.push(() => rm(tmpRoot, { recursive: true, force: true }));

function version(cmd, args = ['--version']) {
  const r = spawnSync(cmd, args, { encoding: 'utf8' });
  return ((r.stdout || r.stderr || '').split('\n')[0] ?? '').trim();
}

console.error('starting a throwaway PostgreSQL on 127.0.0.1…');
const pg = await startPostgres();
cleanups.push(() => pg.stop());
const gpgHome = await createGpgHome();
cleanups.push(() => gpgHome.cleanup());
const PGBIN = pg.bindir;
const machine = {
  cores: availableParallelism(),
  cpuModel: cpus()[0]?.model ?? '?',
  memGB: round(totalmem() / 2 ** 30, 1),
  node: process.version,
  tools: {
    postgres: pg.version,
    pg_dump: version(join(PGBIN, 'pg_dump')),
    gpg: version('gpg'),
    zstd: version('zstd', ['-V']),
    rsync: version('rsync'),
    time: '/usr/bin/time',
  },
};
console.error(`machine: ${machine.cores} cores, ${machine.cpuModel}, Node ${machine.node}, ${machine.tools.pg_dump}, ${machine.tools.gpg}`);

const password = `bench-${randomBytes(12).toString('base64url')}`;
await pg.createRole('mastodon', password, { login: true, createdb: true });

// ---------------------------------------------------------------- cold start (no database needed)
async function coldStart(configFile) {
  const help = [];
  const validate = [];
  for (let i = 0; i < COLD_RUNS; i++) {
    help.push((await measure([process.execPath, CLI, '--help'])).wallMs);
    validate.push((await measure([process.execPath, CLI, '--config', configFile, 'validate'])).wallMs);
  }
  return { runs: COLD_RUNS, helpMs: round(median(help), 1), validateMs: round(median(validate), 1), helpAllMs: help.map((x) => round(x, 1)), validateAllMs: validate.map((x) => round(x, 1)) };
}

// ---------------------------------------------------------------- one size
function configYaml({ envFile, gnupgHome, fingerprint }) {
  return `# bench: the default Mastodon chain (config/mastodon.yaml's defaults), two local destinations.
workDir: ./work
timezone: UTC
destinations:
  local:
    use: local
    path: ./local
  mirror:
    use: rsync
    target: ./mirror
pipelines:
  nightly:
    source: mastodon
    stages:
      - use: credentials
        envFile: ${envFile}
      - use: pg-dump            # default compression
      - use: verify             # pg_restore --list + full read; restoreTest off (the recipe has none)
        restoreTest: false
      - use: gpg
        gnupgHome: ${gnupgHome}
        recipients: [${fingerprint}]
      - use: retention
        keepLast: 2
    destinations: [local, mirror]
`;
}

const RECIPE = String.raw`set -eu
ts=$(date +%Y%m%d-%H%M%S)
f="$BK/mastodon-$ts.dump"
pg_dump -Fc -h 127.0.0.1 -p "$PGPORT" -U mastodon -f "$f" mastodon_production
pg_restore --list "$f" > /dev/null
gpg --encrypt --recipient "$FPR" "$f"
rm "$f"
rsync -az "$BK/" "$MIRROR/"
`;
const RECIPE_RESTORE = String.raw`set -eu
g=$(ls "$MIRROR"/*.gpg | tail -n 1)
gpg -d "$g" > "$BK/restore.dump"
createdb -h 127.0.0.1 -p "$PGPORT" -U mastodon -T template0 "$DB"
pg_restore -h 127.0.0.1 -p "$PGPORT" -U mastodon --no-owner --no-acl -d "$DB" "$BK/restore.dump"
rm "$BK/restore.dump"
`;
const FLOOR = String.raw`exec pg_dump -Fc -Z0 -h 127.0.0.1 -p "$PGPORT" -U mastodon mastodon_production > /dev/null`;
const DUMP_BYTES = String.raw`set -eu
pg_dump -Fc -h 127.0.0.1 -p "$PGPORT" -U mastodon -f "$BK.ratio.dump" mastodon_production
wc -c < "$BK.ratio.dump"
rm "$BK.ratio.dump"
`;

function dirBytes(dir, filter = () => true) {
  let total = 0;
  if (!existsSync(dir)) return 0;
  for (const e of readdirSync(dir, { withFileTypes: true })) {
    const p = join(dir, e.name);
    if (e.isDirectory()) total += dirBytes(p, filter);
    else if (filter(e.name)) total += statSync(p).size;
  }
  return total;
}

async function benchScale(scaleGB) {
  const db = 'mastodon_production';
  await pg.psql(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
  await pg.createDatabase(db, { owner: 'mastodon' });
  await loadMastodonSchema(pg, db, { owner: 'mastodon' });
  console.error(`\n== ${scaleGB} GB: generating the Mastodon-shaped database (${TEXT} text)…`);
  const genStarted = Date.now();
  const { accounts } = await generateMastodonData(pg, db, { scale: { targetMB: scaleGB * 1024 }, owner: 'mastodon', text: TEXT });
  const generateMs = Date.now() - genStarted;
  await pg.psql('CHECKPOINT');
  const [[dbBytes]] = await pg.psql(`SELECT pg_database_size('${db}')`);
  console.error(`   ${accounts} accounts, ${(Number(dbBytes) / 2 ** 20).toFixed(0)} MB on disk, in ${(generateMs / 1000).toFixed(0)} s`);

  const dir = await mkdtemp(join(tmpRoot, `s${scaleGB}-`));
  const pgpass = join(dir, '.pgpass');
  await writeFile(pgpass, `127.0.0.1:${pg.port}:*:mastodon:${password.replace(/[:\\]/g, '\\$&')}\n`, { mode: 0o600 });
  const envFile = join(dir, '.env.production');
  await writeFile(envFile, `DB_HOST=127.0.0.1\nDB_PORT=${pg.port}\nDB_NAME=${db}\nDB_USER=mastodon\nDB_PASS="${password}"\n`, { mode: 0o600 });
  const configFile = join(dir, 'pipeline.config.yaml');
  await writeFile(configFile, configYaml({ envFile, gnupgHome: gpgHome.home, fingerprint: gpgHome.fingerprint }), { mode: 0o600 });
  const recipeDir = join(dir, 'recipe');
  const recipeMirror = join(dir, 'recipe-mirror');
  const shellEnv = { PATH: `${PGBIN}:${process.env.PATH}`, PGPASSFILE: pgpass, PGPORT: String(pg.port), GNUPGHOME: gpgHome.home, FPR: gpgHome.fingerprint, BK: recipeDir, MIRROR: recipeMirror };

  // How compressible the data are: pg_dump -Fc (its default gzip) bytes / pg_database_size. A real
  // Mastodon database gives ~0.15–0.25; the old simple data ~0.06. Not a timing: one run is enough.
  const ratioRun = await measure(['sh', '-c', DUMP_BYTES], { env: shellEnv, stdout: 'capture' });
  const dumpBytes = Number(ratioRun.stdout.trim());
  const dumpRatio = round(dumpBytes / Number(dbBytes));
  console.error(`   dumpRatio ${dumpRatio}: pg_dump -Fc ${(dumpBytes / 2 ** 20).toFixed(1)} MB / database ${(Number(dbBytes) / 2 ** 20).toFixed(1)} MB (${(ratioRun.wallMs / 1000).toFixed(1)} s)`);
  const dataFacts = { text: TEXT, generateMs, dumpBytes, dumpRatio, dumpRatioDatabaseBytes: Number(dbBytes), dumpMs: round(ratioRun.wallMs, 0) }; // databaseBytes: after the runs
  if (RATIO_ONLY) {
    await rm(dir, { recursive: true, force: true });
    return { scaleGB, accounts, databaseBytes: Number(dbBytes), ratioOnly: true, ...dataFacts };
  }

  const samples = { recipe: [], pipeline: [], floor: [], recipeRestore: [], pipelineRestore: [] };
  for (let i = 1; i <= RUNS; i++) {
    console.error(`   run ${i}/${RUNS} (load ${loadavg()[0].toFixed(2)})`);
    // A: the recipe, into fresh folders each time (rsync copies the new file)
    await rm(recipeDir, { recursive: true, force: true });
    await rm(recipeMirror, { recursive: true, force: true });
    await mkdir(recipeDir, { recursive: true });
    await mkdir(recipeMirror, { recursive: true });
    const a = await measure(['sh', '-c', RECIPE], { env: shellEnv });
    a.outputBytes = dirBytes(recipeMirror, (n) => n.endsWith('.gpg'));
    samples.recipe.push(a);
    console.error(`     recipe   ${(a.wallMs / 1000).toFixed(2)} s`);

    // B: pipeline run (the CLI binary), with the preload reporting the node process's own peak RSS
    const rssFile = join(dir, `rss-${i}.json`);
    const b = await measure([process.execPath, '--import', PRELOAD, CLI, '--config', configFile, '--log-level', 'warn', '--json', 'run', 'nightly'], {
      env: { BENCH_RSS_FILE: rssFile },
      stdout: 'capture',
    });
    const summary = JSON.parse(b.stdout);
    const self = JSON.parse(await readFile(rssFile, 'utf8'));
    b.nodeMaxRssMB = self.maxRssKB / 1024;
    b.nodeCpuMs = self.userMs + self.sysMs;
    b.childCpuMs = b.cpuMs - b.nodeCpuMs;
    b.outputBytes = summary.artifacts.reduce((s, x) => s + x.bytes, 0);
    b.stages = summary.stages.filter((s) => s.durationMs).map((s) => ({ plugin: s.plugin, hook: s.hook, ms: s.durationMs }));
    b.summaryMs = summary.durationMs;
    for (const d of summary.destinations ?? []) b.stages.push({ plugin: `ship:${d.destination}`, hook: 'ship', ms: d.durationMs });
    delete b.stdout;
    samples.pipeline.push(b);
    console.error(`     pipeline ${(b.wallMs / 1000).toFixed(2)} s (node peak RSS ${b.nodeMaxRssMB.toFixed(0)} MB; ${b.stages.map((s) => `${s.plugin}/${s.hook} ${(s.ms / 1000).toFixed(1)}`).join(', ')})`);

    // C: the floor
    const c = await measure(['sh', '-c', FLOOR], { env: shellEnv });
    samples.floor.push(c);
    console.error(`     floor    ${(c.wallMs / 1000).toFixed(2)} s`);

    // D: restores (recipe: gpg -d, createdb, pg_restore; pipeline: restore latest --jobs 2)
    const rdb = `restored_recipe_${i}`;
    const d1 = await measure(['sh', '-c', RECIPE_RESTORE], { env: { ...shellEnv, DB: rdb } });
    samples.recipeRestore.push(d1);
    await pg.psql(`DROP DATABASE IF EXISTS ${rdb} WITH (FORCE)`);
    console.error(`     restore (recipe)   ${(d1.wallMs / 1000).toFixed(2)} s`);
    const pdb = `restored_pipeline_${i}`;
    const rssFile2 = join(dir, `rss-restore-${i}.json`);
    const d2 = await measure([process.execPath, '--import', PRELOAD, CLI, '--config', configFile, '--log-level', 'warn', '--quiet', 'restore', 'latest', '--to', pdb, '--jobs', '2', '--from', 'local'], {
      env: { BENCH_RSS_FILE: rssFile2 },
    });
    const self2 = JSON.parse(await readFile(rssFile2, 'utf8'));
    d2.nodeMaxRssMB = self2.maxRssKB / 1024;
    samples.pipelineRestore.push(d2);
    await pg.psql(`DROP DATABASE IF EXISTS ${pdb} WITH (FORCE)`);
    console.error(`     restore (pipeline) ${(d2.wallMs / 1000).toFixed(2)} s (node peak RSS ${d2.nodeMaxRssMB.toFixed(0)} MB)`);
  }

  let profile;
  if (flags.profile) profile = await profileRun(dir, configFile, scaleGB);

  const agg = (xs) => ({
    wallMs: round(median(xs.map((x) => x.wallMs)), 0),
    cpuMs: round(median(xs.map((x) => x.cpuMs)), 0),
    treeMaxRssMB: round(Math.max(...xs.map((x) => x.treeMaxRssMB)), 1),
    outputBytes: xs[0].outputBytes === undefined ? null : median(xs.map((x) => x.outputBytes)),
    allWallMs: xs.map((x) => round(x.wallMs, 0)),
  });
  const res = Object.fromEntries(Object.entries(samples).map(([k, xs]) => [k, agg(xs)]));
  const p = samples.pipeline;
  res.pipeline.nodePeakRssMB = round(Math.max(...p.map((x) => x.nodeMaxRssMB)), 1);
  res.pipeline.nodeCpuMs = round(median(p.map((x) => x.nodeCpuMs)), 0);
  res.pipeline.childCpuMs = round(median(p.map((x) => x.childCpuMs)), 0);
  res.pipeline.stagesMs = {};
  for (const s of p[0].stages) {
    const key = `${s.plugin}/${s.hook}`;
    res.pipeline.stagesMs[key] = round(median(p.map((x) => x.stages.find((y) => `${y.plugin}/${y.hook}` === key)?.ms)), 0);
  }
  res.pipelineRestore.nodePeakRssMB = round(Math.max(...samples.pipelineRestore.map((x) => x.nodeMaxRssMB)), 1);
  const [[dbBytesAfter]] = await pg.psql(`SELECT pg_database_size('${db}')`);
  await rm(dir, { recursive: true, force: true });
  return {
    scaleGB,
    accounts,
    databaseBytes: Number(dbBytesAfter),
    ...dataFacts,
    runs: RUNS,
    ...res,
    pipelineVsRecipe: round(res.pipeline.wallMs / res.recipe.wallMs),
    pipelineVsFloor: round(res.pipeline.wallMs / res.floor.wallMs),
    pipelinePeakRssMB: res.pipeline.nodePeakRssMB,
    restoreVsRecipe: round(res.pipelineRestore.wallMs / res.recipeRestore.wallMs),
    outputBytesVsRecipe: round(res.pipeline.outputBytes / res.recipe.outputBytes),
    cpuVsRecipe: round(res.pipeline.cpuMs / res.recipe.cpuMs),
    profile,
  };
}

/** One extra pipeline run with --cpu-prof (node's own CPU) and /usr/bin/time -v (the tree). */
async function profileRun(dir, configFile, scaleGB) {
  const profDir = join(flags.out, 'profiles', `${scaleGB}GB`);
  await mkdir(profDir, { recursive: true });
  const r = await measure([process.execPath, '--cpu-prof', '--cpu-prof-dir', profDir, CLI, '--config', configFile, '--log-level', 'warn', '--json', 'run', 'nightly'], {
    stdout: 'capture',
    timeArgs: ['-v'],
  });
  await writeFile(join(profDir, 'time-v.txt'), r.timeText);
  console.error(`   profile written to ${profDir}`);
  return { dir: profDir, timeV: r.timeText.split('\n').filter((l) => /Elapsed|User time|System time|Maximum resident|context switches|File system/.test(l)).map((l) => l.trim()) };
}

// ---------------------------------------------------------------- table
function printTable(results, cold) {
  const s = (ms) => (ms == null ? '-' : `${(ms / 1000).toFixed(2)} s`);
  const mb = (b) => (b == null ? '-' : `${(b / 2 ** 20).toFixed(1)} MB`);
  const lines = [];
  lines.push(`Node ${machine.node}, ${machine.cores} cores (${machine.cpuModel}), ${machine.tools.pg_dump}, ${machine.tools.gpg}, ${machine.tools.zstd}; load average now ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
  for (const r of results) {
    lines.push('');
    const ratio = `dumpRatio ${r.dumpRatio} (pg_dump -Fc ${mb(r.dumpBytes)} / database; real instances ~0.15–0.25), ${r.text} text`;
    if (r.ratioOnly) {
      lines.push(`database ${r.scaleGB} GB (${mb(r.databaseBytes)} on disk, ${r.accounts} accounts): ${ratio}`);
      continue;
    }
    lines.push(`database ${r.scaleGB} GB (${mb(r.databaseBytes)} on disk), median of ${r.runs}; ${ratio}`);
    const rows = [['', 'wall', 'CPU (tree)', 'output', 'peak RSS']];
    rows.push(['recipe (pg_dump -Fc, --list, gpg, rsync)', s(r.recipe.wallMs), s(r.recipe.cpuMs), mb(r.recipe.outputBytes), `${r.recipe.treeMaxRssMB} MB (largest process)`]);
    rows.push(['pipeline run', s(r.pipeline.wallMs), `${s(r.pipeline.cpuMs)} (node ${s(r.pipeline.nodeCpuMs)})`, mb(r.pipeline.outputBytes), `node ${r.pipeline.nodePeakRssMB} MB; largest ${r.pipeline.treeMaxRssMB} MB`]);
    rows.push(['floor (pg_dump -Fc -Z0 > /dev/null)', s(r.floor.wallMs), s(r.floor.cpuMs), '-', `${r.floor.treeMaxRssMB} MB`]);
    rows.push(['restore: recipe (gpg -d, pg_restore)', s(r.recipeRestore.wallMs), s(r.recipeRestore.cpuMs), '-', `${r.recipeRestore.treeMaxRssMB} MB`]);
    rows.push(['restore: pipeline restore --jobs 2', s(r.pipelineRestore.wallMs), s(r.pipelineRestore.cpuMs), '-', `node ${r.pipelineRestore.nodePeakRssMB} MB`]);
    const w = rows[0].map((_, c) => Math.max(...rows.map((row) => row[c].length)));
    for (const row of rows) lines.push('  ' + row.map((cell, c) => cell.padEnd(w[c])).join('  '));
    lines.push(`  pipeline/recipe ${r.pipelineVsRecipe} (target ≤ 0.25)   pipeline/floor ${r.pipelineVsFloor} (≤ 1.6)   output/recipe ${r.outputBytesVsRecipe} (≤ 1)   restore/recipe ${r.restoreVsRecipe} (≤ 0.7)   node peak RSS ${r.pipelinePeakRssMB} MB (≤ 150)`);
    lines.push(`  stages: ${Object.entries(r.pipeline.stagesMs).map(([k, v]) => `${k} ${s(v)}`).join(', ')}`);
  }
  if (cold) lines.push('', `cold start (median of ${cold.runs}, Node ${machine.node}): pipeline --help ${cold.helpMs} ms (≤ 250), pipeline validate ${cold.validateMs} ms (≤ 400)`);
  process.stdout.write(lines.join('\n') + '\n');
}

// ---------------------------------------------------------------- main
try {
  await mkdir(flags.out, { recursive: true });
  // a config for the cold-start measurements (validate reads and checks it; no database touched)
  const coldDir = await mkdtemp(join(tmpRoot, 'cold-'));
  const coldEnv = join(coldDir, '.env.production');
  await writeFile(coldEnv, `DB_HOST=127.0.0.1\nDB_PORT=${pg.port}\nDB_NAME=x\nDB_USER=mastodon\nDB_PASS=""\n`, { mode: 0o600 });
  const coldConfig = join(coldDir, 'pipeline.config.yaml');
  await writeFile(coldConfig, configYaml({ envFile: coldEnv, gnupgHome: gpgHome.home, fingerprint: gpgHome.fingerprint }));
  let cold;
  if (!RATIO_ONLY) {
    console.error(`cold start: ${COLD_RUNS}× pipeline --help and pipeline validate…`);
    cold = await coldStart(coldConfig);
    console.error(`   --help ${cold.helpMs} ms, validate ${cold.validateMs} ms`);
  }

  const results = [];
  const date = new Date().toISOString().slice(0, 10);
  for (const scale of scales) {
    const r = await benchScale(scale);
    results.push(r);
    const file = join(flags.out, `${date}-${scale}${RATIO_ONLY ? '-ratio' : ''}.json`);
    await writeFile(file, JSON.stringify({ date: new Date().toISOString(), machine, coldStart: cold, loadAvg: loadavg(), ...r }, null, 2) + '\n');
    console.error(`   wrote ${file}`);
  }
  printTable(results, cold);
} catch (error) {
  if (!aborting) {
    console.error(error);
    process.exitCode = 1;
  }
} finally {
  if (!aborting) await cleanupAll();
}
