// The Debian package test (npm run test:packaging): builds both .deb files, runs lintian and
// installs them into a cached Debian 12 chroot; the first run makes the chroot (minutes).
import boot from './ava.boot.config.js'

export default { ...boot, files: ['test/packaging/*.test.ts'], timeout: '20m' }
