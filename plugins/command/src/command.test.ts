import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, utimes, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createLogger, isPipelineError, resolveConfig, Runner, type PipelineError } from '@backup-pipeline/core';
import { beforeEach, describe, expect, it } from 'vitest';
import { compressionOf, globToRegExp } from './index.js';

const here = dirname(fileURLToPath(import.meta.url));
const pluginEntry = resolve(here, '../dist/index.js');
const tmpRoot = resolve(here, '../../../.vitest-tmp');
let dir: string;

beforeEach(async () => {
  await mkdir(tmpRoot, { recursive: true });
  dir = await mkdtemp(join(tmpRoot, 'command-'));
  return () => rm(dir, { recursive: true, force: true });
});

async function run(stage: Record<string, unknown>, after: Array<Record<string, unknown>> = []) {
  const config = await resolveConfig(join(dir, 'pipeline.config.json'), {
    workDir: join(dir, 'work'),
    pipelines: { nightly: { source: 'site', stages: [{ use: pluginEntry, ...stage }, ...after] } },
  });
  const lines: string[] = [];
  const log = await createLogger({ secrets: config.secrets, level: 'debug', format: 'json', write: (l) => void lines.push(l) });
  const result = await new Runner(config, log).run('nightly');
  return { ...result, lines, setDir: join(dir, 'work', result.summary.setId) };
}

const failure = (p: Promise<unknown>) => p.then(() => expect.unreachable('the run should fail'), (e: unknown) => (isPipelineError(e) ? e : expect.unreachable(String(e))) as PipelineError);

describe('command stage', () => {
  it('runs an argv in cwd with env and moves the matching outputs into the set (0600, sha256, compression by extension)', async () => {
    const cwd = join(dir, 'app');
    await mkdir(cwd);
    const script = [
      'set -e',
      'test "$(pwd)" = "$EXPECT_CWD"',
      'printf "%s" "$GREETING" > "$BACKUP_OUTPUT_DIR/db dump.sql.gz"',
      'mkdir -p "$BACKUP_OUTPUT_DIR/sub"',
      'printf zst > "$BACKUP_OUTPUT_DIR/sub/media.tar.zst"',
      'printf no > "$BACKUP_OUTPUT_DIR/notes.txt"',
    ].join('\n');
    const { manifest, setDir } = await run({
      command: ['sh', '-c', script, 'backup-script'],
      cwd,
      env: { GREETING: 'grüße, world', EXPECT_CWD: cwd },
      outputs: ['*.gz', '**/*.zst'],
    });
    expect(manifest!.artifacts.map((a) => [a.name, a.kind, a.format, a.compression])).toEqual([
      ['db dump.sql.gz', 'command', 'file', 'gzip'],
      ['media.tar.zst', 'command', 'file', 'zstd'],
    ]);
    const dump = await readFile(join(setDir, 'db dump.sql.gz'));
    expect(dump.toString()).toBe('grüße, world');
    expect(manifest!.artifacts[0]!.sha256).toBe(createHash('sha256').update(dump).digest('hex'));
    expect(manifest!.artifacts[0]!.bytes).toBe(dump.length);
    expect((await stat(join(setDir, 'db dump.sql.gz'))).mode & 0o777).toBe(0o600);
    expect((await stat(join(setDir, 'media.tar.zst'))).mode & 0o777).toBe(0o600);
    expect((await readdir(setDir)).sort()).toEqual(['db dump.sql.gz', 'manifest.json', 'media.tar.zst']);
  });

  it('collects from a configured outputDir, moving the files out and ignoring stale ones', async () => {
    const out = join(dir, 'out');
    await mkdir(out);
    await writeFile(join(out, 'old.dump'), 'stale');
    const old = new Date(Date.now() - 3_600_000);
    await utimes(join(out, 'old.dump'), old, old);
    const { manifest, lines } = await run({ command: ['sh', '-c', 'printf new > "$BACKUP_OUTPUT_DIR/new.dump"'], outputDir: out, outputs: ['*.dump'] });
    expect(manifest!.artifacts.map((a) => a.name)).toEqual(['new.dump']);
    expect(await readdir(out)).toEqual(['old.dump']);
    expect(lines.some((l) => l.includes('ignoring old.dump'))).toBe(true);
  });

  it('fails with COMMAND_NO_OUTPUT when nothing matches', async () => {
    const error = await failure(run({ command: ['sh', '-c', 'printf x > "$BACKUP_OUTPUT_DIR/a.txt"'], outputs: ['*.dump'] }));
    expect(error.code).toBe('COMMAND_NO_OUTPUT');
    expect(error.describe()).toMatch(/^\[command → produce\] COMMAND_NO_OUTPUT: sh succeeded but wrote no file matching \*\.dump/);
    expect(await readdir(join(dir, 'work')).then((n) => n.filter((x) => !x.startsWith('.')))).toEqual([]);
  });

  it('fails with EXEC_FAILED and the stderr tail, secrets from env masked', async () => {
    const error = await failure(
      run({ command: ['sh', '-c', 'echo "connecting with $API_TOKEN" >&2; echo "fatal: no route" >&2; exit 3'], env: { API_TOKEN: 's3cr3t-t0ken' } }),
    );
    expect(error.code).toBe('EXEC_FAILED');
    expect(error.plugin).toBe('command');
    expect(error.message).toContain('exited with code 3');
    expect(error.message).toContain('fatal: no route');
    expect(error.message).not.toContain('s3cr3t-t0ken');
    expect(error.message).toContain('connecting with ***');
  });

  it('fails preflight when cwd is missing (COMMAND_DIR_MISSING) and reports a missing program (EXEC_NOT_FOUND)', async () => {
    expect((await failure(run({ command: ['true'], cwd: join(dir, 'nope') }))).code).toBe('COMMAND_DIR_MISSING');
    expect((await failure(run({ command: ['no-such-program-here'] }))).code).toBe('EXEC_NOT_FOUND');
  });

  it('stdout: the program\'s standard output is the artifact, compressed and encrypted in one pass; no file is collected', async () => {
    const key = join(dir, 'age.key');
    execFileSync('age-keygen', ['-o', key], { stdio: 'ignore' });
    const recipient = execFileSync('age-keygen', ['-y', key], { encoding: 'utf8' }).trim();
    const script = 'printf ignored > "$BACKUP_OUTPUT_DIR/file.dump"; seq 1 200000';
    const { manifest, setDir } = await run({ command: ['sh', '-c', script], stdout: { name: 'numbers.txt' } }, [{ use: resolve(here, '../../age/dist/index.js'), recipients: [recipient], identityFile: key }]);
    const [a] = manifest!.artifacts;
    expect(manifest!.artifacts).toHaveLength(1);
    expect(a).toMatchObject({ name: 'numbers.txt.zst.age', kind: 'command', format: 'file', compression: 'zstd', plain: { name: 'numbers.txt.zst' }, meta: { output: 'stdout' } });
    // One pass: age's filter was spliced into the stream; its file-based transform did not run.
    expect(manifest!.stages.filter((st) => st.plugin === 'age').map((st) => st.hook)).toContain('transformFilter');
    expect(manifest!.stages.some((st) => st.plugin === 'age' && st.hook === 'transform')).toBe(false);
    const stored = await readFile(join(setDir, a!.name));
    expect(createHash('sha256').update(stored).digest('hex')).toBe(a!.sha256);
    expect((await stat(join(setDir, a!.name))).mode & 0o777).toBe(0o600);
    const plain = execFileSync('age', ['--decrypt', '-i', key, join(setDir, a!.name)], { maxBuffer: 1 << 24 });
    expect(createHash('sha256').update(plain).digest('hex')).toBe(a!.plain!.sha256);
    expect(execFileSync('zstd', ['-dc'], { input: plain, encoding: 'utf8', maxBuffer: 1 << 24 })).toBe(execFileSync('seq', ['1', '200000'], { encoding: 'utf8', maxBuffer: 1 << 24 }));
    expect((await readdir(setDir)).sort()).toEqual(['manifest.json', a!.name]);
  });

  it('stdout: nothing written is COMMAND_NO_OUTPUT, a failing program its own error; no set is left', async () => {
    const empty = await failure(run({ command: ['true'], stdout: { name: 'x.tar', compression: 'none' } }));
    expect(empty.code).toBe('COMMAND_NO_OUTPUT');
    expect(empty.message).toMatch(/wrote nothing on its standard output/);
    const broken = await failure(run({ command: ['sh', '-c', 'seq 1 100000; echo "disk gone" >&2; exit 4'], stdout: { name: 'x.txt' } }));
    expect(broken.code).toBe('EXEC_FAILED');
    expect(broken.message).toMatch(/exited with code 4: disk gone/);
    expect(await readdir(join(dir, 'work')).then((n) => n.filter((x) => !x.startsWith('.')))).toEqual([]);
    expect((await failure(run({ command: ['true'], stdout: { name: '../escape' } }))).code).toBe('CONFIG_INVALID');
  });

  it('rejects a shell string and unknown options (CONFIG_INVALID)', async () => {
    expect((await failure(run({ command: 'pg_dump | gzip' }))).code).toBe('CONFIG_INVALID');
    expect((await failure(run({ command: ['true'], shell: true }))).code).toBe('CONFIG_INVALID');
  });
});

describe('output globs', () => {
  it.each([
    ['*', 'a.dump', true],
    ['*', 'sub/a.dump', false],
    ['*.dump', 'a.dump', true],
    ['*.dump', 'a.dump.gz', false],
    ['**/*.gz', 'a.gz', true],
    ['**/*.gz', 'x/y/a.gz', true],
    ['sub/**', 'sub/x/y', true],
    ['?.sql', 'a.sql', true],
    ['?.sql', 'ab.sql', false],
    ['*.{gz,zst}', 'a.zst', true],
    ['*.{gz,zst}', 'a.lz4', false],
    ['a+b(1).sql', 'a+b(1).sql', true],
  ])('%s matches %s: %s', (pattern, path, expected) => {
    expect(globToRegExp(pattern).test(path)).toBe(expected);
  });

  it.each([
    ['x.sql.gz', 'gzip'],
    ['x.tgz', 'gzip'],
    ['x.tar.zst', 'zstd'],
    ['x.lz4', 'lz4'],
    ['x.dump', 'none'],
  ] as const)('compression of %s is %s', (name, expected) => {
    expect(compressionOf(name)).toBe(expected);
  });
});
