/**
 * The `notify` stage: POSTs a summary of the run to webhooks when it starts, succeeds or fails
 * (plain JSON, healthchecks.io pings, ntfy, Slack, Discord). It taps only advisory hooks and
 * catches every error itself: a notification that fails is a logged warning, never a failed run.
 * Webhook URLs and credential headers are registered as secrets; logs show only scheme and host.
 */
import { hostname } from 'node:os';
import { definePlugin, z, type RunContext, type RunSummary, type SecretRegistry } from '@backup-pipeline/core';
import { buildRequest, headerSecrets, redactUrl, urlSecrets, type CheckOutcome, type NotifyEvent, type NotifyFormat, type NotifyMessage } from './messages.js';

export * from './messages.js';

const EVENTS = ['start', 'success', 'failure', 'verify-success', 'verify-failure', 'restore-success', 'restore-failure'] as const;
const FORMATS = ['json', 'healthchecks', 'ntfy', 'slack', 'discord'] as const;

export const webhookSchema = z
  .object({
    url: z
      .string()
      .url()
      .refine((u) => /^https?:$/.test(new URL(u).protocol), 'must be an http:// or https:// URL')
      .describe('Where to POST. With `format: healthchecks`, the check\'s ping URL (`/start` and `/fail` are appended). Treated as a secret: logs show only its host.'),
    on: z
      .array(z.enum(EVENTS))
      .min(1)
      .default(['success', 'failure'])
      .describe('Events that notify: `start` (the run began), `success`, `failure` of a run; `verify-success`, `verify-failure` of `pipeline verify` (the drill); `restore-success`, `restore-failure` of `pipeline restore`.'),
    format: z
      .enum(FORMATS)
      .default('json')
      .describe('Body: `json` (the run summary), `healthchecks` (healthchecks.io ping with the summary as its log), `ntfy` (text with Title/Priority/Tags headers), `slack` ({ text }), `discord` ({ content }).'),
    headers: z
      .record(z.string().min(1), z.string())
      .default({})
      .describe('Extra HTTP headers (e.g. Authorization); values of auth/token/key headers are treated as secrets. Use `${ENV}` or `${file:PATH}` references for credentials.'),
    timeoutMs: z.number().int().min(100).max(300_000).default(10_000).describe('Timeout of one attempt, in milliseconds.'),
    retries: z.number().int().min(0).max(10).default(2).describe('Further attempts after a failed one (network error, timeout or non-2xx answer), with a short backoff.'),
  })
  .strict();

export const optionsSchema = z
  .object({
    webhooks: z.array(webhookSchema).min(1).describe('The webhooks to notify; each fails (and is retried) on its own.'),
  })
  .strict();

export type NotifyOptions = z.output<typeof optionsSchema>;
export type WebhookOptions = z.output<typeof webhookSchema>;

export interface SendOptions {
  secrets?: SecretRegistry;
  /** Delay before retry n (1-based), in ms. Default 500 ms × n. */
  backoffMs?: (attempt: number) => number;
}

/**
 * Sends one notification, retrying; resolves when a 2xx answer arrives, rejects with the last
 * error (message masked, URL redacted) otherwise.
 */
export async function sendNotification(webhook: WebhookOptions, message: NotifyMessage, options: SendOptions = {}): Promise<void> {
  const mask = (s: string) => (options.secrets ? options.secrets.mask(s) : s);
  const request = buildRequest(webhook.format as NotifyFormat, webhook.url, message, webhook.headers);
  const body = mask(request.body);
  const backoff = options.backoffMs ?? ((n: number) => 500 * n);
  let last: Error | undefined;
  for (let attempt = 0; attempt <= webhook.retries; attempt++) {
    if (attempt > 0) await new Promise((r) => setTimeout(r, backoff(attempt)));
    try {
      const response = await fetch(request.url, {
        method: 'POST',
        headers: request.headers,
        body,
        signal: AbortSignal.timeout(webhook.timeoutMs),
        redirect: 'follow',
      });
      // Drain the body so the connection is released.
      await response.arrayBuffer().catch(() => undefined);
      if (response.ok) return;
      last = new Error(`HTTP ${response.status} ${response.statusText}`.trim());
    } catch (error) {
      const e = error as Error & { cause?: { code?: string; message?: string } };
      last = new Error(
        e.name === 'TimeoutError' ? `no answer within ${webhook.timeoutMs} ms` : e.cause?.code ? `${e.message}: ${e.cause.code}` : e.cause?.message ? `${e.message}: ${e.cause.message}` : e.message,
      );
    }
  }
  throw new Error(mask(`${last?.message ?? 'unknown error'} (after ${webhook.retries + 1} attempt(s))`));
}

export default definePlugin({
  name: 'notify',
  description: 'POSTs the run summary to webhooks (JSON, healthchecks.io, ntfy, Slack, Discord) on start, success and failure; never fails the run.',
  options: optionsSchema,
  apply(hooks, options, api) {
    for (const webhook of options.webhooks) {
      for (const secret of [...urlSecrets(webhook.url), ...headerSecrets(webhook.headers)]) api.secrets.add(secret);
    }
    const host = hostname();

    const notify = async (event: NotifyEvent, ctx: RunContext, summary?: RunSummary, check?: CheckOutcome): Promise<void> => {
      const targets = options.webhooks.filter((w) => (w.on as readonly string[]).includes(event));
      if (targets.length === 0) return;
      const message: NotifyMessage = ctx.secrets.maskDeep({ event, pipeline: ctx.pipeline, setId: ctx.setId, startedAt: ctx.startedAt.toISOString(), host, summary, ...(check ? { check } : {}) });
      await Promise.all(
        targets.map(async (webhook) => {
          const where = `${webhook.format} ${redactUrl(webhook.url)}`;
          try {
            await sendNotification(webhook, message, { secrets: ctx.secrets });
            api.log.debug({ event, webhook: where }, `notified ${where} (${event})`);
          } catch (error) {
            api.log.warn({ event, webhook: where, err: (error as Error).message }, `notification to ${where} (${event}) failed: ${(error as Error).message}`);
          }
        }),
      );
    };

    hooks.plan.tapPromise('notify', async (plan) => {
      for (const w of options.webhooks) plan.add({ plugin: 'notify', hook: 'succeeded', description: `notify ${w.format} ${redactUrl(w.url)} on ${w.on.join(', ')}` });
    });
    hooks.started.tapPromise('notify', (ctx) => notify('start', ctx));
    hooks.succeeded.tapPromise('notify', (summary, ctx) => notify('success', ctx, summary));
    hooks.failed.tapPromise('notify', (_error, summary, ctx) => notify('failure', ctx, summary));
    // The restore half: a failed drill is worth waking someone for.
    hooks.verified.tapPromise('notify', (s, ctx) =>
      notify(s.ok ? 'verify-success' : 'verify-failure', ctx, undefined, {
        command: 'verify',
        ok: s.ok,
        from: s.from,
        durationMs: s.durationMs,
        details: s.artifacts.map((a) => `${a.name}: ${a.verification ? 'verified' : 'checksum ok'}`),
        error: s.error,
      }),
    );
    hooks.restored.tapPromise('notify', (s, ctx) =>
      notify(s.ok ? 'restore-success' : 'restore-failure', ctx, undefined, {
        command: 'restore',
        ok: s.ok,
        from: s.from,
        durationMs: s.durationMs,
        details: s.reports.map((r) => `${r.artifact} → ${r.into}${r.rows !== undefined ? `: ${r.tables} tables, ${r.rows} rows` : ''}`),
        error: s.error,
      }),
    );
  },
});
