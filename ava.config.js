// Tests run the TypeScript sources through tsx; worker threads are off because some tests
// patch process-wide state (env, NOTIFY_SOCKET) and drive root-only tools.
// The QEMU boot tests, the provisioning tests and the Debian package test have their own
// scripts (test:boot, test:provisioning, test:packaging) and configs; `npm test` runs
// everything else.
export default {
  files: ['test/**/*.test.ts', '!test/boot/**', '!test/provisioning/**', '!test/packaging/**'],
  extensions: { ts: 'module' },
  nodeArguments: ['--import=tsx/esm', '--enable-source-maps'],
  workerThreads: false,
  concurrency: 2,
  timeout: '120s',
}
