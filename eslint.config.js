// Lint: ESLint's and typescript-eslint's recommended rules (syntax-only, fast), on every package.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['**/dist/**', '**/node_modules/**', 'bench/results/**', 'bench/work/**'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    languageOptions: { globals: { process: 'readonly', console: 'readonly', URL: 'readonly', setTimeout: 'readonly', clearTimeout: 'readonly', setInterval: 'readonly', clearInterval: 'readonly', AbortController: 'readonly', AbortSignal: 'readonly', Buffer: 'readonly', fetch: 'readonly' } },
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_', destructuredArrayIgnorePattern: '^_' }],
      '@typescript-eslint/no-explicit-any': 'error',
      // Names and env values are checked for control characters on purpose.
      'no-control-regex': 'off',
    },
  },
  {
    // The core and the CLI know plugins only through the hooks and definePlugin's declarations:
    // importing a plugin package there means the plugin API is missing something (STYLE.md §8).
    files: ['packages/core/src/**/*.ts', 'packages/cli/src/**/*.ts'],
    ignores: ['**/*.test.ts', '**/test-fixtures.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              group: ['@backup-pipeline/plugin-*', '**/plugins/*/src/**'],
              message: 'The core and the CLI must not import a plugin: tap a hook or add a declaration to definePlugin instead.',
            },
          ],
        },
      ],
    },
  },
);
