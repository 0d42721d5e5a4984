export * from './gpg-home.js';
export * from './postgres.js';
export * from './mastodon-schema.js';
export * from './mastodon-env.js';
