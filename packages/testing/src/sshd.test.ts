import { exec } from '@backup-pipeline/core';
import { describe, expect, it } from 'vitest';
import { readFile } from 'node:fs/promises';
import { startSshd } from './sshd.js';

/** Local addresses (`ip:port`) of the TCP sockets listening on `port`. */
async function listeningOn(port: number): Promise<string[]> {
  const ss = await exec('ss', ['-ltnH']).catch((error: unknown) => {
    // Under CI the tool must be there (.ci/run installs iproute2); elsewhere fall back to /proc.
    if (process.env.CI === 'true') throw new Error(`ss is needed under CI=true (install iproute2): ${(error as Error).message}`);
    return undefined;
  });
  if (ss) {
    return ss.stdout
      .split('\n')
      .map((l) => l.trim().split(/\s+/)[3] ?? '')
      .filter((addr) => addr.endsWith(`:${port}`));
  }
  // /proc/net/tcp: local address as hex ip (little-endian) and hex port; state 0A is LISTEN.
  const out: string[] = [];
  for (const file of ['/proc/net/tcp', '/proc/net/tcp6']) {
    const text = await readFile(file, 'utf8').catch(() => '');
    for (const line of text.split('\n').slice(1)) {
      const [, local, , state] = line.trim().split(/\s+/);
      if (state !== '0A' || !local) continue;
      const [ipHex, portHex] = local.split(':');
      if (Number.parseInt(portHex!, 16) !== port) continue;
      const ip = ipHex!.length === 8 ? ipHex!.match(/../g)!.reverse().map((h) => Number.parseInt(h, 16)).join('.') : `[${ipHex}]`;
      out.push(`${ip}:${port}`);
    }
  }
  return out;
}

describe('startSshd', () => {
  it('accepts key logins on 127.0.0.1 only, and stops and restarts', async () => {
    const sshd = await startSshd();
    try {
      expect(sshd.host).toBe('127.0.0.1');
      const run = () => exec('ssh', [...sshd.sshArgs, '-o', 'ConnectTimeout=5', `${sshd.user}@127.0.0.1`, 'echo', 'ok']);
      expect((await run()).stdout.trim()).toBe('ok');
      // Listening sockets from `ss` (iproute2, installed by .ci/run); without it, /proc/net/tcp{,6}.
      const listening = await listeningOn(sshd.port);
      expect(listening.length, `nothing listens on port ${sshd.port}`).toBeGreaterThan(0);
      expect(listening).toEqual(listening.map(() => `127.0.0.1:${sshd.port}`));
      await sshd.stop();
      await expect(run()).rejects.toThrow();
      await sshd.restart();
      expect((await run()).stdout.trim()).toBe('ok');
    } finally {
      await sshd.cleanup();
    }
  });
});
