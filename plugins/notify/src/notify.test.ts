import { createServer, type IncomingHttpHeaders, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { runStages } from '@backup-pipeline/testing';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { buildRequest, headerSecrets, healthchecksUrl, redactUrl, urlSecrets, type NotifyMessage } from './index.js';

const here = dirname(fileURLToPath(import.meta.url));
const tmpRoot = resolve(here, '../../../.vitest-tmp');
const TOKEN = 'a1b2c3d4-e5f6-4789-abcd-0123456789ab';
const BEARER = 'bearer-secret-xyz-987';

interface Received {
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
  body: string;
}

let server: Server;
let base: string;
let received: Received[] = [];
const hanging: ServerResponse[] = [];
let dir: string;
let fixture: string;

beforeAll(async () => {
  await mkdir(tmpRoot, { recursive: true });
  dir = await mkdtemp(join(tmpRoot, 'notify-'));
  fixture = join(dir, 'fixture.mjs');
  // A small stage plugin: writes one artifact, or fails with its own error code.
  await writeFile(
    fixture,
    `import { definePlugin, PipelineError, writeFileAtomic, z } from '@backup-pipeline/core';
import { join } from 'node:path';
export default definePlugin({
  name: 'fixture',
  description: 'test stage',
  options: z.object({ fail: z.boolean().default(false) }).strict(),
  apply(hooks, options) {
    hooks.produce.tapPromise('fixture', async (ctx) => {
      if (options.fail) throw new PipelineError('FIXTURE_BROKE', 'the fixture failed on purpose', { hint: 'Stop breaking it.' });
      const path = join(ctx.setDir, 'data.txt');
      ctx.addArtifact({ name: 'data.txt', path, kind: 'test', format: 'file', compression: 'none', meta: {}, ...(await writeFileAtomic(path, 'some data')) });
    });
  },
});
`,
  );
  server = createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (c: Buffer) => chunks.push(c));
    req.on('end', () => {
      const path = req.url ?? '/';
      received.push({ method: req.method ?? '', path, headers: req.headers, body: Buffer.concat(chunks).toString('utf8') });
      if (path.startsWith('/hang')) return void hanging.push(res);
      res.statusCode = path.startsWith('/broken') ? 500 : 200;
      res.end('ok');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  for (const res of hanging) res.destroy();
  server?.closeAllConnections();
  await new Promise((r) => server?.close(r));
  if (dir) await rm(dir, { recursive: true, force: true });
});

beforeEach(() => {
  received = [];
});

const run = (webhooks: unknown[], fail = false) => runStages({ stages: [{ use: fixture, fail }, { use: 'notify', webhooks }] });
// eslint-disable-next-line @typescript-eslint/no-explicit-any -- parsed JSON bodies in assertions
const json = (r: Received) => JSON.parse(r.body) as Record<string, any>;

describe('notify through a real run and a real HTTP server', () => {
  it('pings on start and posts the JSON summary on success, with no secret in logs', async () => {
    const out = await run([{ url: `${base}/hook/${TOKEN}?token=${BEARER}q`, on: ['start', 'success', 'failure'], headers: { Authorization: `Bearer ${BEARER}` } }]);
    expect(out.error).toBeUndefined();
    expect(received.map((r) => json(r).event)).toEqual(['start', 'success']);
    const [start, success] = received as [Received, Received];
    expect(start.method).toBe('POST');
    expect(start.headers['content-type']).toBe('application/json');
    expect(start.headers.authorization).toBe(`Bearer ${BEARER}`);
    expect(json(start)).toMatchObject({ event: 'start', pipeline: 'test', setId: out.result!.summary.setId });
    const payload = json(success);
    expect(payload).toMatchObject({ event: 'success', ok: true, pipeline: 'test', setId: out.result!.summary.setId, bytes: 9 });
    expect(payload.artifacts).toEqual([expect.objectContaining({ name: 'data.txt', bytes: 9, encrypted: false })]);
    expect(payload.durationMs).toBeGreaterThanOrEqual(0);
    expect(payload.stages.some((s: { plugin: string }) => s.plugin === 'fixture')).toBe(true);
    expect(payload.error).toBeUndefined();
    const logs = out.logs.join('\n');
    expect(logs).not.toContain(TOKEN);
    expect(logs).not.toContain(BEARER);
    await out.cleanup();
  });

  it('posts the failure with its code, message and hint (and not on start unless asked)', async () => {
    const out = await run([{ url: `${base}/hook` }], true);
    expect(out.error?.code).toBe('FIXTURE_BROKE');
    expect(received).toHaveLength(1);
    const payload = json(received[0]!);
    expect(payload).toMatchObject({
      event: 'failure',
      ok: false,
      error: { code: 'FIXTURE_BROKE', message: 'the fixture failed on purpose', hint: 'Stop breaking it.', plugin: 'fixture', hook: 'produce' },
    });
    await out.cleanup();
  });

  it('a webhook that answers 500 or hangs leaves the run green and logs a warning without the URL path', async () => {
    const started = Date.now();
    const out = await run([
      { url: `${base}/broken/${TOKEN}`, retries: 1 },
      { url: `${base}/hang/${TOKEN}`, timeoutMs: 300, retries: 0 },
      { url: `${base}/fine`, retries: 0 },
    ]);
    expect(out.error).toBeUndefined();
    expect(out.result!.summary.ok).toBe(true);
    expect(Date.now() - started).toBeLessThan(10_000);
    expect(received.filter((r) => r.path.startsWith('/broken'))).toHaveLength(2);
    expect(received.filter((r) => r.path.startsWith('/fine'))).toHaveLength(1);
    const warnings = out.logs.map((l) => JSON.parse(l) as { level: number; msg: string }).filter((l) => l.level === 40);
    expect(warnings.map((w) => w.msg)).toEqual(
      expect.arrayContaining([
        `notification to json ${base}/*** (success) failed: HTTP 500 Internal Server Error (after 2 attempt(s))`,
        `notification to json ${base}/*** (success) failed: no answer within 300 ms (after 1 attempt(s))`,
      ]),
    );
    expect(out.logs.join('\n')).not.toContain(TOKEN);
    await out.cleanup();
  });

  it('a webhook that cannot be reached at all is a warning too', async () => {
    const out = await run([{ url: 'http://127.0.0.1:9/nothing-listens', retries: 0 }]);
    expect(out.error).toBeUndefined();
    expect(out.logs.join('\n')).toMatch(/notification to json http:\/\/127\.0\.0\.1:9\/\*\*\* \(success\) failed: fetch failed/);
    await out.cleanup();
  });

  it('speaks healthchecks.io, ntfy, Slack and Discord', async () => {
    const all = ['start', 'success', 'failure'];
    const hooks = [
      { url: `${base}/hc/${TOKEN}/`, format: 'healthchecks', on: all },
      { url: `${base}/ntfy/backups`, format: 'ntfy', on: all },
      { url: `${base}/slack`, format: 'slack' },
      { url: `${base}/discord`, format: 'discord' },
    ];
    const ok = await run(hooks);
    expect(ok.error).toBeUndefined();
    const failed = await run(hooks, true);
    expect(failed.error?.code).toBe('FIXTURE_BROKE');
    const paths = received.map((r) => r.path);
    expect(paths.filter((p) => p.startsWith('/hc/')).sort()).toEqual([`/hc/${TOKEN}`, `/hc/${TOKEN}/fail`, `/hc/${TOKEN}/start`, `/hc/${TOKEN}/start`].sort());
    const hcFail = received.find((r) => r.path.endsWith('/fail'))!;
    expect(hcFail.body).toContain('FIXTURE_BROKE: the fixture failed on purpose');

    const ntfy = received.filter((r) => r.path === '/ntfy/backups');
    expect(ntfy.map((r) => [r.headers.priority, r.headers.tags])).toEqual([
      ['2', 'hourglass_flowing_sand'],
      ['3', 'white_check_mark'],
      ['2', 'hourglass_flowing_sand'],
      ['5', 'rotating_light'],
    ]);
    expect(ntfy[3]!.headers.title).toMatch(/^backup-pipeline: test FAILED on /);
    expect(ntfy[3]!.headers['content-type']).toBe('text/plain; charset=utf-8');
    expect(ntfy[3]!.body).toContain('hint: Stop breaking it.');
    expect(ntfy[1]!.body).toContain('data.txt 9 B');

    const slack = received.filter((r) => r.path === '/slack').map(json);
    expect(Object.keys(slack[0]!)).toEqual(['text']);
    expect(slack[0]!.text).toMatch(/^backup-pipeline: test succeeded on /);
    expect(slack[1]!.text).toContain('FIXTURE_BROKE');
    const discord = received.filter((r) => r.path === '/discord').map(json);
    expect(Object.keys(discord[0]!)).toEqual(['content']);
    expect(discord[1]!.content).toMatch(/^backup-pipeline: test FAILED on /);
    await ok.cleanup();
    await failed.cleanup();
  });

  it('rejects invalid options with their paths', async () => {
    await expect(run([{ url: 'ftp://x/y' }])).rejects.toThrow(/webhooks\[0\]\.url/);
    await expect(run([{ url: `${base}/x`, format: 'teams' }])).rejects.toThrow(/webhooks\[0\]\.format/);
    await expect(run([{ url: `${base}/x`, on: ['sometimes'] }])).rejects.toThrow(/webhooks\[0\]\.on\[0\]/);
    await expect(run([{ url: `${base}/x`, extra: 1 }])).rejects.toThrow(/extra/);
  });
});

describe('messages', () => {
  const message: NotifyMessage = { event: 'success', pipeline: 'nightly', setId: '20261125T014500Z-mastodon', startedAt: '2026-11-25T01:45:00.000Z', host: 'masto' };
  it('appends the healthchecks.io suffixes to the ping URL path, keeping the query', () => {
    expect(healthchecksUrl('https://hc-ping.com/abc/', 'start')).toBe('https://hc-ping.com/abc/start');
    expect(healthchecksUrl('https://hc-ping.com/abc', 'success')).toBe('https://hc-ping.com/abc');
    expect(healthchecksUrl('https://hc-ping.com/key/slug?create=1', 'failure')).toBe('https://hc-ping.com/key/slug/fail?create=1');
  });
  it('redacts paths and queries from logged URLs and registers token-like parts as secrets', () => {
    expect(redactUrl('https://hooks.slack.com/services/T0/B0/XXXX')).toBe('https://hooks.slack.com/***');
    expect(redactUrl('https://user:pw@ntfy.example:8443/')).toBe('https://ntfy.example:8443/');
    const secrets = urlSecrets(`https://u:p%40ss@x.example/api/webhooks/123/${TOKEN}?key=abcdefgh&x=1`);
    expect(secrets).toEqual(expect.arrayContaining([TOKEN, 'p@ss', 'abcdefgh']));
    expect(secrets).not.toContain('api');
    expect(headerSecrets({ Authorization: 'Bearer abcdefg', 'X-Other': 'plain' })).toEqual(['Bearer abcdefg', 'abcdefg']);
  });
  it('builds each format', () => {
    expect(buildRequest('slack', 'https://s/x', message).body).toBe(JSON.stringify({ text: `backup-pipeline: nightly succeeded on masto\nset 20261125T014500Z-mastodon\nstarted at 2026-11-25T01:45:00.000Z` }));
    expect(JSON.parse(buildRequest('discord', 'https://d/x', message).body)).toHaveProperty('content');
    expect(buildRequest('ntfy', 'https://n/t', message, { Priority: '1' }).headers).toMatchObject({ Title: 'backup-pipeline: nightly succeeded on masto', Priority: '1' });
    expect(JSON.parse(buildRequest('json', 'https://j/x', message).body)).toEqual({ ...message });
  });
});
