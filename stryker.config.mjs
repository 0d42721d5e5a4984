// Mutation testing of the pure safety modules with their unit tests only (`npm run mutation`).
// The report summary goes to bench/results/mutation.txt (see test/promises.md).
/** @type {import('@stryker-mutator/api/core').PartialStrykerOptions} */
export default {
  testRunner: 'vitest',
  vitest: { configFile: 'vitest.mutation.config.ts', related: false },
  mutate: [
    'plugins/retention/src/retention-policy.ts',
    'packages/core/src/secrets.ts',
    'packages/core/src/manifest.ts',
    'packages/core/src/sets.ts',
    'packages/core/src/destination.ts',
    'packages/core/src/names.ts',
    'packages/core/src/lock.ts',
  ],
  coverageAnalysis: 'perTest',
  // Static mutants (module-level constants: the zod schemas, the name regexes) re-run every test;
  // they are counted apart (see bench/mutation-summary.js) so a run fits in minutes.
  ignoreStatic: true,
  concurrency: Number(process.env.STRYKER_CONCURRENCY ?? 1),
  timeoutMS: 20_000,
  // Never mutate the shared working tree in place: Stryker works in a copy.
  inPlace: false,
  ignorePatterns: ['bench/work', 'demo-backups', 'backups', '.vitest-tmp', 'reports', '**/dist'],
  reporters: ['clear-text', 'progress', 'json'],
  jsonReporter: { fileName: 'reports/mutation/mutation.json' },
  thresholds: { high: 90, low: 85, break: null },
  tempDirName: '.stryker-tmp',
  cleanTempDir: 'always',
};
