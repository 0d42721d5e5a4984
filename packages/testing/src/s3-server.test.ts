import { createServer, request, type IncomingMessage } from 'node:http';
import type { AddressInfo } from 'node:net';
import { describe, expect, it } from 'vitest';
import { startFaultProxy, startS3Server } from './s3-server.js';

/** Starts a PUT of `declared` bytes to `url`, sends only the first 64 KiB, and returns its socket. */
async function halfPut(url: string, declared = 10_000_000) {
  const u = new URL(url);
  const req = request({ host: u.hostname, port: u.port, method: 'PUT', path: u.pathname, headers: { 'content-length': declared } });
  req.on('error', () => {});
  req.write(Buffer.alloc(65_536));
  return new Promise<NonNullable<typeof req.socket>>((resolve) => req.on('socket', (s) => s.on('connect', () => resolve(s))));
}

describe('startS3Server and startFaultProxy', () => {
  it('serves the bucket, and the proxy passes, fails and recovers', async () => {
    const s3 = await startS3Server();
    const proxy = await startFaultProxy(s3.endpoint);
    try {
      const direct = await fetch(`${s3.endpoint}/${s3.bucket}?list-type=2`);
      expect(direct.status).toBe(200);
      expect(await direct.text()).toContain('<ListBucketResult');

      expect((await fetch(`${proxy.endpoint}/${s3.bucket}?list-type=2`)).status).toBe(200);
      proxy.setMode({ kind: 'status', status: 503 }, 1);
      const slow = await fetch(`${proxy.endpoint}/${s3.bucket}?list-type=2`);
      expect(slow.status).toBe(503);
      expect(await slow.text()).toContain('<Code>SlowDown</Code>');
      expect((await fetch(`${proxy.endpoint}/${s3.bucket}?list-type=2`)).status).toBe(200);

      proxy.setMode({ kind: 'delay', ms: 200 }, 1);
      const t = Date.now();
      expect((await fetch(`${proxy.endpoint}/${s3.bucket}?list-type=2`)).status).toBe(200);
      expect(Date.now() - t).toBeGreaterThanOrEqual(190);

      proxy.setMode({ kind: 'drop-after', bytes: 10 }, 1);
      await expect(fetch(`${proxy.endpoint}/${s3.bucket}/x`, { method: 'PUT', body: 'x'.repeat(1000) })).rejects.toThrow();
      expect(proxy.stats.faults).toBe(3);
    } finally {
      await proxy.stop();
      await s3.stop();
    }
  });

  // A test that kills a client in the middle of an upload must still be able to stop its servers:
  // a request left in flight holds server.close() until the request timeout (300 s).
  it('stop() returns with a request still in flight', { timeout: 20_000 }, async () => {
    const s3 = await startS3Server();
    await halfPut(`${s3.endpoint}/${s3.bucket}/x`);
    await s3.stop();
  });

  it('the proxy ends the upstream request when its client goes away mid-body', { timeout: 20_000 }, async () => {
    let upstreamReq: IncomingMessage | undefined;
    // It reads the body, as s3rver does: a socket left paused never sees its peer go.
    const upstream = createServer((req) => {
      upstreamReq = req;
      req.resume();
    });
    await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
    const proxy = await startFaultProxy(`http://127.0.0.1:${(upstream.address() as AddressInfo).port}`);
    try {
      const client = await halfPut(`${proxy.endpoint}/b/x`);
      while (!upstreamReq) await new Promise((r) => setTimeout(r, 20));
      const aborted = new Promise<void>((resolve) => upstreamReq!.on('close', () => resolve()));
      client.destroy();
      await aborted;
      expect(upstreamReq.complete).toBe(false);
    } finally {
      await proxy.stop();
      upstream.closeAllConnections();
      await new Promise((r) => upstream.close(r));
    }
  });
});
