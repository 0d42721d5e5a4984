export * from './gpg-home.js';
export * from './sshd.js';
export * from './s3-server.js';
export * from './postgres.js';
export * from './mastodon-schema.js';
export * from './run-pipeline.js';
export * from './producer-plugin.js';
export * from './mastodon-env.js';
