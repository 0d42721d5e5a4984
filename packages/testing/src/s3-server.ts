/**
 * A real S3-protocol server for tests (s3rver) on 127.0.0.1 serving a temporary folder, with one
 * bucket, plus a small fault-injecting HTTP proxy to put in front of it for failure tests.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, request, type IncomingMessage, type ServerResponse } from 'node:http';
import { createRequire } from 'node:module';
import type { AddressInfo, Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

interface S3rverInstance {
  run(): Promise<AddressInfo>;
  close(): Promise<void>;
  httpServer?: { closeAllConnections(): void };
}
type S3rverClass = new (options: Record<string, unknown>) => S3rverInstance;

export interface S3Server {
  /** `http://127.0.0.1:PORT` (use path-style addressing). */
  endpoint: string;
  bucket: string;
  accessKeyId: string;
  secretAccessKey: string;
  region: string;
  /** The folder s3rver stores objects in. */
  directory: string;
  stop(): Promise<void>;
}

export async function startS3Server(options: { bucket?: string } = {}): Promise<S3Server> {
  const S3rver = createRequire(import.meta.url)('s3rver') as S3rverClass;
  const directory = await mkdtemp(join(tmpdir(), 's3rver-'));
  const bucket = options.bucket ?? 'backups';
  const server = new S3rver({ address: '127.0.0.1', port: 0, silent: true, directory, configureBuckets: [{ name: bucket }] });
  let address: AddressInfo;
  try {
    address = await server.run();
  } catch (error) {
    await rm(directory, { recursive: true, force: true });
    throw error;
  }
  return {
    endpoint: `http://127.0.0.1:${address.port}`,
    bucket,
    // s3rver checks signatures made with these fixed credentials.
    accessKeyId: 'S3RVER',
    secretAccessKey: 'S3RVER',
    region: 'us-east-1',
    directory,
    stop: async () => {
      // close() alone waits for every request in flight, and one whose client was killed mid-body
      // is in flight until the server's request timeout (300 s): a test server ends them all.
      const closed = server.close().catch(() => {});
      server.httpServer?.closeAllConnections();
      await closed;
      await rm(directory, { recursive: true, force: true });
    },
  };
}

/** What the proxy does with the next requests. */
export type FaultMode =
  | { kind: 'pass' }
  /** Answer with an S3 error: 500 InternalError or 503 SlowDown. */
  | { kind: 'status'; status: 500 | 503 }
  /** Forward the request but cut the connection after `bytes` bytes of its body. */
  | { kind: 'drop-after'; bytes: number }
  /** Wait `ms` before forwarding. */
  | { kind: 'delay'; ms: number };

export interface FaultProxy {
  endpoint: string;
  /** Sets the mode; with `times`, only the next `times` requests are affected, then it passes again. */
  setMode(mode: FaultMode, times?: number): void;
  /** Requests seen so far, and how many of them a fault hit. */
  readonly stats: { requests: number; faults: number };
  stop(): Promise<void>;
}

const S3_ERRORS = {
  500: { code: 'InternalError', message: 'We encountered an internal error. Please try again.' },
  503: { code: 'SlowDown', message: 'Please reduce your request rate.' },
} as const;

/** A small HTTP proxy in front of `target` (`http://127.0.0.1:PORT`) with switchable faults. */
export async function startFaultProxy(target: string): Promise<FaultProxy> {
  const upstream = new URL(target);
  let mode: FaultMode = { kind: 'pass' };
  let remaining = Infinity;
  const stats = { requests: 0, faults: 0 };
  const sockets = new Set<Socket>();

  const forward = (req: IncomingMessage, res: ServerResponse, dropAfter?: number) => {
    const out = request(
      { host: upstream.hostname, port: upstream.port, method: req.method, path: req.url, headers: req.headers },
      (up) => {
        res.writeHead(up.statusCode ?? 502, up.headers);
        up.pipe(res);
      },
    );
    out.on('error', () => res.destroy());
    // A client that goes away mid-request takes the upstream request with it, as a real proxy does
    // (otherwise the server waits for the rest of a body that never comes).
    res.on('close', () => {
      if (!res.writableFinished) out.destroy();
    });
    if (dropAfter === undefined) {
      req.pipe(out);
      return;
    }
    let seen = 0;
    req.on('data', (chunk: Buffer) => {
      if (seen + chunk.length >= dropAfter) {
        out.write(chunk.subarray(0, Math.max(0, dropAfter - seen)));
        out.destroy();
        req.socket.destroy();
        return;
      }
      seen += chunk.length;
      out.write(chunk);
    });
    req.on('end', () => out.end());
  };

  const server = createServer((req, res) => {
    stats.requests++;
    const current: FaultMode = remaining > 0 ? mode : { kind: 'pass' };
    if (current.kind !== 'pass') {
      stats.faults++;
      if (--remaining <= 0) mode = { kind: 'pass' };
    }
    switch (current.kind) {
      case 'status': {
        const e = S3_ERRORS[current.status];
        req.resume();
        req.on('end', () => {
          res.writeHead(current.status, { 'content-type': 'application/xml' });
          res.end(`<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>${e.code}</Code><Message>${e.message}</Message><RequestId>fault</RequestId></Error>`);
        });
        return;
      }
      case 'drop-after':
        return forward(req, res, current.bytes);
      case 'delay':
        return void setTimeout(() => forward(req, res), current.ms);
      default:
        return forward(req, res);
    }
  });
  server.on('connection', (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    endpoint: `http://127.0.0.1:${port}`,
    stats,
    setMode: (m, times = Infinity) => {
      mode = m;
      remaining = m.kind === 'pass' ? Infinity : times;
    },
    stop: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
