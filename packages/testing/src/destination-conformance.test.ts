import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { LocalFolderDestination } from '@backup-pipeline/core';
import { describeDestinationConformance } from './destination-conformance.js';

describeDestinationConformance('core LocalFolderDestination', async () => {
  const root = await mkdtemp(join(tmpdir(), 'conformance-local-'));
  return { destination: new LocalFolderDestination(join(root, 'backups')), teardown: () => rm(root, { recursive: true, force: true }) };
});
