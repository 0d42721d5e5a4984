/**
 * Logging: pino, JSON lines when stderr is not a TTY (or with format `json`), readable lines on a
 * TTY. Every line passes through the secrets registry before it is written.
 */
import { writeSync } from 'node:fs';
import { pino, type Logger, type LevelWithSilent, type DestinationStream } from 'pino';
import type { SecretRegistry } from './secrets.js';

export type { Logger } from 'pino';
export type LogFormat = 'json' | 'pretty';

export interface LoggerOptions {
  level?: LevelWithSilent;
  format?: LogFormat;
  secrets: SecretRegistry;
  /** Where masked lines go (default: stderr, written synchronously). */
  write?: (line: string) => void;
}

export async function createLogger(options: LoggerOptions): Promise<Logger> {
  const write = options.write ?? ((line: string) => writeSync(2, line));
  const format = options.format ?? (process.stderr.isTTY ? 'pretty' : 'json');
  let sink: (line: string) => void = write;
  if (format === 'pretty') {
    const { default: pretty } = await import('pino-pretty');
    const prettyStream = pretty({
      colorize: !process.env.NO_COLOR && process.stderr.isTTY === true,
      sync: true,
      ignore: 'pid,hostname',
      translateTime: 'HH:MM:ss',
      destination: { write: (s: string) => (write(s), true) } as never,
    });
    sink = (line) => prettyStream.write(line);
  }
  const stream: DestinationStream = { write: (line: string) => sink(options.secrets.mask(line)) };
  return pino({ level: options.level ?? 'info', base: undefined }, stream);
}
