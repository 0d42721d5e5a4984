/**
 * The `local` destination: sets kept in a folder on this machine (another disk, a mounted NAS).
 * A thin wrapper around the core's LocalFolderDestination, the reference destination.
 */
import { definePlugin, LocalFolderDestination, z } from '@backup-pipeline/core';

export const LocalOptions = z
  .object({
    path: z.string().min(1).describe('Folder that holds the backup sets (created 0700 if missing). `~/` and paths relative to the config file are allowed.'),
  })
  .strict();

export default definePlugin({
  name: 'local',
  description: 'Destination: a folder on this machine (another disk, a mounted NAS share).',
  destination: {
    options: LocalOptions,
    create: (options, api) => new LocalFolderDestination(api.resolvePath(options.path)),
    writablePaths: (options, api) => [api.resolvePath(options.path)],
  },
});
