/** The `media` stage: incremental media (Mastodon public/system) with hard-linked snapshots or content-addressed objects. (Skeleton: being built.) */
import { definePlugin, z } from '@backup-pipeline/core';

export const optionsSchema = z.object({}).strict();

export default definePlugin({
  name: 'media',
  description: 'Incremental media (Mastodon public/system) with hard-linked snapshots or content-addressed objects.',
  options: optionsSchema,
  apply() {},
});
