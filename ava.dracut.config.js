// The opt-in dracut test (npm run test:dracut): building the dracut chroot takes about 5 min, so a
// test can take minutes; ava's timeout restarts with every finished test.
export default {
  files: ['test/boot/dracut/*.test.ts'],
  extensions: { ts: 'module' },
  nodeArguments: ['--import=tsx/esm', '--enable-source-maps'],
  workerThreads: false,
  concurrency: 1,
  timeout: '10m',
  verbose: true,
}
