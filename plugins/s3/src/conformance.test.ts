import { createLogger, SecretRegistry } from '@backup-pipeline/core';
import { startS3Server } from '@backup-pipeline/testing';
import { describeDestinationConformance } from '@backup-pipeline/testing/conformance';
import plugin from './index.js';

describeDestinationConformance('s3 (s3rver, multipart)', async () => {
  const s3 = await startS3Server();
  const secrets = new SecretRegistry();
  const log = await createLogger({ secrets, level: 'silent' });
  const options = plugin.destination!.options.parse({
    bucket: s3.bucket,
    prefix: 'mastodon/nightly',
    endpoint: s3.endpoint,
    region: s3.region,
    forcePathStyle: true,
    accessKeyId: s3.accessKeyId,
    secretAccessKey: s3.secretAccessKey,
    partSizeMB: 5,
  });
  const destination = await plugin.destination!.create(options, { name: 's3', log, secrets, configDir: '/', resolvePath: (p) => p });
  return { destination, teardown: () => s3.stop() };
});
