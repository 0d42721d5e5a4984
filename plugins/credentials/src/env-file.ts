/** The dotenv reader lives in the core (the CLI's `init` reads .env.production too); kept here for this plugin's imports. */
export { parseEnvFile, type EnvEntry } from '@backup-pipeline/core';
