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

describeDestinationConformance('rsync over ssh (sha256sum verify)', async () => {
  const sshd = await startSshd();
  return { destination: await make(remoteOptions(sshd, `${sshd.dir}/remote backups ü`)), teardown: () => sshd.cleanup() };
});

