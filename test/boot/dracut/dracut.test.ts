/**
 * The dracut module (initramfs-hooks/dracut/90unlockd), opt-in: `npm run test:dracut`.
 * Debian's dracut 059 in a bookworm chroot builds the image with the module (the chroot takes
 * about 5 minutes to build once, then it is cached); `lsinitrd` must list everything the module
 * promises, then the image boots under QEMU and the agent answers systemd's ask-password request
 * for the LUKS2 root through the escrow server on host loopback (guestfwd only). A second boot
 * with unlockd=off takes the typed passphrase on the console instead.
 */
import { stat } from 'node:fs/promises'
import { join } from 'node:path'
import { rootTest } from '../../helpers/root.ts'
import { BOOT_BINS, buildInitramfs, debianChroot, type Chroot } from '../env.ts'
import { startEscrow, type Escrow } from '../escrow.ts'
import {
  BOOT_LIMIT_MS,
  bootGuest,
  fileWorld,
  enrolledRootDisk,
  finishGuest,
  report,
  stageGuest,
  type EnrolledDisk,
} from '../host.ts'

const NEEDS = { bins: BOOT_BINS, serial: true }
const HOST = 'boot-dracut'

interface World {
  dir: string
  chroot: Chroot
  escrow: Escrow
  disk: EnrolledDisk
  initrd: string
  contents: string[]
  buildSeconds: number
}

const setup = fileWorld('dracut', async ({ dir, teardown, log }): Promise<World> => {
  const chroot = await debianChroot('dracut', log)
  const escrow = await startEscrow({ teardown }, dir)
  const disk = await enrolledRootDisk(dir, escrow, HOST)
  log(`enrolled ${HOST}: root volume UUID=${disk.uuid}`)
  await stageGuest(join(dir, 'stage'), disk, {
    // Not host-only: the chroot is not the machine that boots. network-legacy is dracut's
    // classic ip= handling; the others would need NetworkManager or networkd in the chroot.
    'etc/dracut.conf.d/10-unlockd-test.conf': [
      'hostonly="no"',
      'add_dracutmodules+=" crypt network-legacy unlockd "',
      'omit_dracutmodules+=" systemd-networkd network-manager ifcfg "',
      'add_drivers+=" virtio_pci virtio_blk virtio_net dm-crypt xts aesni-intel ext4 "',
      'compress="zstd"',
      '',
    ].join('\n'),
  })
  const build = await buildInitramfs(chroot, 'dracut', join(dir, 'build'), join(dir, 'stage'))
  log(`dracut with the unlockd module took ${build.seconds.toFixed(1)} s`)
  return {
    dir,
    chroot,
    escrow,
    disk,
    initrd: build.initrd,
    contents: build.contents,
    buildSeconds: build.seconds,
  }
})

function append(w: World, extra = ''): string {
  const u = w.disk.uuid
  return `console=ttyS0 quiet panic=-1 rd.luks.uuid=${u} root=/dev/mapper/luks-${u} rd.neednet=1 net.ifnames=0 ip=10.0.2.15::10.0.2.2:255.255.255.0::eth0:off rd.shell=0 ${extra}`.trim()
}

rootTest(
  'dracut with the module: lsinitrd lists node, the agent, config, keys and the ask-password service',
  async (t) => {
    const w = await setup(t)
    for (const p of [
      'usr/bin/node',
      'usr/lib/unlockd/unlockd-agent.mjs',
      'usr/lib/unlockd/initramfs-functions',
      'etc/unlockd/agent.json',
      'etc/unlockd/signing.jwk',
      'etc/unlockd/sealing.jwk',
      'etc/unlockd/ca.pem',
      'etc/unlockd/volumes',
      'usr/libexec/unlockd-askpass',
      'etc/cmdline.d/90unlockd.conf',
    ]) {
      t.true(w.contents.includes(p), `${p} is in the image`)
    }
    t.true(
      w.contents.some((p) => p.endsWith('/unlockd-askpass.service')),
      'the answering service is in the image',
    )
    t.true(
      w.contents.some((p) => p.endsWith('cryptsetup.target.wants/unlockd-askpass.path')),
      'the path unit is enabled',
    )
    t.true(
      w.contents.some((p) => /hooks\/cleanup\/90-unlockd-cleanup\.sh$/.test(p)),
      'the cleanup hook is in the image',
    )
    t.is(
      (await stat(w.initrd)).mode & 0o077,
      0,
      'the image holding host keys is readable by root only',
    )
  },
  NEEDS,
)

rootTest(
  'dracut boot: the agent answers systemd ask-password for the LUKS2 root',
  async (t) => {
    const w = await setup(t)
    const vm = await bootGuest(t, {
      kernel: w.chroot.kernel,
      initrd: w.initrd,
      rootImg: w.disk.rootImg,
      scratch: w.dir,
      append: append(w),
      hostPort: w.escrow.port,
    })
    await vm.waitFor(/unlockd: answered the passphrase prompt for root/, BOOT_LIMIT_MS)
    const out = await finishGuest(t, vm, w.disk.marker, { networkDown: false })
    report(t, 'dracut (unlock)', out)
  },
  NEEDS,
)

rootTest(
  'dracut boot: unlockd=off leaves the prompt to the typed passphrase',
  async (t) => {
    const w = await setup(t)
    const vm = await bootGuest(t, {
      kernel: w.chroot.kernel,
      initrd: w.initrd,
      rootImg: w.disk.rootImg,
      scratch: w.dir,
      append: append(w, 'unlockd=off'),
      hostPort: w.escrow.port,
    })
    await vm.waitFor(/Please enter passphrase for disk/, BOOT_LIMIT_MS)
    vm.type(`${w.disk.passphrase}\n`)
    const out = await finishGuest(t, vm, w.disk.marker, { networkDown: false })
    t.notRegex(out, /asking the escrow server/)
  },
  NEEDS,
)
