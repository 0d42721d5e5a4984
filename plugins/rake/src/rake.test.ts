import { execFileSync } from 'node:child_process';
import { mkdir, mkdtemp, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createLogger, isPipelineError, resolveConfig, Runner, type PipelineError } from '@backup-pipeline/core';
import { beforeEach, describe, expect, it } from 'vitest';

const here = dirname(fileURLToPath(import.meta.url));
const pluginEntry = resolve(here, '../dist/index.js');
const tmpRoot = resolve(here, '../../../.vitest-tmp');
let dir: string;
let appDir: string;

/** A site-provided task, as upstream Mastodon has none: writes a gzip "dump" into $BACKUP_OUTPUT_DIR. */
const RAKEFILE = `
require 'zlib'
namespace :mastodon do
  namespace :backup do
    desc 'Site-provided instance backup'
    task :create do
      raise 'RAILS_ENV must be production' unless ENV['RAILS_ENV'] == 'production'
      out = ENV.fetch('BACKUP_OUTPUT_DIR')
      Zlib::GzipWriter.open(File.join(out, 'mastodon_production.sql.gz')) do |gz|
        gz.write("-- PostgreSQL database dump\\nCOPY public.accounts (id, username) FROM stdin;\\n1\\tadmin\\n\\\\.\\n")
      end
      File.write(File.join(out, 'rake.log'), "done in #{Dir.pwd}\\n")
    end
  end
end

namespace :site do
  task :broken do
    $stderr.puts 'PG::ConnectionBad: connection to server on socket "/var/run/postgresql/.s.PGSQL.5432" failed'
    abort 'backup failed'
  end
  task :nothing do
  end
end
`;

beforeEach(async () => {
  await mkdir(tmpRoot, { recursive: true });
  dir = await mkdtemp(join(tmpRoot, 'rake-'));
  appDir = join(dir, 'live');
  await mkdir(appDir);
  await writeFile(join(appDir, 'Rakefile'), RAKEFILE);
  return () => rm(dir, { recursive: true, force: true });
});

async function run(stage: Record<string, unknown>) {
  const config = await resolveConfig(join(dir, 'pipeline.config.json'), {
    workDir: join(dir, 'work'),
    pipelines: { nightly: { source: 'mastodon', stages: [{ use: pluginEntry, command: ['rake'], appDir, ...stage }] } },
  });
  const log = await createLogger({ secrets: config.secrets, level: 'silent' });
  const result = await new Runner(config, log).run('nightly');
  return { ...result, setDir: join(dir, 'work', result.summary.setId) };
}

const failure = (p: Promise<unknown>) => p.then(() => expect.unreachable('the run should fail'), (e: unknown) => (isPipelineError(e) ? e : expect.unreachable(String(e))) as PipelineError);

describe('rake stage (real rake)', () => {
  it('runs the site task in appDir with RAILS_ENV=production and collects its dump', async () => {
    const { manifest, setDir } = await run({ outputs: ['*.sql.gz'] });
    expect(manifest!.artifacts).toHaveLength(1);
    const [artifact] = manifest!.artifacts;
    expect(artifact).toMatchObject({ name: 'mastodon_production.sql.gz', kind: 'rake', format: 'file', compression: 'gzip' });
    expect(artifact!.meta.command).toBe('rake mastodon:backup:create');
    const sql = execFileSync('gzip', ['-dc', join(setDir, 'mastodon_production.sql.gz')], { encoding: 'utf8' });
    expect(sql).toContain('COPY public.accounts');
    expect((await stat(join(setDir, artifact!.name))).mode & 0o777).toBe(0o600);
  });

  it('collects every output by default', async () => {
    const { manifest } = await run({});
    expect(manifest!.artifacts.map((a) => a.name)).toEqual(['mastodon_production.sql.gz', 'rake.log']);
  });

  it('a failing task fails the run with EXEC_FAILED, the stderr tail, and the rake tag; nothing is kept', async () => {
    const error = await failure(run({ task: 'site:broken' }));
    expect(error.code).toBe('EXEC_FAILED');
    expect(error.describe()).toMatch(/^\[rake → produce\] EXEC_FAILED: rake exited with code 1: /);
    expect(error.message).toContain('backup failed');
    expect(String(error.details?.stderr)).toContain('PG::ConnectionBad');
    expect((await readdir(join(dir, 'work'))).filter((n) => !n.startsWith('.'))).toEqual([]);
  });

  it('a task that writes nothing fails with COMMAND_NO_OUTPUT', async () => {
    const error = await failure(run({ task: 'site:nothing' }));
    expect(error.code).toBe('COMMAND_NO_OUTPUT');
    expect(error.plugin).toBe('rake');
  });

  it('an unknown task (like upstream Mastodon’s missing mastodon:backup:create) fails with rake’s own message', async () => {
    await writeFile(join(appDir, 'Rakefile'), 'task :other do end\n');
    const error = await failure(run({}));
    expect(error.code).toBe('EXEC_FAILED');
    expect(error.message).toMatch(/Don't know how to build task 'mastodon:backup:create'/);
  });

  it('a missing appDir fails preflight with COMMAND_DIR_MISSING', async () => {
    const error = await failure(run({ appDir: join(dir, 'no-live') }));
    expect(error.code).toBe('COMMAND_DIR_MISSING');
  });
});
