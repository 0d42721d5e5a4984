/** The `pgbackrest` stage: physical backups, WAL archiving and point-in-time recovery driven through pgBackRest. (Skeleton: being built.) */
import { definePlugin, z } from '@backup-pipeline/core';

export const optionsSchema = z.object({}).strict();

export default definePlugin({
  name: 'pgbackrest',
  description: 'Physical backups, WAL archiving and point-in-time recovery driven through pgBackRest.',
  options: optionsSchema,
  apply() {},
});
