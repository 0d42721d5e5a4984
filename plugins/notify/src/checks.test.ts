import { describe, expect, it } from 'vitest';
import { buildRequest, healthchecksUrl, text, type NotifyMessage } from './messages.js';

const failed: NotifyMessage = {
  event: 'verify-failure',
  pipeline: 'nightly',
  setId: '20261201T014500Z-mastodon',
  startedAt: '2026-12-01T02:00:00.000Z',
  host: 'mastodon.example',
  check: { command: 'verify', ok: false, from: 'offsite', durationMs: 4200, details: [], error: { code: 'CHECKSUM_MISMATCH', message: 'offsite/…/x.dump.zst.age does not match its manifest' } },
};

describe('notifications of the restore half', () => {
  it('a failed drill says what, where and why in every format; healthchecks gets /fail, ntfy urgent', () => {
    expect(text(failed)).toContain('backup-pipeline: verify of nightly FAILED on mastodon.example');
    expect(text(failed)).toContain('fetched from offsite');
    expect(text(failed)).toContain('error CHECKSUM_MISMATCH: ');
    expect(JSON.parse(buildRequest('json', 'https://hooks.example/x', failed).body)).toMatchObject({ event: 'verify-failure', command: 'verify', ok: false, from: 'offsite', setId: failed.setId });
    expect(buildRequest('healthchecks', 'https://hc.example/ping/abc', failed).url).toBe('https://hc.example/ping/abc/fail');
    expect(buildRequest('ntfy', 'https://ntfy.example/t', failed).headers).toMatchObject({ Priority: '5' });
    expect(healthchecksUrl('https://hc.example/ping/abc', 'restore-success')).toBe('https://hc.example/ping/abc');
  });

  it('a restore that worked lists what went where', () => {
    const ok: NotifyMessage = { ...failed, event: 'restore-success', check: { command: 'restore', ok: true, from: 'work', durationMs: 1000, details: ['mastodon_production.dump.zst → mastodon_production: 16 tables, 3899 rows'] } };
    expect(text(ok)).toContain('backup-pipeline: restore of nightly succeeded on mastodon.example');
    expect(text(ok)).toContain('mastodon_production.dump.zst → mastodon_production: 16 tables');
  });
});
