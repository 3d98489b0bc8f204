// The QEMU boot tests (npm run test:boot): a Debian kernel and initramfs boot under TCG, so a
// test can take minutes (many on a busy machine); ava's timeout restarts with every finished test.
export default {
  files: ['test/boot/*.test.ts'],
  extensions: { ts: 'module' },
  nodeArguments: ['--import=tsx/esm', '--enable-source-maps'],
  workerThreads: false,
  concurrency: 1,
  timeout: '30m',
  verbose: true,
}
