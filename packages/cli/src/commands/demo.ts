/**
 * `pipeline demo`: the README's first command. A throwaway PostgreSQL with a Mastodon-shaped
 * database, backed up end to end with the default chain into local folders, then the newest set
 * restored into a scratch database and compared table by table with the source.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import type { Command } from 'commander';
import { exec, loadConfig, PipelineError, Runner, type RunSummary } from '@backup-pipeline/core';
import { createGpgHome, findServerBinDir, generateMastodonData, loadMastodonSchema, mastodonEnvText, startPostgres, tableChecksums, tableRowCounts, type GpgHome, type PostgresServer } from '@backup-pipeline/sandbox';
import { CLI_DIR } from '../builtins.js';
import { formatBytes, formatDuration, green, output, red, table } from '../output.js';
import { progressReporter } from '../progress.js';
import { globalOptions, openLogger } from '../session.js';
import { withSignals } from '../signals.js';

/** Programs the demo runs besides PostgreSQL's (found with the server), and the Debian package of each. */
const TOOLS: Array<[string, string]> = [
  ['gpg', 'gnupg'],
  ['zstd', 'zstd'],
  ['rsync', 'rsync'],
  ['tar', 'tar'],
];

async function checkTools(): Promise<void> {
  const missing: string[] = [];
  await findServerBinDir().catch(() => missing.push('initdb/pg_ctl (apt-get install postgresql)'));
  for (const [tool, pkg] of TOOLS) {
    await exec(tool, ['--version']).catch(() => missing.push(`${tool} (apt-get install ${pkg})`));
  }
  if (missing.length > 0) {
    throw new PipelineError('DEMO_TOOLS_MISSING', `the demo needs programs that are not installed: ${missing.join(', ')}`, {
      hint: `apt-get install postgresql gnupg zstd rsync`,
    });
  }
}

export function demoConfig(options: { envFile: string; gnupgHome: string; fingerprint: string }): string {
  return `# The demo's config: the default Mastodon chain, with two local destinations.
workDir: ./work
timezone: UTC
destinations:
  local:                      # a plain folder
    use: local
    path: ./local
  mirror:                     # rsync to a local path (an offsite host would be user@host:/path)
    use: rsync
    target: ./mirror
pipelines:
  nightly:
    source: mastodon
    stages:
      - use: credentials      # read DB_* from Mastodon's .env.production
        envFile: ${options.envFile}
      - use: pg-dump          # custom format, zstd -T0, row counts in the dump's snapshot
        lockWaitTimeout: 1min
      - use: verify           # pg_restore --list, then a real restore into a scratch database
        restoreTest: true
        jobs: 2
      - use: gpg              # encrypt to the demo key (-z 0: the dump is already compressed)
        gnupgHome: ${options.gnupgHome}
        recipients: [${options.fingerprint}]
      - use: retention
        keepLast: 3
        keepDaily: 7
    destinations: [local, mirror]
`;
}

export default async function demo(command: Command, flags: { dir: string; keep?: boolean; scale: string }): Promise<number> {
  const options = globalOptions(command);
  const out = (line: string) => options.quiet || output.stdout(line + '\n');
  await checkTools();
  const dir = resolve(flags.dir);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  let pg: PostgresServer | undefined;
  let gpg: GpgHome | undefined;
  return withSignals(async (signal) => {
    try {
      const scale = flags.scale === 'tiny' || flags.scale === 'medium' ? flags.scale : 'small';
      out(`1/5 starting a throwaway PostgreSQL and a Mastodon-shaped database (${scale})…`);
      pg = await startPostgres();
      const password = `demo:${randomBytes(9).toString('base64url')}#"'\\`;
      await pg.createRole('mastodon', password, { login: true, createdb: true });
      await pg.createDatabase('mastodon_production', { owner: 'mastodon' });
      await loadMastodonSchema(pg, 'mastodon_production', { owner: 'mastodon' });
      await generateMastodonData(pg, 'mastodon_production', { scale, owner: 'mastodon' });
      signal.throwIfAborted();

      out('2/5 writing a demo .env.production, a gpg key and the config…');
      gpg = await createGpgHome();
      const envFile = join(dir, '.env.production');
      await writeFile(envFile, mastodonEnvText({ host: pg.host, port: pg.port, database: 'mastodon_production', user: 'mastodon', password }), { mode: 0o600 });
      const configFile = join(dir, 'pipeline.config.yaml');
      await writeFile(configFile, demoConfig({ envFile, gnupgHome: gpg.home, fingerprint: gpg.fingerprint }), { mode: 0o600 });

      out('3/5 running the pipeline: credentials → pg_dump → verify (restore test) → gpg → local + mirror → retention…');
      const config = await loadConfig({ file: configFile, pluginSearchDirs: [CLI_DIR] });
      config.secrets.add(password);
      const log = await openLogger(options.logLevel === 'info' ? { ...options, logLevel: 'warn' } : options, config.secrets);
      const runner = new Runner(config, log);
      const { summary } = await runner.run('nightly', { signal, observe: progressReporter({ quiet: options.quiet || options.json, log }) });
      output.clearStatus();

      out('4/5 restoring the newest set from "mirror" into mastodon_restored…');
      const started = Date.now();
      // The same path as `pipeline restore latest --from mirror --to mastodon_restored`.
      await runner.restore('nightly', { set: 'latest', from: 'mirror', database: 'mastodon_restored', jobs: 2 }, { signal, stageOptions: { gnupgHome: gpg.home } });
      const restoreMs = Date.now() - started;

      out('5/5 comparing every table of the restored database with the source…');
      const [source, restored, counts] = await Promise.all([tableChecksums(pg, 'mastodon_production'), tableChecksums(pg, 'mastodon_restored'), tableRowCounts(pg, 'mastodon_production')]);
      const rows = [['table', 'rows', 'content']];
      let same = true;
      for (const name of Object.keys(source).sort()) {
        const match = source[name] === restored[name];
        same &&= match;
        rows.push([name, String(counts[name] ?? '?'), match ? 'identical' : 'DIFFERENT']);
      }
      if (options.json) {
        output.json({ ok: same, summary, restoreMs, tables: rows.slice(1) });
      } else {
        printDemoSummary(summary, restoreMs, dir);
        out(table(rows).trimEnd());
        out(same ? `${green('ok')} the restored database is identical to the source, table by table.` : `${red('error')} the restored database differs from the source!`);
      }
      if (flags.keep) {
        out(`\nThe cluster keeps running (--keep): psql -h ${pg.socketDir} -p ${pg.port} -U ${pg.superuser} mastodon_production`);
        out(`Stop it with: pg_ctl stop -D <its data dir> (or just end this process: Ctrl-C).`);
        await new Promise<void>((r) => signal.addEventListener('abort', () => r(), { once: true }));
      }
      if (!same) throw new PipelineError('DEMO_MISMATCH', 'the restored database differs from the source');
      return 0;
    } finally {
      await pg?.stop();
      await gpg?.cleanup();
    }
  }, options);
}

function printDemoSummary(summary: RunSummary, restoreMs: number, dir: string): void {
  const w = (s: string) => output.stdout(s + '\n');
  w('');
  w(`set ${summary.setId}, backed up in ${formatDuration(summary.durationMs)}, restored in ${formatDuration(restoreMs)}`);
  for (const a of summary.artifacts) w(`  ${a.name}: ${formatBytes(a.bytes)}${a.encrypted ? ', encrypted' : ''}, sha256 ${a.sha256.slice(0, 16)}…`);
  for (const d of summary.destinations) w(`  → ${d.destination}: ${d.ok ? 'complete' : 'FAILED'} (${formatDuration(d.durationMs)})`);
  const stages = summary.stages.filter((s) => ['produce', 'verify', 'transform', 'retain'].includes(s.hook));
  w(`  stages: ${stages.map((s) => `${s.plugin} ${formatDuration(s.durationMs ?? 0)}`).join(', ')}`);
  w(`  files: ${dir}/local, ${dir}/mirror (config: ${dir}/pipeline.config.yaml)`);
  w('');
}
