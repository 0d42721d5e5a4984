import { startSshd } from '@backup-pipeline/testing';
import { describeDestinationConformance } from '@backup-pipeline/testing/conformance';
import { make, remoteOptions } from './test-support.js';

describeDestinationConformance('rsync over ssh (sha256sum verify)', async () => {
  const sshd = await startSshd();
  return { destination: await make(remoteOptions(sshd, `${sshd.dir}/remote backups ü`)), teardown: () => sshd.cleanup() };
});

