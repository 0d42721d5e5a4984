/**
 * Logging: pino, JSON lines when stderr is not a TTY (or with format `json`), readable lines on a
 * TTY. Every line passes through the secrets registry before it is written.
 *
 * The readable format uses pino-pretty's `prettyFactory` (a function from one JSON line to one
 * text line), not its stream: the caller's `write` stays the only place a line goes, so an output
 * layer that owns the terminal (a status line cleared before a log line, redrawn after) sees
 * every line, in both formats.
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
  /** Where masked lines go, one call per line ending in "\n" (default: stderr, written synchronously). */
  write?: (line: string) => void;
  /** Colours in the readable format (default: stderr is a TTY and NO_COLOR is not set). */
  colorize?: boolean;
}

/** The format when none is asked for: readable on a terminal, JSON lines otherwise. */
export function defaultLogFormat(): LogFormat {
  return process.stderr.isTTY ? 'pretty' : 'json';
}

export async function createLogger(options: LoggerOptions): Promise<Logger> {
  const write = options.write ?? ((line: string) => void writeSync(2, line));
  const format = options.format ?? defaultLogFormat();
  let sink: (line: string) => void = write;
  if (format === 'pretty') {
    const { prettyFactory } = await import('pino-pretty');
    const prettify = prettyFactory({
      colorize: options.colorize ?? (!process.env.NO_COLOR && process.stderr.isTTY === true),
      // Fields the message already says (a progress record's numbers, the command line, the
      // config file) are for JSON readers; a person reads the message, prefixed by the plugin.
      ignore: 'pid,hostname,progress,pipeline,plugin,command,config,found',
      messageFormat: '{if plugin}[{plugin}] {end}{msg}',
      translateTime: 'SYS:HH:MM:ss',
    });
    sink = (line) => write(prettify(line));
  }
  // Masked before formatting, so a secret split by the formatter (colours, quoting) is still caught.
  const stream: DestinationStream = { write: (line: string) => sink(options.secrets.mask(line)) };
  return pino({ level: options.level ?? 'info', base: undefined }, stream);
}
