// Tests run the TypeScript sources through tsx; worker threads are off because some tests
// patch process-wide state (clock, env) and spawn root-only helpers.
export default {
  files: ['test/**/*.test.ts'],
  extensions: { ts: 'module' },
  nodeArguments: ['--import=tsx/esm', '--enable-source-maps'],
  workerThreads: false,
  concurrency: 2,
  timeout: '120s',
}
