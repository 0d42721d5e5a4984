/**
 * SIGINT/SIGTERM: abort the run (children are killed, partial files removed, the lock released by
 * the runner's cleanup), then exit 130/143. A second signal exits at once.
 */
import { EXIT, isPipelineError } from '@backup-pipeline/core';
import type { GlobalOptions } from './main.js';
import { output, reportError } from './output.js';

export async function withSignals(body: (signal: AbortSignal) => Promise<number>, options: Partial<GlobalOptions> = {}): Promise<number> {
  const controller = new AbortController();
  let received: NodeJS.Signals | undefined;
  const onSignal = (signal: NodeJS.Signals) => {
    if (received) process.exit(signal === 'SIGINT' ? EXIT.sigint : EXIT.sigterm);
    received = signal;
    output.notice(`${signal} received: stopping, cleaning up…`);
    controller.abort(new Error(signal));
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    return await body(controller.signal);
  } catch (error) {
    output.clearStatus();
    if (received) {
      if (isPipelineError(error)) error.hint = 'The run was interrupted; nothing partial was kept. Run it again.';
      reportError(error, options);
      return received === 'SIGINT' ? EXIT.sigint : EXIT.sigterm;
    }
    return reportError(error, options);
  } finally {
    output.clearStatus();
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
  }
}
