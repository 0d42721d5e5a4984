/** The `redis` stage: a consistent Redis snapshot (RDB) as an artifact. (Skeleton: being built.) */
import { definePlugin, z } from '@backup-pipeline/core';

export const optionsSchema = z.object({}).strict();

export default definePlugin({
  name: 'redis',
  description: 'A consistent Redis snapshot (RDB) as an artifact.',
  options: optionsSchema,
  apply() {},
});
