/** Shared by the rsync plugin's tests: a destination made the way the core makes it, and ssh options for the harness's sshd. */
import { createLogger, SecretRegistry } from '@backup-pipeline/core';
import type { SshServer } from '@backup-pipeline/testing';
import plugin, { type RsyncDestination } from './index.js';

export async function make(options: Record<string, unknown>): Promise<RsyncDestination> {
  const secrets = new SecretRegistry();
  const log = await createLogger({ secrets, level: 'silent' });
  const parsed = plugin.destination!.options.parse(options);
  return plugin.destination!.create(parsed, { name: 'rsync', log, secrets, configDir: '/', resolvePath: (p) => p }) as RsyncDestination;
}

export const remoteOptions = (sshd: SshServer, path: string) => ({
  target: `${sshd.user}@127.0.0.1:${path}`,
  port: sshd.port,
  identityFile: sshd.identityFile,
  knownHostsFile: sshd.knownHostsFile,
});
