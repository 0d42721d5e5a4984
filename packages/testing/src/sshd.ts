/**
 * A real OpenSSH server for tests: `/usr/sbin/sshd -D -e` on a free port of 127.0.0.1 only, with
 * its own host key, one client key allowed to log in as the current user, and everything in a
 * private temporary folder. `stop()`/`restart()` let fault tests take it away and bring it back.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { connect, createServer } from 'node:net';
import { tmpdir, userInfo } from 'node:os';
import { join } from 'node:path';
import { exec } from '@backup-pipeline/core';

export const SSHD_PATH = '/usr/sbin/sshd';

export interface SshServer {
  host: '127.0.0.1';
  port: number;
  user: string;
  /** Private key allowed to log in (no passphrase). */
  identityFile: string;
  /** A known_hosts file holding this server's host key. */
  knownHostsFile: string;
  /** The temporary folder of the server (also a handy place for remote test folders). */
  dir: string;
  /** ssh arguments to reach this server: `-p PORT -i KEY -o …` (without the destination). */
  sshArgs: string[];
  /** Stops the daemon (connections are refused) but keeps its files: `restart()` brings it back. */
  stop(): Promise<void>;
  /** Starts the daemon again on the same port (stopping it first if it runs). */
  restart(): Promise<void>;
  /** Stops the daemon and removes its folder. */
  cleanup(): Promise<void>;
}

export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      server.close(() => (typeof address === 'object' && address ? resolve(address.port) : reject(new Error('no port'))));
    });
  });
}

/** Resolves when `port` answers with an SSH banner. */
async function waitForBanner(port: number, child: ChildProcess, stderr: () => string, timeoutMs = 10_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`sshd exited with code ${child.exitCode}: ${stderr().trim()}`);
    const ok = await new Promise<boolean>((resolve) => {
      const socket = connect(port, '127.0.0.1');
      const done = (v: boolean) => {
        socket.destroy();
        resolve(v);
      };
      socket.setTimeout(1000, () => done(false));
      socket.once('data', (d) => done(d.toString().startsWith('SSH-')));
      socket.once('error', () => done(false));
    });
    if (ok) return;
    await new Promise((r) => setTimeout(r, 50));
  }
  throw new Error(`sshd did not accept connections on 127.0.0.1:${port}: ${stderr().trim()}`);
}

export async function startSshd(): Promise<SshServer> {
  const dir = await mkdtemp(join(tmpdir(), 'sshd-'));
  await mkdir('/run/sshd', { recursive: true, mode: 0o755 });
  const hostKey = join(dir, 'ssh_host_ed25519_key');
  const identityFile = join(dir, 'id_ed25519');
  const knownHostsFile = join(dir, 'known_hosts');
  const config = join(dir, 'sshd_config');
  await exec('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'test-host', '-f', hostKey]);
  await exec('ssh-keygen', ['-q', '-t', 'ed25519', '-N', '', '-C', 'test-client', '-f', identityFile]);
  await writeFile(join(dir, 'authorized_keys'), await readFile(identityFile + '.pub'), { mode: 0o600 });
  const port = await freePort();
  const hostPub = (await readFile(hostKey + '.pub', 'utf8')).trim().split(/\s+/).slice(0, 2).join(' ');
  await writeFile(knownHostsFile, `[127.0.0.1]:${port} ${hostPub}\n`, { mode: 0o600 });
  await writeFile(
    config,
    [
      `Port ${port}`,
      'ListenAddress 127.0.0.1',
      `HostKey ${hostKey}`,
      `PidFile ${join(dir, 'sshd.pid')}`,
      `AuthorizedKeysFile ${join(dir, 'authorized_keys')}`,
      'UsePAM no',
      'StrictModes no',
      'PasswordAuthentication no',
      'KbdInteractiveAuthentication no',
      'PubkeyAuthentication yes',
      'PermitRootLogin prohibit-password',
      'AllowTcpForwarding no',
      'X11Forwarding no',
      'PrintMotd no',
      'LogLevel ERROR',
      'MaxStartups 100',
      // Cheaper key exchange than the post-quantum default: tests open many connections.
      'KexAlgorithms curve25519-sha256,curve25519-sha256@libssh.org',
      'MaxSessions 100',
      'Subsystem sftp internal-sftp',
      '',
    ].join('\n'),
    { mode: 0o600 },
  );

  let child: ChildProcess | undefined;
  const start = async () => {
    let stderr = '';
    const c = spawn(SSHD_PATH, ['-D', '-e', '-f', config], { stdio: ['ignore', 'ignore', 'pipe'] });
    c.stderr!.on('data', (d: Buffer) => {
      stderr = (stderr + d.toString()).slice(-4000);
    });
    child = c;
    try {
      await waitForBanner(port, c, () => stderr);
    } catch (error) {
      c.kill('SIGKILL');
      throw error;
    }
  };
  const stop = async () => {
    const c = child;
    child = undefined;
    if (!c || c.exitCode !== null || c.signalCode !== null) return;
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => c.kill('SIGKILL'), 5000);
      c.once('exit', () => {
        clearTimeout(timer);
        resolve();
      });
      c.kill('SIGTERM');
    });
  };

  try {
    await start();
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
  return {
    host: '127.0.0.1',
    port,
    user: userInfo().username,
    identityFile,
    knownHostsFile,
    dir,
    sshArgs: ['-p', String(port), '-i', identityFile, '-o', 'IdentitiesOnly=yes', '-o', 'BatchMode=yes', '-o', `UserKnownHostsFile=${knownHostsFile}`, '-o', 'StrictHostKeyChecking=yes'],
    stop,
    cleanup: async () => {
      await stop();
      await rm(dir, { recursive: true, force: true });
    },
    restart: async () => {
      await stop();
      await start();
    },
  };
}
