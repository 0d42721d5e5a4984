/**
 * A real redis-server for tests: on 127.0.0.1 and a free port, with a password, persistence off
 * (the tests take their snapshots over the connection), in a temporary folder removed by `stop()`.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

export interface RedisServer {
  host: string;
  port: number;
  password: string;
  directory: string;
  /** Runs redis-cli against this server (password through REDISCLI_AUTH); resolves with stdout. */
  cli(args: string[]): Promise<string>;
  stop(): Promise<void>;
}

async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const address = server.address();
      const port = typeof address === 'object' && address ? address.port : 0;
      server.close(() => resolve(port));
    });
  });
}

function run(file: string, args: string[], env: NodeJS.ProcessEnv): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn(file, args, { env, stdio: ['ignore', 'pipe', 'pipe'] });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (c: Buffer) => (stdout += c.toString()));
    child.stderr.on('data', (c: Buffer) => (stderr += c.toString()));
    child.once('error', reject);
    child.once('close', (code) => resolve({ code: code ?? -1, stdout, stderr }));
  });
}

export async function startRedis(options: { password?: string } = {}): Promise<RedisServer> {
  const password = options.password ?? 'redis-test-pässword-' + Math.random().toString(36).slice(2);
  const directory = await mkdtemp(join(tmpdir(), 'bp-redis-test-'));
  const env = { ...process.env, REDISCLI_AUTH: password };
  for (let attempt = 0; ; attempt++) {
    const port = await freePort();
    // The password is given on stdin as a config file, never in argv (`ps` shows argv).
    const child: ChildProcess = spawn('redis-server', ['-'], { stdio: ['pipe', 'ignore', 'pipe'], cwd: directory });
    child.stdin!.end(`bind 127.0.0.1\nport ${port}\ndir ${directory}\nsave ""\nappendonly no\nrequirepass "${password.replace(/["\\]/g, '\\$&')}"\n`);
    let exited = false;
    child.once('exit', () => (exited = true));
    const cli = async (args: string[]) => {
      const r = await run('redis-cli', ['-h', '127.0.0.1', '-p', String(port), '--no-auth-warning', ...args], env);
      if (r.code !== 0) throw new Error(`redis-cli ${args.join(' ')}: exit ${r.code}: ${r.stderr}`);
      return r.stdout;
    };
    let up = false;
    for (let i = 0; i < 200 && !exited; i++) {
      const pong = await cli(['PING']).catch(() => '');
      if (pong.trim() === 'PONG') {
        up = true;
        break;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    if (up) {
      return {
        host: '127.0.0.1',
        port,
        password,
        directory,
        cli,
        stop: async () => {
          if (!exited) {
            const gone = new Promise((r) => child.once('exit', r));
            child.kill('SIGTERM');
            await gone;
          }
          await rm(directory, { recursive: true, force: true });
        },
      };
    }
    child.kill('SIGKILL');
    if (attempt >= 3) {
      await rm(directory, { recursive: true, force: true });
      throw new Error('redis-server did not start (is the redis-server package installed?)');
    }
  }
}
