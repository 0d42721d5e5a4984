import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startSshd } from '@backup-pipeline/testing';
import { describeDestinationConformance } from '@backup-pipeline/testing/conformance';
import { make, remoteOptions } from './test-support.js';

describeDestinationConformance(
  'rsync over ssh (rsync-checksum verify)',
  async () => {
    const sshd = await startSshd();
    return { destination: await make({ ...remoteOptions(sshd, `${sshd.dir}/sets`), verify: 'rsync-checksum' }), teardown: () => sshd.cleanup() };
  },
  { largeFileBytes: 8 * 1024 * 1024 },
);

describeDestinationConformance(
  'rsync to a local path',
  async () => {
    const root = await mkdtemp(join(tmpdir(), 'rsync-local-'));
    return { destination: await make({ target: join(root, 'sets') }), teardown: () => rm(root, { recursive: true, force: true }) };
  },
  { largeFileBytes: 8 * 1024 * 1024 },
);

