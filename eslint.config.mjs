// @ts-check
import tseslint from 'typescript-eslint';
import { builtinModules } from 'node:module';

const nodeBuiltins = [...builtinModules, ...builtinModules.map((m) => `node:${m}`)];

export default tseslint.config(
  { ignores: ['dist/**', 'node_modules/**', '.tools/**', 'libvirt/build/**', 'libvirt/dist/**', 'coverage/**'] },
  ...tseslint.configs.recommended,
  {
    files: ['**/*.ts'],
    languageOptions: { parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname } },
    rules: {
      '@typescript-eslint/no-floating-promises': 'error',
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
    },
  },
  {
    // The binding package lints against its own test tsconfig (its build tsconfig leaves tests out).
    files: ['libvirt/**/*.ts'],
    languageOptions: {
      parserOptions: {
        projectService: false,
        project: './libvirt/tsconfig.test.json',
        tsconfigRootDir: import.meta.dirname,
      },
    },
  },
  {
    // Workflow code runs in Temporal's deterministic sandbox: no Node built-ins, no I/O. It may name the activities'
    // and the repository's types (erased), never import code that does I/O (docs/adr/0008-layers-and-failures.md).
    files: ['workflows/**/*.ts'],
    rules: {
      '@typescript-eslint/no-restricted-imports': [
        'error',
        {
          paths: nodeBuiltins,
          patterns: [
            { group: ['@groupsnap/libvirt', '**/hypervisor/**', '**/worker/**', '**/cli/**', '**/client/**'] },
            { group: ['**/dev/**', '**/bench/**'] },
            { group: ['**/activities/**', '**/backup/**'], allowTypeImports: true },
          ],
        },
      ],
    },
  },
  {
    // The ground floor: common/ imports no other product folder (only libraries and itself).
    files: ['common/**/*.ts'],
    rules: {
      'no-restricted-imports': [
        'error',
        {
          patterns: [
            {
              group: ['../*', '!../common', '!../common/**'],
              message: 'common/ is the ground floor: it imports no other product folder',
            },
          ],
        },
      ],
    },
  },
  {
    // One failure registry (common/failures.ts): every ApplicationFailure is made by failure() with a declared type.
    files: [
      'activities/**/*.ts',
      'backup/**/*.ts',
      'cli/**/*.ts',
      'client/**/*.ts',
      'common/**/*.ts',
      'hypervisor/**/*.ts',
      'worker/**/*.ts',
      'workflows/**/*.ts',
    ],
    ignores: ['common/failures.ts'],
    rules: {
      'no-restricted-syntax': [
        'error',
        {
          selector:
            "CallExpression[callee.object.name='ApplicationFailure'][callee.property.name=/^(create|nonRetryable|retryable|fromError)$/]",
          message: "make failures with failure('<kind>', ...) of common/failures.ts (declare a new kind there)",
        },
        {
          selector: "NewExpression[callee.name='ApplicationFailure']",
          message: "make failures with failure('<kind>', ...) of common/failures.ts (declare a new kind there)",
        },
      ],
    },
  },
  { files: ['**/*.js', '**/*.mjs', '**/*.cjs'], ...tseslint.configs.disableTypeChecked },
  // Plain CommonJS scripts (build script, test fixtures, jest configs).
  { files: ['**/*.js', '**/*.cjs'], rules: { '@typescript-eslint/no-require-imports': 'off' } },
);
