/**
 * A Debian guest with systemd as PID 1, for QEMU tests that need a real userspace (services,
 * crypttab/fstab, the agent as a systemd unit), not the busybox root of the initramfs tests.
 *
 * API
 * - `guestBase(log)`: the cached base image (built by test/vm/build-guest.sh from the shared
 *   boot-test chroot, keyed by a hash of that script, the chroot and the host's Node; about
 *   2-5 min once, then reused by every run and every worktree that shares `.tmp/boot-cache`).
 *   It is a raw GPT disk: partition 1 = BIOS boot (GRUB core.img), partition 2 = ext4 "root"
 *   with / and /boot, GRUB for BIOS installed (SeaBIOS -> GRUB -> Linux boots it without
 *   -kernel). Also: the kernel and initramfs for a faster -kernel/-initrd boot (`cmdline`), the
 *   root filesystem UUID and the byte range of partition 2. Never write to `base.disk`.
 * - `guestDisk(base, dest, stage?)`: a private sparse copy of the base disk at `dest`, with the
 *   directory tree `stage` copied over its root filesystem (owners and modes kept).
 * - `injectFiles(disk, stage)`: the same onto an existing (powered-off) copy.
 * - `stageAgent(stage)`: puts the agent bundle from dist/ at /usr/lib/unlockd/unlockd-agent.mjs
 *   (with koffi in /usr/lib/unlockd/node_modules, as the Debian package installs it), a
 *   `unlockd` command in /usr/local/bin and the project's unlockd-agent.service into `stage`
 *   (the config in /etc/unlockd is the test's business).
 * - `bootGuestVm(t, o)`: boot a disk (`viaGrub: true` through SeaBIOS and GRUB, else
 *   -kernel/-initrd with `base.cmdline`), with extra raw drives (/dev/vdb, /dev/vdc ...; each
 *   with optional -drive options such as I/O throttling),
 *   fw_cfg files (`opt/vm/task` is run by vm-task.service once the system is up), and the
 *   guestfwd forwards of test/boot/qemu.ts. Returns its Vm (console, waitFor, kill = SIGKILL).
 *
 * In the guest: eth0 = 10.0.2.15/24 (systemd-networkd), root without a password on ttyS0, the
 * host's Node at /usr/bin/node, cryptsetup, e2fsprogs, dmsetup. Console markers: "VM-READY:"
 * when vm-task.service runs; "VM-TASK: start" / "VM-TASK: rc=N" around the fw_cfg task.
 */
import { copyFile, mkdir, writeFile } from 'node:fs/promises'
import { existsSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { createHash } from 'node:crypto'
import { dirname, join } from 'node:path'
import type { ExecutionContext } from 'ava'
import { mustRun } from '../helpers/root.ts'
import { CACHE, REPO, debianChroot, runLogged, withLock } from '../boot/env.ts'
import { bootVm, type Vm } from '../boot/qemu.ts'

const SCRIPT = join(REPO, 'test/vm/build-guest.sh')

export interface GuestBase {
  dir: string
  /** The raw GPT disk image (read-only: copy it with guestDisk). */
  disk: string
  kernel: string
  initrd: string
  kver: string
  rootUuid: string
  /** Kernel command line for a -kernel boot (root=UUID=..., serial console). */
  cmdline: string
  /** Partition 2 (the root filesystem) in bytes. */
  rootPartition: { offset: number; size: number }
}

function hashOf(...parts: (string | Buffer)[]): string {
  const h = createHash('sha256')
  for (const p of parts) h.update(p)
  return h.digest('hex').slice(0, 12)
}

export async function guestBase(log: (line: string) => void): Promise<GuestBase> {
  const chroot = await debianChroot('initramfs-tools', log)
  const key = hashOf(
    readFileSync(SCRIPT),
    chroot.rootfs,
    process.version,
    String(statSync(process.execPath).size),
  )
  const dir = join(CACHE, `guest-${key}`)
  if (!existsSync(join(dir, '.complete'))) {
    await withLock(join(CACHE, `guest-${key}.lock`), async () => {
      if (existsSync(join(dir, '.complete'))) return
      const partial = `${dir}.partial`
      rmSync(partial, { recursive: true, force: true })
      await mkdir(partial, { recursive: true })
      const t0 = Date.now()
      log(`building the systemd guest disk in ${partial} (apt, initramfs, GRUB: a few minutes)`)
      await runLogged(
        'nice',
        ['-n', '10', SCRIPT, 'build', chroot.rootfs, partial],
        `${partial}.log`,
        { timeoutMs: 20 * 60_000 },
      )
      writeFileSync(join(partial, '.complete'), new Date().toISOString())
      renameSync(partial, dir)
      rmSync(`${partial}.log`, { force: true })
      log(`guest disk ready after ${((Date.now() - t0) / 1000).toFixed(1)} s`)
    })
  }
  const read = (f: string): string => readFileSync(join(dir, f), 'utf8').trim()
  const [offset, size] = read('part2').split(/\s+/).map(Number)
  return {
    dir,
    disk: join(dir, 'disk.img'),
    kernel: join(dir, 'vmlinuz'),
    initrd: join(dir, 'initrd.img'),
    kver: read('kver'),
    rootUuid: read('root-uuid'),
    cmdline: read('cmdline'),
    rootPartition: { offset: offset ?? 0, size: size ?? 0 },
  }
}

export async function injectFiles(disk: string, stage: string): Promise<void> {
  await mustRun(SCRIPT, ['inject', disk, stage])
}

export async function guestDisk(base: GuestBase, dest: string, stage?: string): Promise<string> {
  await mkdir(dirname(dest), { recursive: true })
  await mustRun('cp', ['--sparse=always', base.disk, dest])
  if (stage !== undefined) await injectFiles(dest, stage)
  return dest
}

/** A file of `text` at `rel` under `stage` (parents made), mode `mode`. */
export async function stageText(
  stage: string,
  rel: string,
  text: string,
  mode = 0o644,
): Promise<void> {
  const p = join(stage, rel)
  await mkdir(dirname(p), { recursive: true })
  await writeFile(p, text, { mode })
}

export async function stageAgent(stage: string): Promise<void> {
  const lib = join(stage, 'usr/lib/unlockd')
  await mkdir(lib, { recursive: true })
  await copyFile(join(REPO, 'dist/unlockd-agent.mjs'), join(lib, 'unlockd-agent.mjs'))
  // koffi (native FFI: sd-notify READY=1, ioctls) beside the bundle, as the Debian package has
  // it; without it a Type=notify agent never reports ready and `systemctl start` waits forever.
  const koffi = join(REPO, 'node_modules/koffi')
  const dest = join(lib, 'node_modules/koffi')
  await mkdir(join(dest, 'build/koffi'), { recursive: true })
  for (const f of ['package.json', 'index.js', 'indirect.js', 'LICENSE.txt'])
    await copyFile(join(koffi, f), join(dest, f))
  await mustRun('cp', ['-a', join(koffi, 'build/koffi/linux_x64'), join(dest, 'build/koffi/')])
  await stageText(
    stage,
    'usr/local/bin/unlockd',
    '#!/bin/sh\nexec /usr/bin/node /usr/lib/unlockd/unlockd-agent.mjs "$@"\n',
    0o755,
  )
  await mkdir(join(stage, 'etc/systemd/system'), { recursive: true })
  await copyFile(
    join(REPO, 'systemd/unlockd-agent.service'),
    join(stage, 'etc/systemd/system/unlockd-agent.service'),
  )
}

export interface GuestBootOptions {
  base: GuestBase
  disk: string
  /** Boot through SeaBIOS + GRUB (the disk's own boot loader) instead of -kernel/-initrd. */
  viaGrub?: boolean
  /** Appended to base.cmdline (-kernel boots only). */
  append?: string
  /**
   * Further raw disks: /dev/vdb, /dev/vdc ... in this order; `options` are added to -drive
   * (e.g. `throttling.bps-total=N` to make a long disk job last long enough to interrupt it).
   */
  drives?: { file: string; options?: string }[]
  fwCfg?: { name: string; file: string }[]
  forwards?: { guestPort: number; hostPort: number }[]
  memoryMiB?: number
  logFile: string
  timeoutMs: number
}

export function bootGuestVm(t: ExecutionContext, o: GuestBootOptions): Promise<Vm> {
  return bootVm(t, {
    ...(o.viaGrub === true
      ? {}
      : {
          kernel: o.base.kernel,
          initrd: o.base.initrd,
          append: `${o.base.cmdline} ${o.append ?? ''}`.trim(),
        }),
    disk: o.disk,
    drives: o.drives ?? [],
    fwCfg: o.fwCfg ?? [],
    forwards: o.forwards ?? [],
    memoryMiB: o.memoryMiB ?? 1024,
    logFile: o.logFile,
    timeoutMs: o.timeoutMs,
  })
}
