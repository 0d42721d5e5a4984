#!/usr/bin/env node
/**
 * backup-pipeline benchmark (issue 11): on one throwaway Mastodon-shaped database per size,
 * interleaved rounds of `pipeline run` against the hand-built one-pass stream
 * (`pg_dump -Fc -Z0 | zstd -T2 -3 | gpg -z 0 | tee` two folders), the common hand-written recipe
 * and the pg_dump floor; `pipeline restore --jobs 2` against the hand-built restore; the restore
 * drill (`pipeline verify latest --restore-test`) against the restore into the server; dump formats
 * (directory -j 2 gzip vs custom + zstd -T0). Wall and CPU (tree, bench server, per process).
 *
 *   npm run bench -- --scale 1,5 --runs 3,1
 *
 * Options: --scale GB[,GB…] (default 1), --runs N[,N…] (default 3; one per size), --cold-runs N (default 10),
 *          --profile (one extra pipeline run and one restore of its set with --cpu-prof and /usr/bin/time -v, per size),
 *          --text realistic|simple (the generator's content; default realistic, see bench/README.md),
 *          --ratio-only (generate and report dumpRatio only: no timed contenders, no cold start),
 *          --prepare-only (generate, or restore from the cache, and stop), --cache DIR
 *          (default /var/tmp/bp-bench-cache), --no-cache, --only/--skip NAME[,NAME…] (contenders or
 *          groups backup, restore, formats), --drill-server-option KEY=VALUE (adds the drill into the
 *          server), --durability production|off (the bench server after loading; default production),
 *          --suite db|physical|media|all (bench/physical.js, bench/media.js when they exist),
 *          --tag NAME (suffix of the results files), --out DIR (default bench/results),
 *          --summarize A.json,B.json (the by-size summary of results files from separate runs).
 * Everything it starts (cluster, gpg-agent, temp dirs, children) is removed on exit and on Ctrl-C.
 * Loopback only: the cluster listens on 127.0.0.1.
 */
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { availableParallelism, cpus, loadavg, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { createGpgHome, generateMastodonData, loadMastodonSchema, startPostgres } from '@backup-pipeline/testing';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const CLI = join(ROOT, 'packages/cli/bin/pipeline.js');
const PRELOAD = join(ROOT, 'bench/rss-preload.js');
const TIME = '/usr/bin/time';
// Written into every results file: why wall times from a shared machine are to be read with care.
const NOISE =
  'Wall times are from a 2-core machine shared with other engineers running test suites (see loadAvgAtStart per sample): read them as noisy. CPU time (user+sys of the measured process tree from /usr/bin/time, plus the bench server\'s backends from /proc) is the more robust figure; cpuRatios gives the targets in CPU. Since 2026-12-02 (fifth run) every contender starts after a `sync`, so none pays for writing back the previous one\'s unsynced pages.';

const { values: flags } = parseArgs({
  strict: false, // a suite module (bench/physical.js, bench/media.js) may read flags of its own from process.argv
  options: {
    scale: { type: 'string', default: '1' },
    runs: { type: 'string', default: '3' },
    'cold-runs': { type: 'string', default: '10' },
    profile: { type: 'boolean', default: false },
    text: { type: 'string', default: 'realistic' },
    'ratio-only': { type: 'boolean', default: false },
    'prepare-only': { type: 'boolean', default: false },
    cache: { type: 'string', default: '/var/tmp/bp-bench-cache' },
    'no-cache': { type: 'boolean', default: false },
    suite: { type: 'string', default: 'db' },
    only: { type: 'string', default: '' },
    skip: { type: 'string', default: '' },
    'drill-server-option': { type: 'string', default: 'verify.restoreInto=server' },
    durability: { type: 'string', default: 'production' },
    tag: { type: 'string', default: '' },
    summarize: { type: 'string', default: '' },
    out: { type: 'string', default: join(ROOT, 'bench/results') },
  },
});
const scales = flags.scale.split(',').map(Number).filter((n) => n > 0);
// --runs N, or one N per size (`--scale 1,5 --runs 3,1`)
const RUNS_LIST = flags.runs.split(',').map((n) => Math.max(1, Number(n) || 1));
const runsFor = (index) => RUNS_LIST[Math.min(index, RUNS_LIST.length - 1)];
const COLD_RUNS = Math.max(0, Number(flags['cold-runs']));
const TEXT = flags.text;
const RATIO_ONLY = flags['ratio-only'];
const PREPARE_ONLY = flags['prepare-only'];
const CACHE = flags['no-cache'] ? null : resolve(flags.cache);
// The contenders of the db suite, in the order of one round (interleaved: every round runs each once).
const ALL_CONTENDERS = ['recipe', 'ideal', 'pipeline', 'pipelineStaging', 'floor', 'recipeRestore', 'idealRestore', 'pipelineRestore', 'drill', 'drillIntoServer', ...['fmtCustomZstd1', 'fmtCustomZstd3', 'fmtDirGzip6', 'fmtDirGzip1', 'pipelineDir']];
const GROUPS = { formats: ['fmtCustomZstd1', 'fmtCustomZstd3', 'fmtDirGzip6', 'fmtDirGzip1', 'pipelineDir'], backup: ['recipe', 'ideal', 'pipeline', 'pipelineStaging', 'floor'], restore: ['recipeRestore', 'idealRestore', 'pipelineRestore', 'drill', 'drillIntoServer'] };
const expand = (list) => list.split(',').map((x) => x.trim()).filter(Boolean).flatMap((x) => GROUPS[x] ?? [x]);
const DRILL_SERVER_OPTION = flags['drill-server-option'];
const CONTENDERS = new Set(flags.only ? expand(flags.only) : ALL_CONTENDERS.filter((c) => c !== 'recipeRestore' && (c !== 'drillIntoServer' || DRILL_SERVER_OPTION)));
for (const c of expand(flags.skip)) CONTENDERS.delete(c);
for (const c of CONTENDERS) {
  if (!ALL_CONTENDERS.includes(c)) {
    console.error(`unknown contender ${c} (known: ${ALL_CONTENDERS.join(', ')}; groups: ${Object.keys(GROUPS).join(', ')})`);
    process.exit(2);
  }
}
if (CONTENDERS.has('drillIntoServer') && !DRILL_SERVER_OPTION) {
  console.error('drillIntoServer needs --drill-server-option KEY=VALUE (the verify option that restores into the source server)');
  process.exit(2);
}
const SUITES = flags.suite === 'all' ? ['db', 'physical', 'media'] : flags.suite.split(',');
if (!['production', 'off'].includes(flags.durability)) {
  console.error('--durability must be production or off');
  process.exit(2);
}
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
const round = (x, d = 3) => (x == null || !Number.isFinite(x) ? null : Math.round(x * 10 ** d) / 10 ** d);
const ratio = (a, b) => (a == null || b == null || b === 0 ? null : round(a / b));

// bench/subreaper.py makes the measured command a child subreaper, so a daemon it starts (the
// postmaster of a throwaway restore-drill cluster) is waited for and its CPU counted by /usr/bin/time.
const PYTHON = (() => {
  const r = spawnSync('python3', ['-c', 'import sys; print(sys.executable)'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : null;
})();
const SUBREAPER = join(ROOT, 'bench/subreaper.py');
const CLK_TCK = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout?.trim()) || 100;

/** `/proc/PID/stat`: ppid, comm and CPU ticks (self, and waited-for children), or undefined. */
function procStat(pid) {
  let text;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  const close = text.lastIndexOf(')');
  const comm = text.slice(text.indexOf('(') + 1, close);
  const f = text.slice(close + 2).split(' '); // f[0] is field 3 (state)
  return { pid, comm, ppid: Number(f[1]), self: Number(f[11]) + Number(f[12]), children: Number(f[13]) + Number(f[14]) };
}
function allProcs() {
  const out = new Map();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const st = procStat(Number(name));
    if (st) out.set(st.pid, st);
  }
  return out;
}
/** The bench server's postmaster (its children are the backends that COPY out and in). */
function postmasterPid() {
  try {
    return Number(readFileSync(join(dirname(pg.socketDir), 'data', 'postmaster.pid'), 'utf8').split('\n')[0]);
  } catch {
    return undefined;
  }
}
/** CPU ms the bench server used so far: postmaster + its exited children (cutime) + its live children. */
function serverCpuTicks(procs = allProcs()) {
  const pm = postmasterPid();
  const p = pm && procs.get(pm);
  if (!p) return undefined;
  let ticks = p.self + p.children;
  for (const q of procs.values()) if (q.ppid === pm) ticks += q.self;
  return ticks;
}

/**
 * Samples /proc every 250 ms while a command runs: the last CPU ticks of every process under
 * `rootPid` (grouped by command name) and of the bench server's processes (`server`), so the
 * per-process CPU shows what saturates. A process that lives < 250 ms may be missed.
 */
function perProcessSampler(rootPid) {
  const seen = new Map(); // pid -> { comm, ticks, base }
  const pm = postmasterPid();
  const scan = () => {
    const procs = allProcs();
    const under = (pid) => {
      for (let p = pid, hops = 0; p > 1 && hops < 64; hops++) {
        if (p === rootPid) return true;
        p = procs.get(p)?.ppid ?? 0;
      }
      return false;
    };
    for (const st of procs.values()) {
      const isServer = pm !== undefined && st.ppid === pm;
      if (!isServer && !under(st.pid)) continue;
      const key = isServer ? 'server (backends)' : st.comm === 'python3' ? 'bench subreaper (python3)' : st.comm;
      const prev = seen.get(st.pid);
      if (prev) {
        prev.ticks = st.self;
        prev.comm = key;
      } else seen.set(st.pid, { comm: key, ticks: st.self, base: isServer ? st.self : 0 });
      if (st.comm === 'node') scanThreads(st.pid);
    }
  };
  // node's CPU by thread, to say where it goes: the main thread (JavaScript, and the syscalls it makes
  // itself), or the others (libuv's pool, which runs copyFile and fs calls, and V8's GC and compiler).
  const threads = new Map(); // "pid/tid" -> { name, ticks }
  const scanThreads = (pid) => {
    let tids = [];
    try {
      tids = readdirSync(`/proc/${pid}/task`);
    } catch {
      return;
    }
    for (const tid of tids) {
      const st = procStat(`${pid}/task/${tid}`);
      // Node.js 20 leaves most threads named `node`: the main thread is the one whose tid is the pid.
      if (st) threads.set(`${pid}/${tid}`, { name: String(pid) === tid ? 'main thread' : `other threads (${st.comm})`, ticks: st.self });
    }
  };
  scan();
  const timer = setInterval(scan, 250);
  const byName = (entries) => {
    const out = {};
    for (const [name, ms] of entries) out[name] = (out[name] ?? 0) + ms;
    return Object.fromEntries(Object.entries(out).filter(([, ms]) => ms >= 10).sort((a, b) => b[1] - a[1]).map(([k, v]) => [k, Math.round(v)]));
  };
  return () => {
    clearInterval(timer);
    return {
      byProcess: byName([...seen.values()].map(({ comm, ticks, base }) => [comm, ((ticks - base) * 1000) / CLK_TCK])),
      nodeThreads: byName([...threads.values()].map(({ name, ticks }) => [name, (ticks * 1000) / CLK_TCK])),
    };
  };
}

/**
 * Runs argv under /usr/bin/time (and bench/subreaper.py) in its own process group. Wall from the
 * subreaper (the command's own exit) or hrtime; CPU (user+sys) and the largest process's peak RSS
 * of the whole waited-for tree from /usr/bin/time; the bench server's CPU from /proc; the load
 * average at the start.
 */
async function measure(argv, { env = {}, cwd = ROOT, stdout = 'ignore', timeArgs = ['-f', '%e %U %S %M'] } = {}) {
  if (aborting) throw new Error('aborted');
  const id = randomBytes(4).toString('hex');
  const timeFile = join(tmpRoot, `time-${id}`);
  const wallFile = join(tmpRoot, `wall-${id}`);
  const loadAvgAtStart = round(loadavg()[0], 2);
  const serverBefore = serverCpuTicks();
  const wrapped = PYTHON ? [PYTHON, SUBREAPER, ...argv] : argv;
  const started = process.hrtime.bigint();
  const child = spawn(TIME, [...timeArgs, '-o', timeFile, '--', ...wrapped], {
    cwd,
    env: { ...process.env, ...env, BENCH_WALL_FILE: wallFile },
    stdio: ['ignore', stdout === 'capture' ? 'pipe' : 'ignore', 'pipe'],
    detached: true,
  });
  children.add(child);
  const stopSampler = perProcessSampler(child.pid);
  let out = '';
  let err = '';
  child.stdout?.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err = (err + d).slice(-8000)));
  const code = await new Promise((r) => child.on('close', (c, s) => r(c ?? s)));
  children.delete(child);
  const hrWallMs = Number(process.hrtime.bigint() - started) / 1e6;
  const { byProcess: cpuByProcessMs, nodeThreads: nodeThreadsCpuMs } = stopSampler();
  const serverAfter = serverCpuTicks();
  const timeText = await readFile(timeFile, 'utf8').catch(() => '');
  const reaperWall = Number((await readFile(wallFile, 'utf8').catch(() => '')).trim());
  await rm(timeFile, { force: true });
  await rm(wallFile, { force: true });
  if (code !== 0) throw new Error(`${argv.join(' ').slice(0, 200)} exited ${code}:\n${err}\n${timeText}`);
  const last = timeText.trim().split('\n').at(-1) ?? '';
  const [, user, sys, maxKB] = last.split(/\s+/).map(Number);
  const cpuMs = (user + sys) * 1000;
  const serverCpuMs = serverBefore === undefined || serverAfter === undefined ? null : ((serverAfter - serverBefore) * 1000) / CLK_TCK;
  const wallMs = reaperWall > 0 ? reaperWall : hrWallMs;
  return { wallMs, cpuMs, serverCpuMs, totalCpuMs: cpuMs + (serverCpuMs ?? 0), treeMaxRssMB: maxKB / 1024, loadAvgAtStart, cpuByProcessMs, nodeThreadsCpuMs, stdout: out, stderr: err, timeText };
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
  // the code measured: HEAD, and the files other people had changed but not committed (the built
  // dist/ the bench runs is whatever the last `tsc -b` in this shared tree compiled)
  // (a bench/snapshot.sh copy has no .git: its .bench-rev names the commit, and nothing is uncommitted)
  gitHead: existsSync(join(ROOT, '.bench-rev')) ? readFileSync(join(ROOT, '.bench-rev'), 'utf8').trim() : spawnSync('git', ['rev-parse', '--short', 'HEAD'], { cwd: ROOT, encoding: 'utf8' }).stdout?.trim(),
  snapshot: existsSync(join(ROOT, '.bench-rev')),
  gitUncommitted: existsSync(join(ROOT, '.bench-rev')) ? 0 : (spawnSync('git', ['status', '--short', '--untracked-files=no'], { cwd: ROOT, encoding: 'utf8' }).stdout ?? '').split('\n').filter(Boolean).length,
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
/**
 * The bench config: the default Mastodon chain (config/mastodon.yaml's defaults), two local
 * destinations (as the hand-built stream's tee into two folders; until 2026-12-02 the second was
 * rsync into a local folder, 1.0 s of the 1 GB run's wall). `dump` replaces the pg-dump stage's options (the format contenders); `suffix`
 * keeps that pipeline's folders apart.
 */
function configYaml({ envFile, gnupgHome, fingerprint, dump = '', suffix = '', keepInWorkDir = true }) {
  return `# bench: the default Mastodon chain (config/mastodon.yaml's defaults), two local destinations.
workDir: ./work${suffix}
keepInWorkDir: ${keepInWorkDir}
timezone: UTC
destinations:
  local:
    use: local
    path: ./local${suffix}
  mirror:
    use: local
    path: ./mirror${suffix}
pipelines:
  nightly:
    source: mastodon
    stages:
      - use: credentials
        envFile: ${envFile}
      - use: pg-dump            # default compression${dump}
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
const DIR_DUMP = `
        format: directory
        jobs: 2
        compression: { method: gzip }`;

const PG = '-h 127.0.0.1 -p "$PGPORT" -U mastodon';
const RECIPE = String.raw`set -eu
ts=$(date +%Y%m%d-%H%M%S)
f="$BK/mastodon-$ts.dump"
pg_dump -Fc ${PG} -f "$f" mastodon_production
pg_restore --list "$f" > /dev/null
gpg --encrypt --recipient "$FPR" "$f"
rm "$f"
rsync -az "$BK/" "$MIRROR/"
`;
// The hand-built one-pass stream the issue names as the ideal: dump, compress, encrypt once, tee to two folders.
const IDEAL = String.raw`set -euo pipefail
rm -f "$IDEAL_A/set.dump.zst.gpg" "$IDEAL_B/set.dump.zst.gpg"
pg_dump -Fc -Z0 ${PG} mastodon_production | zstd -q -T2 -3 | gpg -q --batch -z 0 --encrypt --recipient "$FPR" | tee "$IDEAL_A/set.dump.zst.gpg" > "$IDEAL_B/set.dump.zst.gpg"
`;
// Its restore: decrypt and decompress to the one seekable file pg_restore -j needs, then pg_restore -j 2.
const IDEAL_RESTORE = String.raw`set -euo pipefail
gpg -q --batch -d "$IDEAL_A/set.dump.zst.gpg" | zstd -q -d -c > "$BK/ideal-restore.dump"
createdb ${PG} -T template0 "$DB"
pg_restore ${PG} -j 2 --no-owner --no-acl -d "$DB" "$BK/ideal-restore.dump"
rm "$BK/ideal-restore.dump"
`;
const RECIPE_RESTORE = String.raw`set -eu
g=$(ls "$MIRROR"/*.gpg | tail -n 1)
gpg -d "$g" > "$BK/restore.dump"
createdb ${PG} -T template0 "$DB"
pg_restore ${PG} --no-owner --no-acl -d "$DB" "$BK/restore.dump"
rm "$BK/restore.dump"
`;
const FLOOR = String.raw`exec pg_dump -Fc -Z0 ${PG} mastodon_production > /dev/null`;
const DUMP_BYTES = String.raw`set -eu
pg_dump -Fc ${PG} -f "$BK.ratio.dump" mastodon_production
wc -c < "$BK.ratio.dump"
rm "$BK.ratio.dump"
`;
// Formats (issue 11, "parallel where the cores are"): directory format dumped by 2 workers (PostgreSQL
// 15 compresses its files with gzip only) vs custom format through multi-threaded zstd.
const FORMATS = {
  fmtCustomZstd1: String.raw`set -euo pipefail; pg_dump -Fc -Z0 ${PG} mastodon_production | zstd -q -T0 -1 > "$FMT/x.dump.zst"`,
  fmtCustomZstd3: String.raw`set -euo pipefail; pg_dump -Fc -Z0 ${PG} mastodon_production | zstd -q -T0 -3 > "$FMT/x.dump.zst"`,
  fmtDirGzip6: String.raw`set -eu; pg_dump -Fd -j 2 ${PG} -f "$FMT/x.dir" mastodon_production`,
  fmtDirGzip1: String.raw`set -eu; pg_dump -Fd -j 2 -Z 1 ${PG} -f "$FMT/x.dir" mastodon_production`,
};

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

/**
 * The generator's output for one size, cached as a `pg_dump -Fc -Z1` file (plus a JSON sidecar)
 * under --cache, keyed by text, size and a hash of the built generator: generating 5 GB of
 * realistic data takes ~15 min on 2 cores, restoring the cached dump ~2 min.
 */
function generatorHash() {
  const h = createHash('sha256');
  for (const f of ['packages/sandbox/dist/mastodon-schema.js', 'packages/sandbox/dist/mastodon-realistic-data.js']) h.update(readFileSyncSafe(join(ROOT, f)));
  return h.digest('hex').slice(0, 12);
}
function readFileSyncSafe(p) {
  try {
    return readFileSync(p);
  } catch {
    return Buffer.alloc(0);
  }
}

async function prepareDatabase(db, scaleGB) {
  await pg.psql(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
  await pg.createDatabase(db, { owner: 'mastodon' });
  const key = `${TEXT}-${scaleGB}GB-${generatorHash()}`;
  const cacheDump = CACHE && join(CACHE, `${key}.dump`);
  const cacheMeta = CACHE && join(CACHE, `${key}.json`);
  const superEnv = { PATH: `${PGBIN}:${process.env.PATH}`, PGHOST: pg.socketDir, PGPORT: String(pg.port), PGUSER: pg.superuser, PGPASSWORD: '', PGPASSFILE: '/dev/null' };
  if (cacheDump && existsSync(cacheDump) && existsSync(cacheMeta)) {
    const meta = JSON.parse(await readFile(cacheMeta, 'utf8'));
    console.error(`\n== ${scaleGB} GB: restoring the cached ${TEXT} data (${cacheDump}, generated ${meta.generatedAt} in ${(meta.generateMs / 1000).toFixed(0)} s)…`);
    const started = Date.now();
    await measure(['pg_restore', '-j', '2', '-d', db, cacheDump], { env: superEnv });
    await pg.psql('ANALYZE;', db);
    await pg.psql('CHECKPOINT');
    console.error(`   restored in ${((Date.now() - started) / 1000).toFixed(0)} s`);
    // a restored copy has no dead space: it is smaller on disk than the generated database (generatedBytes)
    return { accounts: meta.accounts, generateMs: meta.generateMs, generatedBytes: meta.generatedBytes ?? null, fromCache: cacheDump, cacheRestoreMs: Date.now() - started };
  }
  await loadMastodonSchema(pg, db, { owner: 'mastodon' });
  console.error(`\n== ${scaleGB} GB: generating the Mastodon-shaped database (${TEXT} text)…`);
  const genStarted = Date.now();
  const { accounts } = await generateMastodonData(pg, db, { scale: { targetMB: scaleGB * 1024 }, owner: 'mastodon', text: TEXT });
  const generateMs = Date.now() - genStarted;
  await pg.psql('CHECKPOINT');
  if (cacheDump) {
    await mkdir(CACHE, { recursive: true });
    const tmp = `${cacheDump}.${process.pid}.tmp`;
    const started = Date.now();
    await measure(['pg_dump', '-Fc', '-Z1', '-f', tmp, db], { env: superEnv });
    await rename(tmp, cacheDump);
    const [[generatedBytes]] = await pg.psql(`SELECT pg_database_size('${db}')`);
    await writeFile(cacheMeta, JSON.stringify({ accounts, generateMs, generatedBytes: Number(generatedBytes), text: TEXT, scaleGB, generatedAt: new Date().toISOString() }) + '\n');
    console.error(`   cached as ${cacheDump} (${((Date.now() - started) / 1000).toFixed(0)} s)`);
  }
  return { accounts, generateMs, generatedBytes: null, fromCache: null };
}

/** Makes the bench server durable like a production one (the harness starts it with fsync off) once the data are in. */
async function productionDurability(on) {
  const v = on ? 'on' : 'off';
  await pg.psql(`ALTER SYSTEM SET fsync = ${v};\nALTER SYSTEM SET full_page_writes = ${v};\nALTER SYSTEM SET synchronous_commit = ${v};\nSELECT pg_reload_conf();`);
}

async function benchScale(scaleGB, RUNS) {
  const db = 'mastodon_production';
  await productionDurability(false);
  const prepared = await prepareDatabase(db, scaleGB);
  const { accounts, generateMs } = prepared;
  const [[dbBytes]] = await pg.psql(`SELECT pg_database_size('${db}')`);
  console.error(`   ${accounts} accounts, ${(Number(dbBytes) / 2 ** 20).toFixed(0)} MB on disk${prepared.fromCache ? '' : `, generated in ${(generateMs / 1000).toFixed(0)} s`}`);
  if (PREPARE_ONLY) return { scaleGB, accounts, databaseBytes: Number(dbBytes), prepareOnly: true, ...prepared };

  const dir = await mkdtemp(join(tmpRoot, `s${scaleGB}-`));
  const pgpass = join(dir, '.pgpass');
  await writeFile(pgpass, `127.0.0.1:${pg.port}:*:mastodon:${password.replace(/[:\\]/g, '\\$&')}\n`, { mode: 0o600 });
  const envFile = join(dir, '.env.production');
  await writeFile(envFile, `DB_HOST=127.0.0.1\nDB_PORT=${pg.port}\nDB_NAME=${db}\nDB_USER=mastodon\nDB_PASS="${password}"\n`, { mode: 0o600 });
  const configFile = join(dir, 'pipeline.config.yaml');
  await writeFile(configFile, configYaml({ envFile, gnupgHome: gpgHome.home, fingerprint: gpgHome.fingerprint }), { mode: 0o600 });
  // The same chain with a staging-only work dir: two durable copies, as many as the hand-built stream's two files.
  const configStagingFile = join(dir, 'pipeline-staging.config.yaml');
  await writeFile(configStagingFile, configYaml({ envFile, gnupgHome: gpgHome.home, fingerprint: gpgHome.fingerprint, suffix: '-staging', keepInWorkDir: false }), { mode: 0o600 });
  const configDirFile = join(dir, 'pipeline-dir.config.yaml');
  await writeFile(configDirFile, configYaml({ envFile, gnupgHome: gpgHome.home, fingerprint: gpgHome.fingerprint, dump: DIR_DUMP, suffix: '-dir' }), { mode: 0o600 });
  const recipeDir = join(dir, 'recipe');
  const recipeMirror = join(dir, 'recipe-mirror');
  const idealA = join(dir, 'ideal-a');
  const idealB = join(dir, 'ideal-b');
  const fmtDir = join(dir, 'fmt');
  for (const d of [recipeDir, recipeMirror, idealA, idealB, fmtDir]) await mkdir(d, { recursive: true });
  const shellEnv = { PATH: `${PGBIN}:${process.env.PATH}`, PGPASSFILE: pgpass, PGPORT: String(pg.port), GNUPGHOME: gpgHome.home, FPR: gpgHome.fingerprint, BK: recipeDir, MIRROR: recipeMirror, IDEAL_A: idealA, IDEAL_B: idealB, FMT: fmtDir };
  const bash = (script, env = {}, opts = {}) => measure(['bash', '-c', script], { env: { ...shellEnv, ...env }, ...opts });

  // How compressible the data are: pg_dump -Fc (its default gzip) bytes / pg_database_size. A real
  // Mastodon database gives ~0.15–0.25; the old simple data ~0.06. Not a timing: one run is enough.
  const ratioRun = await bash(DUMP_BYTES, {}, { stdout: 'capture' });
  const dumpBytes = Number(ratioRun.stdout.trim());
  const dumpRatio = round(dumpBytes / Number(dbBytes));
  console.error(`   dumpRatio ${dumpRatio}: pg_dump -Fc ${(dumpBytes / 2 ** 20).toFixed(1)} MB / database ${(Number(dbBytes) / 2 ** 20).toFixed(1)} MB (${(ratioRun.wallMs / 1000).toFixed(1)} s, CPU ${(ratioRun.cpuMs / 1000).toFixed(1)} s + server ${((ratioRun.serverCpuMs ?? 0) / 1000).toFixed(1)} s)`);
  const dataFacts = {
    text: TEXT,
    generateMs,
    fromCache: prepared.fromCache,
    generatedBytes: prepared.generatedBytes,
    dumpBytes,
    dumpRatio,
    dumpRatioDatabaseBytes: Number(dbBytes),
    dumpMs: round(ratioRun.wallMs, 0),
    // the custom format with pg_dump's own gzip -6, single run: the recipe's dump, a format contender too
    customGzip6: { wallMs: round(ratioRun.wallMs, 0), cpuMs: round(ratioRun.cpuMs, 0), serverCpuMs: round(ratioRun.serverCpuMs, 0), outputBytes: dumpBytes, loadAvgAtStart: ratioRun.loadAvgAtStart, cpuByProcessMs: ratioRun.cpuByProcessMs },
  };
  if (RATIO_ONLY) {
    await rm(dir, { recursive: true, force: true });
    return { scaleGB, accounts, databaseBytes: Number(dbBytes), ratioOnly: true, ...dataFacts };
  }
  if (flags.durability === 'production') await productionDurability(true);

  const pipelineArgs = (config, ...rest) => [process.execPath, '--import', PRELOAD, CLI, '--config', config, '--log-level', 'warn', ...rest];
  const nodeSelf = async (sample, rssFile) => {
    const self = JSON.parse(await readFile(rssFile, 'utf8'));
    sample.nodeMaxRssMB = self.maxRssKB / 1024;
    sample.nodeCpuMs = self.userMs + self.sysMs;
    sample.childCpuMs = sample.cpuMs - sample.nodeCpuMs;
  };
  const runPipeline = async (config, i, name) => {
    const rssFile = join(dir, `rss-${name}-${i}.json`);
    const b = await measure(pipelineArgs(config, '--json', 'run', 'nightly'), { env: { BENCH_RSS_FILE: rssFile }, stdout: 'capture' });
    const summary = JSON.parse(b.stdout);
    await nodeSelf(b, rssFile);
    b.outputBytes = summary.artifacts.reduce((sum, x) => sum + x.bytes, 0);
    b.artifacts = summary.artifacts.map((a) => ({ name: a.name, bytes: a.bytes, format: a.format, compression: a.compression }));
    // per-stage breakdown: the run summary's stage events (what stageFinish reported), offset from the run's start
    const t0 = Date.parse(summary.startedAt);
    b.stages = summary.stages.filter((x) => x.durationMs != null).map((x) => ({ key: `${x.plugin}/${x.hook}`, startMs: x.startedAt - t0, ms: x.durationMs }));
    for (const d of summary.destinations ?? []) b.stages.push({ key: `ship:${d.destination}`, ms: d.durationMs });
    b.summaryMs = summary.durationMs;
    delete b.stdout;
    return b;
  };
  // The restore contenders restore the latest set of `pipeline run`: one is made first when no pipeline round ran.
  let pipelineRan = false;
  const pipelineSet = async () => {
    if (!pipelineRan) await run.pipeline(0);
  };
  const dropDb = (name) => pg.psql(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);

  /** One run of each contender, by name; returns its sample. */
  const run = {
    recipe: async () => {
      await rm(recipeDir, { recursive: true, force: true });
      await rm(recipeMirror, { recursive: true, force: true });
      await mkdir(recipeDir, { recursive: true });
      await mkdir(recipeMirror, { recursive: true });
      const a = await bash(RECIPE);
      a.outputBytes = dirBytes(recipeMirror, (n) => n.endsWith('.gpg'));
      return a;
    },
    ideal: async () => {
      const a = await bash(IDEAL);
      a.outputBytes = statSync(join(idealA, 'set.dump.zst.gpg')).size;
      if (statSync(join(idealB, 'set.dump.zst.gpg')).size !== a.outputBytes) throw new Error('ideal: the two copies differ in size');
      return a;
    },
    pipeline: async (i) => {
      const b = await runPipeline(configFile, i, 'pipeline');
      pipelineRan = true;
      return b;
    },
    pipelineStaging: (i) => runPipeline(configStagingFile, i, 'pipelineStaging'),
    pipelineDir: (i) => runPipeline(configDirFile, i, 'pipelineDir'),
    floor: () => bash(FLOOR),
    recipeRestore: async (i) => {
      if (!existsSync(recipeMirror) || !readdirSync(recipeMirror).some((n) => n.endsWith('.gpg'))) await run.recipe();
      const d = await bash(RECIPE_RESTORE, { DB: `restored_recipe_${i}` });
      await dropDb(`restored_recipe_${i}`);
      return d;
    },
    idealRestore: async (i) => {
      if (!existsSync(join(idealA, 'set.dump.zst.gpg'))) await run.ideal();
      const d = await bash(IDEAL_RESTORE, { DB: `restored_ideal_${i}` });
      await dropDb(`restored_ideal_${i}`);
      return d;
    },
    pipelineRestore: async (i) => {
      await pipelineSet();
      const rssFile = join(dir, `rss-restore-${i}.json`);
      const pdb = `restored_pipeline_${i}`;
      const d = await measure(pipelineArgs(configFile, '--quiet', 'restore', 'latest', '--to', pdb, '--jobs', '2', '--from', 'local'), { env: { BENCH_RSS_FILE: rssFile } });
      await nodeSelf(d, rssFile);
      await dropDb(pdb);
      return d;
    },
    // The restore drill: verify the latest stored set with a test restore (into the throwaway cluster
    // where the verify stage makes one; before that lands, into a scratch database on the server).
    drill: async (i, extra = []) => {
      await pipelineSet();
      const rssFile = join(dir, `rss-drill-${i}.json`);
      const d = await measure(pipelineArgs(configFile, '--json', 'verify', 'latest', '--restore-test', '--from', 'local', '-o', 'verify.jobs=2', ...extra), { env: { BENCH_RSS_FILE: rssFile }, stdout: 'capture' });
      await nodeSelf(d, rssFile);
      try {
        d.verification = JSON.parse(d.stdout).artifacts?.map((a) => a.verification?.restoreTest) ?? null;
      } catch {
        d.verification = null;
      }
      delete d.stdout;
      return d;
    },
    drillIntoServer: (i) => run.drill(i, ['-o', DRILL_SERVER_OPTION]),
  };
  for (const [name, script] of Object.entries(FORMATS)) {
    run[name] = async () => {
      await rm(fmtDir, { recursive: true, force: true });
      await mkdir(fmtDir, { recursive: true });
      const f = await bash(script);
      f.outputBytes = dirBytes(fmtDir);
      await rm(fmtDir, { recursive: true, force: true });
      return f;
    };
  }

  const order = ALL_CONTENDERS.filter((c) => CONTENDERS.has(c));
  const samples = Object.fromEntries(order.map((c) => [c, []]));
  const errors = [];
  for (let i = 1; i <= RUNS; i++) {
    console.error(`   run ${i}/${RUNS} (load ${loadavg()[0].toFixed(2)})`);
    for (const name of order) {
      if (aborting) throw new Error('aborted');
      try {
        // No contender pays for the previous one's unwritten pages (the hand-built stream does not fsync).
        spawnSync('sync');
        const x = await run[name](i);
        samples[name].push(x);
        const cpu = `CPU ${(x.cpuMs / 1000).toFixed(2)} s + server ${((x.serverCpuMs ?? 0) / 1000).toFixed(2)} s`;
        const top = Object.entries(x.cpuByProcessMs ?? {}).slice(0, 5).map(([k, v]) => `${k} ${(v / 1000).toFixed(1)}`).join(' ');
        const extra = x.stages ? `; ${x.stages.map((st) => `${st.key} ${(st.ms / 1000).toFixed(1)}`).join(', ')}` : '';
        const rss = x.nodeMaxRssMB ? `, node RSS ${x.nodeMaxRssMB.toFixed(0)} MB` : '';
        const outB = x.outputBytes ? `, ${(x.outputBytes / 2 ** 20).toFixed(1)} MB` : '';
        console.error(`     ${name.padEnd(16)} ${(x.wallMs / 1000).toFixed(2)} s (${cpu}; load ${x.loadAvgAtStart}${outB}${rss}) [${top}]${extra}`);
      } catch (error) {
        const message = String(error?.message ?? error).slice(0, 2000);
        errors.push({ contender: name, run: i, error: message });
        console.error(`     ${name.padEnd(16)} FAILED: ${message.split('\n').slice(0, 6).join(' | ')}`);
      }
    }
  }

  let profile;
  if (flags.profile) profile = await profileRun(dir, configFile, scaleGB);

  const sumBy = (xs) => {
    const out = {};
    for (const x of xs) for (const [k, v] of Object.entries(x ?? {})) (out[k] ??= []).push(v);
    return Object.fromEntries(Object.entries(out).map(([k, v]) => [k, round(median(v), 0)]));
  };
  const agg = (xs) =>
    xs.length === 0
      ? null
      : {
          runs: xs.length,
          wallMs: round(median(xs.map((x) => x.wallMs)), 0),
          cpuMs: round(median(xs.map((x) => x.cpuMs)), 0),
          serverCpuMs: round(median(xs.map((x) => x.serverCpuMs)), 0),
          totalCpuMs: round(median(xs.map((x) => x.totalCpuMs)), 0),
          treeMaxRssMB: round(Math.max(...xs.map((x) => x.treeMaxRssMB)), 1),
          outputBytes: xs[0].outputBytes === undefined ? null : median(xs.map((x) => x.outputBytes)),
          // the pipeline's own time outside its run (node's start-up, config and plugin loading, exit): wall − the summary's durationMs
          ...(xs[0].summaryMs != null ? { outsideRunMs: round(median(xs.map((x) => x.wallMs - x.summaryMs)), 0) } : {}),
          ...(xs[0].nodeMaxRssMB ? { nodePeakRssMB: round(Math.max(...xs.map((x) => x.nodeMaxRssMB)), 1), nodeCpuMs: round(median(xs.map((x) => x.nodeCpuMs)), 0), childCpuMs: round(median(xs.map((x) => x.childCpuMs)), 0) } : {}),
          cpuByProcessMs: sumBy(xs.map((x) => x.cpuByProcessMs)),
          ...(Object.keys(xs[0].nodeThreadsCpuMs ?? {}).length ? { nodeThreadsCpuMs: sumBy(xs.map((x) => x.nodeThreadsCpuMs)) } : {}),
          allWallMs: xs.map((x) => round(x.wallMs, 0)),
          allCpuMs: xs.map((x) => round(x.cpuMs, 0)),
          allServerCpuMs: xs.map((x) => round(x.serverCpuMs, 0)),
          loadAvgAtStart: xs.map((x) => x.loadAvgAtStart),
          ...(xs[0].artifacts ? { artifacts: xs[0].artifacts } : {}),
          ...(xs[0].verification !== undefined ? { verification: xs.map((x) => x.verification) } : {}),
        };
  const res = Object.fromEntries(Object.entries(samples).map(([k, xs]) => [k, agg(xs)]));
  for (const name of ['pipeline', 'pipelineStaging', 'pipelineDir']) {
    const p = samples[name];
    if (!p?.length) continue;
    const stages = {};
    for (const key of [...new Set(p.flatMap((x) => x.stages.map((st) => st.key)))]) {
      const of = p.map((x) => x.stages.find((y) => y.key === key)).filter(Boolean);
      stages[key] = { startMs: round(median(of.map((y) => y.startMs)), 0), ms: round(median(of.map((y) => y.ms)), 0) };
    }
    res[name].stages = stages;
  }
  const [[dbBytesAfter]] = await pg.psql(`SELECT pg_database_size('${db}')`);
  await rm(dir, { recursive: true, force: true });
  if (flags.durability === 'production') await productionDurability(false);
  const w = (k) => res[k]?.wallMs;
  const c = (k) => res[k]?.cpuMs;
  const t = (k) => res[k]?.totalCpuMs;
  const keys = {
    pipelineVsIdeal: ratio(w('pipeline'), w('ideal')),
    pipelineVsRecipe: ratio(w('pipeline'), w('recipe')),
    outputBytesVsIdeal: ratio(res.pipeline?.outputBytes, res.ideal?.outputBytes),
    restoreVsIdeal: ratio(w('pipelineRestore'), w('idealRestore')),
    drillVsRestore: ratio(w('drill'), w('pipelineRestore')), // the drill (throwaway cluster by default) / pipeline restore into the server
    drillVsDrillIntoServer: ratio(w('drill'), w('drillIntoServer')), // the same drill with restoreInto: server
    pipelinePeakRssMB: res.pipeline?.nodePeakRssMB ?? null,
    // keepInWorkDir: false (the work dir only stages; two durable copies like the hand-built stream's two files)
    pipelineStagingVsIdeal: ratio(w('pipelineStaging'), w('ideal')),
    pipelineStagingVsRecipe: ratio(w('pipelineStaging'), w('recipe')),
    dumpRatio,
  };
  const cpuKeys = {
    // the same ratios in CPU: tree user+sys (the robust figure on a shared machine), and tree + bench server
    pipelineVsIdeal: ratio(c('pipeline'), c('ideal')),
    pipelineVsRecipe: ratio(c('pipeline'), c('recipe')),
    restoreVsIdeal: ratio(c('pipelineRestore'), c('idealRestore')),
    drillVsRestore: ratio(t('drill'), t('pipelineRestore')), // the drill's server is in its tree (subreaper), the restore's is the bench server
    drillVsDrillIntoServer: ratio(t('drill'), t('drillIntoServer')),
    pipelineVsIdealWithServer: ratio(t('pipeline'), t('ideal')),
    pipelineStagingVsIdeal: ratio(c('pipelineStaging'), c('ideal')),
    restoreVsIdealWithServer: ratio(t('pipelineRestore'), t('idealRestore')),
  };
  const targets = {
    pipelineVsIdeal: 1.2,
    pipelineVsRecipe: 0.3,
    outputBytesVsIdeal: 1.05,
    restoreVsIdeal: 1.0,
    drillVsRestore: 0.8,
    pipelinePeakRssMB: 150,
  };
  const met = Object.fromEntries(Object.entries(targets).map(([k, v]) => [k, keys[k] == null ? null : keys[k] <= v]));
  return {
    scaleGB,
    accounts,
    databaseBytes: Number(dbBytesAfter),
    ...dataFacts,
    runs: RUNS,
    durability: flags.durability,
    ...keys,
    cpuRatios: cpuKeys,
    targets,
    met,
    pipelineStages: res.pipeline?.stages ?? null,
    pipelineStagingStages: res.pipelineStaging?.stages ?? null,
    // older keys, kept for comparison with earlier results files
    pipelineVsFloor: ratio(w('pipeline'), w('floor')),
    restoreVsRecipe: ratio(w('pipelineRestore'), w('recipeRestore')),
    outputBytesVsRecipe: ratio(res.pipeline?.outputBytes, res.recipe?.outputBytes),
    cpuVsRecipe: ratio(c('pipeline'), c('recipe')),
    contenders: res,
    errors,
    profile,
  };
}

/** One extra pipeline run with --cpu-prof (node's own CPU) and /usr/bin/time -v (the tree). */
async function profileRun(dir, configFile, scaleGB) {
  const profDir = join(flags.out, 'profiles', `${scaleGB}GB${flags.tag ? `-${flags.tag}` : ''}`);
  await rm(profDir, { recursive: true, force: true });
  await mkdir(profDir, { recursive: true });
  const r = await measure([process.execPath, '--cpu-prof', '--cpu-prof-dir', profDir, CLI, '--config', configFile, '--log-level', 'warn', '--json', 'run', 'nightly'], {
    stdout: 'capture',
    timeArgs: ['-v'],
  });
  await writeFile(join(profDir, 'time-v.txt'), r.timeText);
  // and one restore of the set that run made (node's own CPU on the way back)
  const restoreDir = join(profDir, 'restore');
  await mkdir(restoreDir, { recursive: true });
  const db = 'restored_profile';
  const d = await measure([process.execPath, '--cpu-prof', '--cpu-prof-dir', restoreDir, CLI, '--config', configFile, '--log-level', 'warn', '--quiet', 'restore', 'latest', '--to', db, '--jobs', '2', '--from', 'local'], { timeArgs: ['-v'] });
  await writeFile(join(restoreDir, 'time-v.txt'), d.timeText);
  await pg.psql(`DROP DATABASE IF EXISTS ${db} WITH (FORCE)`);
  console.error(`   profiles written to ${profDir} (restore: ${restoreDir})`);
  const timeV = (text) => text.split('\n').filter((l) => /Elapsed|User time|System time|Maximum resident|context switches|File system/.test(l)).map((l) => l.trim());
  return { dir: profDir, timeV: timeV(r.timeText), restore: { dir: restoreDir, timeV: timeV(d.timeText), top: topOfProfile(restoreDir) } };
}

/** The 15 functions with the most self time in the .cpuprofile files of a folder, in ms. */
function topOfProfile(folder) {
  const self = new Map();
  for (const name of readdirSync(folder).filter((n) => n.endsWith('.cpuprofile'))) {
    const { nodes, samples, timeDeltas } = JSON.parse(readFileSync(join(folder, name), 'utf8'));
    const byId = new Map(nodes.map((n) => [n.id, n]));
    samples.forEach((id, i) => {
      const { functionName, url, lineNumber } = byId.get(id).callFrame;
      const key = `${functionName || '(anonymous)'} ${url.replace(/^.*node_modules\//, '').replace(/^file:\/\/.*\/(packages|plugins)\//, '$1/')}:${lineNumber + 1}`;
      self.set(key, (self.get(key) ?? 0) + (timeDeltas[i] ?? 0) / 1000);
    });
  }
  return [...self].sort((a, b) => b[1] - a[1]).slice(0, 15).map(([k, ms]) => `${ms.toFixed(0)} ms ${k}`);
}

// ---------------------------------------------------------------- table
const LABELS = {
  recipe: 'recipe (pg_dump -Fc, --list, gpg, rsync -az)',
  ideal: 'hand-built stream (-Z0 | zstd -T2 -3 | gpg | tee)',
  pipeline: 'pipeline run',
  pipelineStaging: 'pipeline run, keepInWorkDir: false',
  floor: 'floor (pg_dump -Fc -Z0 > /dev/null)',
  recipeRestore: 'restore: recipe (gpg -d, pg_restore)',
  idealRestore: 'restore: hand-built (gpg -d | zstd -d, -j 2)',
  pipelineRestore: 'restore: pipeline restore --jobs 2',
  drill: 'drill: pipeline verify --restore-test',
  drillIntoServer: `drill into the server (-o ${DRILL_SERVER_OPTION})`,
  fmtCustomZstd1: 'format: custom -Z0 | zstd -T0 -1',
  fmtCustomZstd3: 'format: custom -Z0 | zstd -T0 -3',
  fmtDirGzip6: 'format: directory -j 2 (gzip 6)',
  fmtDirGzip1: 'format: directory -j 2 -Z 1 (gzip 1)',
  pipelineDir: 'pipeline run, directory -j 2 gzip',
};
function printTable(results, cold) {
  const s = (ms) => (ms == null ? '-' : `${(ms / 1000).toFixed(2)} s`);
  const mb = (b) => (b == null ? '-' : `${(b / 2 ** 20).toFixed(1)} MB`);
  const lines = [];
  lines.push(`Node ${machine.node}, ${machine.cores} cores (${machine.cpuModel}), ${machine.tools.pg_dump}, ${machine.tools.gpg}, ${machine.tools.zstd}; load average now ${loadavg().map((x) => x.toFixed(1)).join(' ')}`);
  for (const r of results) {
    lines.push('');
    const rat = `dumpRatio ${r.dumpRatio} (pg_dump -Fc ${mb(r.dumpBytes)} / database; real instances ~0.15–0.25), ${r.text} text`;
    if (r.ratioOnly) {
      lines.push(`database ${r.scaleGB} GB (${mb(r.databaseBytes)} on disk, ${r.accounts} accounts): ${rat}`);
      continue;
    }
    lines.push(`database ${r.scaleGB} GB (${mb(r.databaseBytes)} on disk), median of ${r.runs}; ${rat}; server durability ${r.durability}`);
    const rows = [['', 'wall', 'CPU tree', '+ server', 'output', 'peak RSS', 'load at start']];
    for (const [k, v] of Object.entries(r.contenders)) {
      if (!v) continue;
      rows.push([LABELS[k] ?? k, s(v.wallMs), `${s(v.cpuMs)}${v.nodeCpuMs != null ? ` (node ${s(v.nodeCpuMs)})` : ''}`, s(v.serverCpuMs), mb(v.outputBytes), v.nodePeakRssMB ? `node ${v.nodePeakRssMB} MB` : `${v.treeMaxRssMB} MB`, v.loadAvgAtStart.join(' ')]);
    }
    const g = r.customGzip6;
    rows.push(['format: custom, pg_dump gzip 6 (1 run)', s(g.wallMs), s(g.cpuMs), s(g.serverCpuMs), mb(g.outputBytes), '-', String(g.loadAvgAtStart)]);
    const w = rows[0].map((_, c) => Math.max(...rows.map((row) => row[c].length)));
    for (const row of rows) lines.push('  ' + row.map((cell, c) => cell.padEnd(w[c])).join('  '));
    lines.push(`  ${Object.entries(r.targets).map(([k, v]) => `${k} ${r[k]} (≤ ${v}${r.met[k] == null ? '' : r.met[k] ? ', met' : ', missed'})`).join('   ')}   dumpRatio ${r.dumpRatio}`);
    lines.push(`  in CPU: ${Object.entries(r.cpuRatios).map(([k, v]) => `${k} ${v}`).join('   ')}`);
    if (r.pipelineStages) lines.push(`  pipeline stages (start +ms, duration): ${Object.entries(r.pipelineStages).map(([k, v]) => `${k} ${v.startMs != null ? `+${v.startMs} ` : ''}${s(v.ms)}`).join(', ')}`);
    if (r.pipelineStagingStages) lines.push(`  pipeline (keepInWorkDir: false) stages: ${Object.entries(r.pipelineStagingStages).map(([k, v]) => `${k} ${v.startMs != null ? `+${v.startMs} ` : ''}${s(v.ms)}`).join(', ')}`);
    if (r.pipelineStagingVsIdeal != null) lines.push(`  keepInWorkDir: false: pipelineStagingVsIdeal ${r.pipelineStagingVsIdeal} (CPU ${r.cpuRatios.pipelineStagingVsIdeal}), pipelineStagingVsRecipe ${r.pipelineStagingVsRecipe}`);
    for (const [k, v] of Object.entries(r.contenders)) if (v) lines.push(`  CPU by process, ${k}: ${Object.entries(v.cpuByProcessMs).map(([p, ms]) => `${p} ${s(ms)}`).join(', ')}`);
    for (const [k, v] of Object.entries(r.contenders)) if (v?.nodeThreadsCpuMs) lines.push(`  node's CPU by thread, ${k}: ${Object.entries(v.nodeThreadsCpuMs).map(([p, ms]) => `${p} ${s(ms)}`).join(', ')}`);
    for (const e of r.errors) lines.push(`  FAILED ${e.contender} (run ${e.run}): ${e.error.split('\n')[0]}`);
  }
  if (cold) lines.push('', `cold start (median of ${cold.runs}, Node ${machine.node}): pipeline --help ${cold.helpMs} ms (≤ 250), pipeline validate ${cold.validateMs} ms (≤ 400)`);
  process.stdout.write(lines.join('\n') + '\n');
}

// ---------------------------------------------------------------- optional suites (modules other helpers own)
/**
 * `--suite physical|media|all`: bench/physical.js (pgBackRest) and bench/media.js (incremental media)
 * are imported only when they exist. Such a module exports `run(ctx)` (or a default function)
 * returning a JSON-able result; ctx gives this harness's pieces so a suite needs nothing else.
 */
async function runSuite(name) {
  const file = join(ROOT, 'bench', `${name}.js`);
  if (!existsSync(file)) {
    console.error(`suite ${name}: bench/${name}.js does not exist (yet); skipped`);
    return undefined;
  }
  const mod = await import(pathToFileURL(file).href);
  const fn = mod.run ?? mod.default;
  if (typeof fn !== 'function') throw new Error(`bench/${name}.js exports no run(ctx) function`);
  console.error(`\n== suite ${name} (bench/${name}.js)`);
  return fn({ argv: process.argv.slice(2), flags, measure, median, round, tmpRoot, pg, gpgHome, password, machine, outDir: flags.out, root: ROOT, cleanups, loadavg });
}

/** The keys by size, and whether node's peak RSS stayed flat from the smallest size to the largest. */
async function writeSummary(results, file, extra = {}) {
  const rss = Object.fromEntries(results.map((r) => [`${r.scaleGB}GB`, r.pipelinePeakRssMB]));
  const vals = Object.values(rss).filter((x) => x != null);
  const flat = vals.length > 1 ? round(Math.max(...vals) / Math.min(...vals)) : null;
  const bySize = Object.fromEntries(
    results.map((r) => [
      `${r.scaleGB}GB`,
      { ...Object.fromEntries(Object.keys(r.targets).concat('dumpRatio', 'drillVsDrillIntoServer', 'pipelineStagingVsIdeal', 'pipelineStagingVsRecipe').map((k) => [k, r[k]])), cpuRatios: r.cpuRatios, met: r.met, pipelineStages: r.pipelineStages, runs: r.runs, gitHead: r.machine?.gitHead ?? machine.gitHead, errors: r.errors.length },
    ]),
  );
  await writeFile(file, JSON.stringify({ date: new Date().toISOString(), ...extra, machine, noise: NOISE, pipelinePeakRssMBBySize: rss, pipelinePeakRssLargestOverSmallest: flat, bySize }, null, 2) + '\n');
  console.error(`   wrote ${file}`);
  console.error(`   node peak RSS by size: ${JSON.stringify(rss)} (largest / smallest ${flat})`);
}

// ---------------------------------------------------------------- main
try {
  if (flags.summarize) {
    // --summarize A.json,B.json: the summary of per-size results files written by separate runs
    const files = flags.summarize.split(',');
    const results = await Promise.all(files.map(async (f) => JSON.parse(await readFile(f, 'utf8'))));
    await writeSummary(results, join(flags.out, `${new Date().toISOString().slice(0, 10)}-summary${flags.tag ? `-${flags.tag}` : ''}.json`), { from: files.map((f) => f.replace(`${ROOT}/`, '')) });
    await cleanupAll();
    process.exit(0);
  }
  await mkdir(flags.out, { recursive: true });
  const date = new Date().toISOString().slice(0, 10);
  const tag = flags.tag ? `-${flags.tag}` : '';
  for (const suite of SUITES) {
    if (suite === 'db') continue;
    const result = await runSuite(suite);
    if (result !== undefined) {
      const file = join(flags.out, `${date}-${suite}${tag}.json`);
      await writeFile(file, JSON.stringify({ date: new Date().toISOString(), machine, loadAvg: loadavg(), ...result }, null, 2) + '\n');
      console.error(`   wrote ${file}`);
    }
  }
  if (SUITES.includes('db')) {
    // a config for the cold-start measurements (validate reads and checks it; no database touched)
    const coldDir = await mkdtemp(join(tmpRoot, 'cold-'));
    const coldEnv = join(coldDir, '.env.production');
    await writeFile(coldEnv, `DB_HOST=127.0.0.1\nDB_PORT=${pg.port}\nDB_NAME=x\nDB_USER=mastodon\nDB_PASS=""\n`, { mode: 0o600 });
    const coldConfig = join(coldDir, 'pipeline.config.yaml');
    await writeFile(coldConfig, configYaml({ envFile: coldEnv, gnupgHome: gpgHome.home, fingerprint: gpgHome.fingerprint }));
    let cold;
    if (!RATIO_ONLY && !PREPARE_ONLY && COLD_RUNS > 0) {
      console.error(`cold start: ${COLD_RUNS}× pipeline --help and pipeline validate…`);
      cold = await coldStart(coldConfig);
      console.error(`   --help ${cold.helpMs} ms, validate ${cold.validateMs} ms`);
    }
    const results = [];
    const startedAt = new Date().toISOString();
    const loadAvgAtStart = loadavg();
    for (const [index, scale] of scales.entries()) {
      const r = await benchScale(scale, runsFor(index));
      if (PREPARE_ONLY) continue;
      results.push(r);
      const file = join(flags.out, `${date}-${scale}${RATIO_ONLY ? '-ratio' : ''}${tag}.json`);
      await writeFile(file, JSON.stringify({ date: new Date().toISOString(), startedAt, loadAvgAtStart, machine, noise: NOISE, coldStart: cold, loadAvg: loadavg(), ...r }, null, 2) + '\n');
      console.error(`   wrote ${file}`);
    }
    if (results.length > 1 && !RATIO_ONLY) await writeSummary(results, join(flags.out, `${date}-summary${tag}.json`), { startedAt, loadAvgAtStart });
    if (results.length) printTable(results, cold);
  }
} catch (error) {
  if (!aborting) {
    console.error(error);
    process.exitCode = 1;
  }
} finally {
  if (!aborting) await cleanupAll();
}
