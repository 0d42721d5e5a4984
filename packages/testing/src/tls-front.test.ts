import { readFile, stat } from 'node:fs/promises';
import { request } from 'node:https';
import { dirname } from 'node:path';
import { describe, expect, it } from 'vitest';
import { startS3Server } from './s3-server.js';
import { startTlsFront } from './tls-front.js';

/** GET over https, trusting only `ca` (or the system's CAs when it is not given). */
const get = (url: string, ca?: Buffer) =>
  new Promise<{ status: number; body: string }>((resolve, reject) => {
    const req = request(url, ca ? { ca } : {}, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
    });
    req.on('error', reject);
    req.end();
  });

describe('startTlsFront', () => {
  it('serves s3rver over TLS with a certificate for 127.0.0.1 that only its caFile vouches for', async () => {
    const s3 = await startS3Server();
    const front = await startTlsFront({ host: '127.0.0.1', port: Number(new URL(s3.endpoint).port) });
    try {
      expect((await stat(dirname(front.caFile))).mode & 0o777).toBe(0o700);
      const ok = await get(`https://127.0.0.1:${front.port}/${s3.bucket}?list-type=2`, await readFile(front.caFile));
      expect(ok.status).toBe(200);
      expect(ok.body).toContain('<ListBucketResult');
      // Without the CA the certificate is refused: the front speaks TLS with its own certificate.
      await expect(get(`https://127.0.0.1:${front.port}/${s3.bucket}?list-type=2`)).rejects.toThrow(/self[- ]signed/i);
    } finally {
      await front.stop();
      await s3.stop();
    }
    await expect(stat(front.caFile)).rejects.toThrow();
  });
});
