// The unit tests of the pure safety modules, for Stryker (`npm run mutation`). No servers, no tools.
import { defineConfig } from 'vitest/config';

export default defineConfig({
  test: {
    include: [
      'plugins/retention/src/retention-policy*.test.ts',
      'packages/core/src/secrets.test.ts',
      'packages/core/src/manifest*.test.ts',
      'packages/core/src/sets*.test.ts',
      'packages/core/src/destination.test.ts',
      'packages/core/src/names.test.ts',
      'packages/core/src/lock*.test.ts',
    ],
    exclude: ['**/node_modules/**', '**/dist/**'],
    // The lock race runs the compiled dist/lock.js in child processes, which mutants never reach.
    testNamePattern: /^(?!lock under contention)/,
    pool: 'forks',
    maxWorkers: 1,
  },
});
