// Tests run the TypeScript sources through tsx; worker threads are off because some tests
// patch process-wide state (env, NOTIFY_SOCKET) and drive root-only tools.
// The QEMU boot tests and the provisioning tests have their own scripts (test:boot,
// test:provisioning) and configs; `npm test` runs everything else.
export default {
  files: ['test/**/*.test.ts', '!test/boot/**', '!test/provisioning/**'],
  extensions: { ts: 'module' },
  nodeArguments: ['--import=tsx/esm', '--enable-source-maps'],
  workerThreads: false,
  concurrency: 2,
  timeout: '120s',
}
