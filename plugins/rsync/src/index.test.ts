import { chmod, copyFile, mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger, hashFile, isPipelineError, resolveConfig, Runner, type PipelineError } from '@backup-pipeline/core';
import { startSshd, writeProducerPlugin, type SshServer } from '@backup-pipeline/testing';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseTarget, quoteForRsh, RsyncOptions } from './index.js';
import { make, remoteOptions } from './test-support.js';

describe('rsync target and quoting', () => {
  it.each([
    ['backup@host.example:/srv/backups', { remote: { login: 'backup@host.example', host: 'backup@host.example', user: 'backup' }, path: '/srv/backups' }],
    ['host:backups/', { remote: { login: 'host', host: 'host', user: undefined }, path: 'backups' }],
    ['u@[::1]:/x', { remote: { login: 'u@[::1]', host: 'u@::1', user: 'u' }, path: '/x' }],
    ['/srv/back:ups', { path: '/srv/back:ups' }],
    ['./a:b', { path: './a:b' }],
    ['host:', { remote: { login: 'host', host: 'host', user: undefined }, path: '.' }],
  ])('parses %s', (target, expected) => {
    expect(parseTarget(target)).toEqual(expected);
  });

  it('quotes -e arguments for rsync\'s splitter', () => {
    expect(quoteForRsh('-p')).toBe('-p');
    expect(quoteForRsh('/keys/my key')).toBe('"/keys/my key"');
    expect(quoteForRsh('a"b c')).toBe('"a""b c"');
  });

  it('rejects unknown options and malformed ssh options', () => {
    expect(RsyncOptions.safeParse({ target: 'h:/x', nope: 1 }).success).toBe(false);
    expect(RsyncOptions.safeParse({ target: 'h:/x', sshOptions: ['-oProxyCommand=evil'] }).success).toBe(false);
    expect(RsyncOptions.safeParse({ target: 'h:/x', sshOptions: ['ProxyJump=bastion'], bwLimit: '2M' }).success).toBe(true);
  });
});

describe('rsync against a real sshd: faults and the runner', () => {
  let sshd: SshServer;
  let dir: string;
  beforeAll(async () => {
    sshd = await startSshd();
    dir = await mkdtemp(join(tmpdir(), 'rsync-run-'));
  });
  afterAll(async () => {
    await sshd?.cleanup();
    await rm(dir, { recursive: true, force: true });
  });

  it('fails with DESTINATION_FAILED while sshd is down, and works again after a restart', async () => {
    const d = await make(remoteOptions(sshd, `${sshd.dir}/faults`));
    await d.check();
    await sshd.stop();
    const error = await d.check().catch((e: unknown) => e);
    expect(isPipelineError(error) && (error as PipelineError).code).toBe('DESTINATION_FAILED');
    await expect(d.list()).rejects.toThrow(/listing sets/);
    await sshd.restart();
    await d.check();
    expect(await d.list()).toEqual([]);
  });

  it('passes key and known_hosts paths with spaces and quotes through -e intact', async () => {
    const odd = join(dir, `keys with "quotes" and spaces`);
    await mkdir(odd, { mode: 0o700 });
    await copyFile(sshd.identityFile, join(odd, 'id key'));
    await chmod(join(odd, 'id key'), 0o600);
    const hostsDir = join(dir, 'known hosts dir');
    await mkdir(hostsDir, { mode: 0o700 });
    await copyFile(sshd.knownHostsFile, join(hostsDir, 'known hosts'));
    const d = await make({ ...remoteOptions(sshd, `${sshd.dir}/odd`), identityFile: join(odd, 'id key'), knownHostsFile: join(hostsDir, 'known hosts') });
    expect(d.rsh()).toContain('"');
    await d.check();
  });

  it('lists nothing and deletes without error where the root folder does not exist', async () => {
    for (const options of [remoteOptions(sshd, `${sshd.dir}/absent/sets`), { target: join(dir, 'absent', 'sets') }]) {
      const d = await make(options);
      expect(await d.list()).toEqual([]);
      await d.delete('20300101T000000Z-x');
      await expect(d.get('20300101T000000Z-x', 'a', join(dir, 'absent-get'))).rejects.toMatchObject({ code: 'SET_NOT_FOUND' });
    }
  });

  it('creates a missing target folder 0700 (parents included) and leaves an existing one as it is', async () => {
    const source = join(dir, 'mode-source.txt');
    await writeFile(source, 'x');
    const put = { path: source, ...(await hashFile(source)) };
    const fresh = `${sshd.dir}/modes/new/sets`;
    await (await make(remoteOptions(sshd, fresh))).put('20300101T000000Z-x', 'a.txt', put);
    expect((await stat(fresh)).mode & 0o777).toBe(0o700);
    expect((await stat(join(fresh, '20300101T000000Z-x'))).mode & 0o777).toBe(0o700);
    const shared = `${sshd.dir}/modes/shared`;
    await mkdir(shared, { mode: 0o750 });
    await chmod(shared, 0o750);
    await (await make(remoteOptions(sshd, shared))).put('20300101T000000Z-x', 'a.txt', put);
    expect((await stat(shared)).mode & 0o777).toBe(0o750);
  });

  it('refuses a host whose key is not in knownHostsFile', async () => {
    const other = join(dir, 'other_known_hosts');
    await writeFile(other, `[127.0.0.1]:${sshd.port} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDFakeFakeFakeFakeFakeFakeFakeFakeFakeFakeFake00\n`);
    const d = await make({ ...remoteOptions(sshd, `${sshd.dir}/x`), knownHostsFile: other });
    await expect(d.check()).rejects.toMatchObject({ code: 'DESTINATION_FAILED' });
  });

  it('ships a whole set through the runner: artifacts, then the manifest', async () => {
    const producer = await writeProducerPlugin(dir, { artifact: 'data file.txt' });
    const remote = `${sshd.dir}/runner sets`;
    const file = join(dir, 'pipeline.config.yaml');
    const config = await resolveConfig(file, {
      workDir: join(dir, 'work'),
      destinations: { offsite: { use: join(import.meta.dirname, 'index.ts'), ...remoteOptions(sshd, remote) } },
      pipelines: { nightly: { source: 'mastodon', stages: [{ use: producer }], destinations: ['offsite'] } },
    });
    const lines: string[] = [];
    const log = await createLogger({ secrets: config.secrets, format: 'json', level: 'info', write: (l) => void lines.push(l) });
    const { summary } = await new Runner(config, log).run('nightly');
    expect(summary.ok).toBe(true);
    expect(summary.destinations).toEqual([expect.objectContaining({ destination: 'offsite', ok: true, files: 2 })]);
    const d = await make(remoteOptions(sshd, remote));
    expect(await d.list()).toEqual([expect.objectContaining({ id: summary.setId, hasManifest: true })]);
    const got = join(dir, 'got.txt');
    await d.get(summary.setId, 'data file.txt', got);
    expect((await hashFile(got)).sha256).toBe(summary.artifacts[0]!.sha256);
    expect(JSON.parse(await readFile(join(remote, summary.setId, 'manifest.json'), 'utf8')).id).toBe(summary.setId);
  });
  it('a destination that goes away while shipping fails alone: the other destination still gets a complete set', async () => {
    const core = import.meta.resolve('@backup-pipeline/core');
    const producer = join(dir, 'fault-producer.mjs');
    await writeFile(
      producer,
      `import { definePlugin, writeFileAtomic } from ${JSON.stringify(core)};
import { join } from 'node:path';
export default definePlugin({
  name: 'fault-producer',
  description: 'test',
  apply(hooks) {
    hooks.produce.tapPromise('fault-producer', async (ctx) => {
      const path = join(ctx.setDir, 'db.dump');
      const d = await writeFileAtomic(path, 'dump\\n'.repeat(100));
      ctx.addArtifact({ name: 'db.dump', path, kind: 'database', format: 'file', compression: 'none', meta: {}, ...d });
    });
    // After preflight checked the destinations, before shipping: take the ssh server away.
    hooks.verify.tapPromise('fault-producer', async () => { await globalThis.__rsyncFault?.(); });
  },
});
`,
    );
    const g = globalThis as { __rsyncFault?: () => Promise<void> };
    g.__rsyncFault = () => sshd.stop();
    try {
      const remote = `${sshd.dir}/fault sets`;
      const config = await resolveConfig(join(dir, 'fault.yaml'), {
        workDir: join(dir, 'fault-work'),
        destinations: {
          offsite: { use: join(import.meta.dirname, 'index.ts'), ...remoteOptions(sshd, remote), connectTimeoutSeconds: 2 },
          usb: { use: join(import.meta.dirname, 'index.ts'), target: join(dir, 'usb') },
        },
        pipelines: { nightly: { source: 'mastodon', stages: [{ use: producer }], destinations: ['offsite', 'usb'] } },
      });
      const log = await createLogger({ secrets: config.secrets, level: 'silent' });
      const error = await new Runner(config, log).run('nightly').catch((e: unknown) => e as PipelineError);
      expect(error).toMatchObject({ code: 'DESTINATION_FAILED' });
      expect((error as PipelineError).message).toContain('"offsite"');
      expect((error as PipelineError).hint).toContain('usb');
      const usb = await make({ target: join(dir, 'usb') });
      expect(await usb.list()).toEqual([expect.objectContaining({ hasManifest: true })]);
      await sshd.restart();
      const offsite = await make(remoteOptions(sshd, remote));
      expect((await offsite.list()).filter((s) => s.hasManifest)).toEqual([]);
    } finally {
      delete g.__rsyncFault;
      await sshd.restart();
    }
  });
});
