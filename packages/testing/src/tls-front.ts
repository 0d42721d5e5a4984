/**
 * A TLS front for a plain loopback server: clients that insist on TLS (pgBackRest's S3 client
 * always does) reach a plain-HTTP test server such as s3rver through it. The certificate is
 * self-signed for 127.0.0.1 and localhost, made at start with `openssl req -x509` in a private
 * (0700) folder; `caFile` is that certificate, for clients that verify.
 */
import { execFile } from 'node:child_process';
import { chmod, mkdtemp, readFile, rm } from 'node:fs/promises';
import { connect, type AddressInfo, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createServer } from 'node:tls';
import { promisify } from 'node:util';

export interface TlsFront {
  host: '127.0.0.1';
  port: number;
  /** The self-signed certificate (PEM), to trust as a CA. */
  caFile: string;
  /** Closes the server and every piped connection, and removes the certificate folder. */
  stop(): Promise<void>;
}

async function selfSignedCertificate(dir: string): Promise<{ keyFile: string; certFile: string }> {
  const keyFile = join(dir, 'key.pem');
  const certFile = join(dir, 'cert.pem');
  // basicConstraints CA:TRUE lets the certificate serve as its own CA for clients given caFile.
  // 127.0.0.1 is also a DNS name: pgBackRest (2.45) matches a host only against DNS entries of
  // the subjectAltName ("unable to find hostname '127.0.0.1' in certificate" with IP alone),
  // while Node and curl match an address against the IP entry.
  await promisify(execFile)('openssl', [
    'req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2',
    '-keyout', keyFile, '-out', certFile,
    '-subj', '/CN=127.0.0.1',
    '-addext', 'subjectAltName=IP:127.0.0.1,DNS:127.0.0.1,DNS:localhost',
    '-addext', 'basicConstraints=critical,CA:TRUE',
  ]);
  await chmod(keyFile, 0o600);
  return { keyFile, certFile };
}

/** Listens on 127.0.0.1 (a free port) and pipes each TLS connection, decrypted, to `target`. */
export async function startTlsFront(target: { host: string; port: number }): Promise<TlsFront> {
  const dir = await mkdtemp(join(tmpdir(), 'tls-front-'));
  await chmod(dir, 0o700);
  const sockets = new Set<Socket>();
  const track = (s: Socket) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  };
  try {
    const { keyFile, certFile } = await selfSignedCertificate(dir);
    const server = createServer({ key: await readFile(keyFile), cert: await readFile(certFile) }, (client) => {
      const upstream = connect(target.port, target.host);
      track(client);
      track(upstream);
      // Either side failing or closing ends both: a half-open pipe would hang the client.
      client.on('error', () => upstream.destroy());
      upstream.on('error', () => client.destroy());
      client.pipe(upstream).pipe(client);
    });
    // A handshake that fails (a client refusing the certificate) must not crash the test process.
    server.on('tlsClientError', () => {});
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(0, '127.0.0.1', () => resolve());
    });
    const { port } = server.address() as AddressInfo;
    return {
      host: '127.0.0.1',
      port,
      caFile: certFile,
      stop: async () => {
        for (const s of sockets) s.destroy();
        await new Promise<void>((resolve) => server.close(() => resolve()));
        await rm(dir, { recursive: true, force: true });
      },
    };
  } catch (error) {
    await rm(dir, { recursive: true, force: true });
    throw error;
  }
}
