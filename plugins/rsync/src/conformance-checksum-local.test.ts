import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createLogger, SecretRegistry } from '@backup-pipeline/core';
import { startSshd, type SshServer } from '@backup-pipeline/testing';
import { describeDestinationConformance } from '@backup-pipeline/testing/conformance';
import plugin, { type RsyncDestination } from './index.js';

async function make(options: Record<string, unknown>) {
  const secrets = new SecretRegistry();
  const log = await createLogger({ secrets, level: 'silent' });
  const parsed = plugin.destination!.options.parse(options);
  return plugin.destination!.create(parsed, { name: 'rsync', log, secrets, configDir: '/', resolvePath: (p) => p }) as RsyncDestination;
}

const remoteOptions = (sshd: SshServer, path: string) => ({
  target: `${sshd.user}@127.0.0.1:${path}`,
  port: sshd.port,
  identityFile: sshd.identityFile,
  knownHostsFile: sshd.knownHostsFile,
});

describeDestinationConformance(
  'rsync over ssh (rsync-checksum verify)',
  async () => {
    const sshd = await startSshd();
    return { destination: await make({ ...remoteOptions(sshd, `${sshd.dir}/sets`), verify: 'rsync-checksum' }), teardown: () => sshd.cleanup() };
  },
  { largeFileBytes: 8 * 1024 * 1024 },
);

describeDestinationConformance(
  'rsync to a local path',
  async () => {
    const root = await mkdtemp(join(tmpdir(), 'rsync-local-'));
    return { destination: await make({ target: join(root, 'sets') }), teardown: () => rm(root, { recursive: true, force: true }) };
  },
  { largeFileBytes: 8 * 1024 * 1024 },
);

