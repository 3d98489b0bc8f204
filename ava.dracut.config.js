// The opt-in dracut test (npm run test:dracut): the boot tests' settings, its own files
// (building the dracut chroot takes about 5 min, so it stays out of test:boot).
import boot from './ava.boot.config.js'

export default { ...boot, files: ['test/boot/dracut/*.test.ts'] }
