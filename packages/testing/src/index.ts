// The plugin author's kit: runStages, a producer plugin, the sshd and S3 test servers. The
// throwaway PostgreSQL, gpg home and Mastodon data come from @backup-pipeline/sandbox (which the
// CLI's demo uses too) and are re-exported here, so a test needs one import.
export * from '@backup-pipeline/sandbox';
export * from './sshd.js';
export * from './s3-server.js';
export * from './tls-front.js';
export * from './run-pipeline.js';
export * from './producer-plugin.js';
export * from './redis-server.js';
