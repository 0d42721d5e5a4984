/** The `bucket-copy` stage: copies an S3 media bucket to another bucket, incrementally. (Skeleton: being built.) */
import { definePlugin, z } from '@backup-pipeline/core';

export const optionsSchema = z.object({}).strict();

export default definePlugin({
  name: 'bucket-copy',
  description: 'Copies an S3 media bucket to another bucket, incrementally.',
  options: optionsSchema,
  apply() {},
});
