/**
 * The `pgbackrest` stage: physical backups, WAL archiving and point-in-time recovery, driven
 * through the `pgbackrest` binary (never reimplemented). Backup side: options.ts, index.ts;
 * restore side (restore and point in time through the declared `restore` hook): restore.ts.
 * (Being built.)
 */
import { definePlugin } from '@backup-pipeline/core';
import { optionsSchema } from './options.js';
import { tapRestore } from './restore.js';

export { optionsSchema };

export default definePlugin({
  name: 'pgbackrest',
  description: 'Physical backups, WAL archiving and point-in-time recovery driven through pgBackRest.',
  options: optionsSchema,
  apply(hooks, options, api) {
    tapRestore(hooks, options, api);
  },
});
