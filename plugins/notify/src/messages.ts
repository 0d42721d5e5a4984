/**
 * What a notification says, per format: pure functions from a run event to an HTTP request
 * (URL, headers, body). Nothing here sends anything; `index.ts` does.
 */
import { formatBytes, formatDuration, type RunSummary } from '@backup-pipeline/core';

/** A run's events, and the outcomes of `pipeline verify` (the drill) and `pipeline restore`. */
export type NotifyEvent = 'start' | 'success' | 'failure' | 'verify-success' | 'verify-failure' | 'restore-success' | 'restore-failure';

/** The outcome of a `pipeline verify` or `pipeline restore` (from the `verified` / `restored` hooks). */
export interface CheckOutcome {
  command: 'verify' | 'restore';
  ok: boolean;
  /** The destination the set was fetched from. */
  from: string;
  durationMs: number;
  /** What was checked or restored, one line each. */
  details: string[];
  error?: { code: string; message: string };
}

const FAILURES: readonly NotifyEvent[] = ['failure', 'verify-failure', 'restore-failure'];
export type NotifyFormat = 'json' | 'healthchecks' | 'ntfy' | 'slack' | 'discord';

/** What every format is built from: the run summary (absent for `start`) and a few facts. */
export interface NotifyMessage {
  event: NotifyEvent;
  pipeline: string;
  setId: string;
  startedAt: string;
  host: string;
  summary?: RunSummary;
  /** For verify-* and restore-* events. */
  check?: CheckOutcome;
}

export interface NotifyRequest {
  url: string;
  headers: Record<string, string>;
  body: string;
}

/** The JSON payload of `format: json`: the run summary with the event and host. */
export function jsonPayload(message: NotifyMessage): Record<string, unknown> {
  const { event, pipeline, setId, startedAt, host, summary } = message;
  const base = { event, pipeline, setId, startedAt, host };
  if (message.check) return { ...base, ...message.check, event, host };
  if (!summary) return base;
  const bytes = summary.artifacts.reduce((n, a) => n + a.bytes, 0);
  return { ...base, ...summary, event, host, bytes };
}


/** One line: `backup-pipeline: nightly succeeded on host`. */
export function title(message: NotifyMessage): string {
  if (message.check) {
    return `backup-pipeline: ${message.check.command} of ${message.pipeline} ${message.check.ok ? 'succeeded' : 'FAILED'} on ${message.host}`;
  }
  const verb = message.event === 'start' ? 'started' : message.event === 'success' ? 'succeeded' : 'FAILED';
  return `backup-pipeline: ${message.pipeline} ${verb} on ${message.host}`;
}

/** The human-readable text of ntfy, Slack, Discord and healthchecks.io bodies. */
export function text(message: NotifyMessage): string {
  const { summary } = message;
  const lines = [title(message), `set ${message.setId}`];
  if (message.check) {
    const { check } = message;
    lines.push(`fetched from ${check.from || '-'}, ${formatDuration(check.durationMs)}`, ...check.details.map((d) => `  ${d}`));
    if (check.error) lines.push(`error ${check.error.code}: ${check.error.message}`);
    return lines.join('\n');
  }
  if (!summary) return [...lines, `started at ${message.startedAt}`].join('\n');
  const bytes = summary.artifacts.reduce((n, a) => n + a.bytes, 0);
  lines.push(`duration ${formatDuration(summary.durationMs)}, ${summary.artifacts.length} artifact(s), ${formatBytes(bytes)}`);
  for (const a of summary.artifacts) lines.push(`  ${a.name} ${formatBytes(a.bytes)}${a.encrypted ? ' (encrypted)' : ''}`);
  for (const d of summary.destinations) lines.push(`  → ${d.destination}: ${d.ok ? `ok, ${formatBytes(d.bytes)} in ${formatDuration(d.durationMs)}` : `FAILED: ${d.error ?? ''}`}`);
  if (summary.error) {
    const where = summary.error.plugin ? ` [${summary.error.plugin}${summary.error.hook ? ` → ${summary.error.hook}` : ''}]` : '';
    lines.push(`error${where} ${summary.error.code}: ${summary.error.message}`);
    if (summary.error.hint) lines.push(`hint: ${summary.error.hint}`);
  }
  return lines.join('\n');
}

const NTFY = {
  start: { priority: '2', tags: 'hourglass_flowing_sand' },
  success: { priority: '3', tags: 'white_check_mark' },
  failure: { priority: '5', tags: 'rotating_light' },
  'verify-success': { priority: '2', tags: 'white_check_mark' },
  'verify-failure': { priority: '5', tags: 'rotating_light' },
  'restore-success': { priority: '3', tags: 'white_check_mark' },
  'restore-failure': { priority: '5', tags: 'rotating_light' },
} as const;

/** healthchecks.io: `/start` when a run begins, the bare URL on success, `/fail` on failure. */
export function healthchecksUrl(base: string, event: NotifyEvent): string {
  const url = new URL(base);
  const suffix = event === 'start' ? '/start' : FAILURES.includes(event) ? '/fail' : '';
  url.pathname = url.pathname.replace(/\/+$/, '') + suffix;
  return url.href;
}

/** Header values must be ISO-8859-1: anything else becomes `?`. */
const headerSafe = (value: string) => value.replace(/[^\x20-\x7e]/g, '?');

/** The request for one webhook and one event; `headers` from the config are added last. */
export function buildRequest(format: NotifyFormat, url: string, message: NotifyMessage, headers: Record<string, string> = {}): NotifyRequest {
  switch (format) {
    case 'json':
      return { url, headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(jsonPayload(message)) };
    case 'healthchecks':
      // healthchecks.io keeps the body (up to 100 kB) as the ping's log.
      return { url: healthchecksUrl(url, message.event), headers: { 'content-type': 'text/plain; charset=utf-8', ...headers }, body: text(message) };
    case 'ntfy': {
      const { priority, tags } = NTFY[message.event];
      const body = text(message).split('\n').slice(1).join('\n');
      return {
        url,
        headers: { 'content-type': 'text/plain; charset=utf-8', Title: headerSafe(title(message)), Priority: priority, Tags: tags, ...headers },
        body,
      };
    }
    case 'slack':
      return { url, headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify({ text: text(message) }) };
    case 'discord': {
      // Discord rejects messages over 2000 characters.
      const content = text(message);
      return { url, headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify({ content: content.length > 2000 ? `${content.slice(0, 1997)}...` : content }) };
    }
  }
}

/** A URL as it may be logged: scheme, host and port only (paths and queries often hold tokens). */
export function redactUrl(url: string): string {
  try {
    const u = new URL(url);
    return `${u.protocol}//${u.host}${u.pathname !== '/' || u.search ? '/***' : '/'}`;
  } catch {
    return '(invalid URL)';
  }
}

/**
 * The parts of a webhook URL that may be secret: the whole URL, its credentials, token-like path
 * segments (Slack, Discord, healthchecks.io keys) and query values. Short path segments are not
 * registered, so an ntfy topic like `/backups` does not mask every `/var/backups` in the logs; the
 * plugin itself only ever logs `redactUrl(url)`.
 */
export function urlSecrets(url: string): string[] {
  const out = [url];
  try {
    const u = new URL(url);
    out.push(u.href);
    if (u.password) out.push(decodeURIComponent(u.password), u.password);
    for (const segment of u.pathname.split('/')) if (segment.length >= 12) out.push(segment, decodeURIComponent(segment));
    for (const value of u.searchParams.values()) if (value.length >= 6) out.push(value);
  } catch {
    /* validated by the schema */
  }
  return out;
}

/** Header values that carry credentials (Authorization, tokens, keys). */
export function headerSecrets(headers: Record<string, string>): string[] {
  const out: string[] = [];
  for (const [name, value] of Object.entries(headers)) {
    if (!/auth|token|key|secret|pass|cookie/i.test(name)) continue;
    out.push(value);
    const credential = /^\S+\s+(\S{6,})$/.exec(value)?.[1]; // `Bearer xyz`: the credential alone too
    if (credential) out.push(credential);
  }
  return out;
}
