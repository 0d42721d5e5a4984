/** The restore side of the pgbackrest stage: restore and point-in-time recovery. (Being built.) */
import type { PluginApi, TapOnlyHooks } from '@backup-pipeline/core';
import type { PgbackrestOptions } from './options.js';

export function tapRestore(_hooks: TapOnlyHooks, _options: PgbackrestOptions, _api: PluginApi): void {}
