/**
 * Node.js process warnings (a dependency's deprecation, the AWS SDK's Node.js version notice) go
 * out as log records like everything else: one line, masked, in the run's format. Node's own
 * printer writes several plain lines to stderr, which breaks `--log-format json` and fills a
 * cron mail every night. Warnings before the logger exists wait for it; when a command ends
 * without one (`--help`), they are printed as Node prints them.
 */
import type { Logger } from '@backup-pipeline/core';

let pending: Error[] | undefined;
let route: ((warning: Error) => void) | undefined;

/** Takes warnings over from Node's printer (once, at start). */
export function captureWarnings(): void {
  if (pending) return;
  pending = [];
  process.removeAllListeners('warning');
  process.on('warning', (warning) => (route ? route(warning) : pending!.push(warning)));
  process.once('exit', () => {
    for (const w of pending ?? []) process.stderr.write(`(node:${process.pid}) ${w.name}: ${w.message}\n`);
  });
}

/** From now on (and for those that waited), warnings are records of `log`. */
export function routeWarnings(log: Logger): void {
  route = (warning) => log.warn({ warning: warning.name }, `${warning.name}: ${warning.message.replace(/\s*\n\s*/g, ' ').trim()}`);
  for (const w of pending?.splice(0) ?? []) route(w);
}
