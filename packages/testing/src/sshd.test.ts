import { exec } from '@backup-pipeline/core';
import { describe, expect, it } from 'vitest';
import { startSshd } from './sshd.js';

describe('startSshd', () => {
  it('accepts key logins on 127.0.0.1 only, and stops and restarts', async () => {
    const sshd = await startSshd();
    try {
      expect(sshd.host).toBe('127.0.0.1');
      const run = () => exec('ssh', [...sshd.sshArgs, '-o', 'ConnectTimeout=5', `${sshd.user}@127.0.0.1`, 'echo', 'ok']);
      expect((await run()).stdout.trim()).toBe('ok');
      const ss = await exec('ss', ['-ltnH']).catch(() => undefined);
      if (ss) {
        const lines = ss.stdout.split('\n').filter((l) => l.includes(`:${sshd.port} `));
        expect(lines.length).toBeGreaterThan(0);
        for (const l of lines) expect(l).toContain(`127.0.0.1:${sshd.port}`);
      }
      await sshd.stop();
      await expect(run()).rejects.toThrow();
      await sshd.restart();
      expect((await run()).stdout.trim()).toBe('ok');
    } finally {
      await sshd.cleanup();
    }
  });
});
