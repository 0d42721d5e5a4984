/** The logger masks every registered secret before a line leaves it, in both formats (not only the CLI's output layer). */
import { describe, expect, it } from 'vitest';
import { createLogger, type LogFormat } from './logger.js';
import { SecretRegistry } from './secrets.js';

const secret = 'Lo"g in\\s3cr&t/é';
const forms = { raw: secret, json: JSON.stringify(secret).slice(1, -1), url: encodeURIComponent(secret) };

describe.each<LogFormat>(['json', 'pretty'])('createLogger (format %s)', (format) => {
  it('masks a registered secret raw, JSON-escaped and URL-encoded, in messages, fields and errors', async () => {
    const secrets = new SecretRegistry();
    secrets.add(secret);
    const lines: string[] = [];
    const log = await createLogger({ level: 'info', format, secrets, colorize: false, write: (l) => lines.push(l) });
    log.info(`leak raw ${forms.raw}`);
    log.info(`leak json ${forms.json}`);
    log.info(`leak url ${forms.url}`);
    log.warn({ leaked: secret, nested: { url: `postgres://u:${forms.url}@h/db` } }, 'leak field');
    log.error({ err: new Error(`failed with ${secret}`) }, 'leak error');
    const text = lines.join('');
    expect(lines.length).toBeGreaterThanOrEqual(5);
    for (const [form, value] of Object.entries(forms)) expect(text.includes(value), `the ${form} form leaked:\n${text}`).toBe(false);
    expect(text).not.toContain('s3cr');
    for (const what of ['raw', 'json', 'url']) expect(text).toMatch(new RegExp(`leak ${what} "?\\*\\*\\*`));
    expect(text).toContain('leak field');
    expect(text).toContain('failed with ***');
  });
});
