import { describe, expect, it } from 'vitest';
import { startFaultProxy, startS3Server } from './s3-server.js';

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
});
