import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vitest/config';

export default defineConfig({
  // Model files and generated trainers import `lorafa`: in the tests, the sources' own door (the
  // package itself resolves it to dist/, which the packaging test builds and installs).
  resolve: { alias: { lorafa: fileURLToPath(new URL('./src/index.ts', import.meta.url)) } },
  test: {
    include: ['test/**/*.test.ts'],
    setupFiles: ['test/setup.ts'],
    testTimeout: 120_000,
    hookTimeout: 120_000,
  },
});
