/**
 * The host side shared by the boot tests: a LUKS2 root disk holding a tiny busybox "OS", enrolled
 * on the host against the real escrow server with the real CLI, and the staged files the guest's
 * image is built from (its copy of the config, with the guest-side server address).
 */
import { randomBytes } from 'node:crypto'
import {
  chmod,
  copyFile,
  mkdir,
  mkdtemp,
  readdir,
  readFile,
  rm,
  stat,
  truncate,
  unlink,
  writeFile,
} from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import test, { type ExecutionContext } from 'ava'
import { freePort } from '../helpers/net.ts'
import { mustRun } from '../helpers/root.ts'
import { REPO, bootUnavailable, stageFile } from './env.ts'
import { GUEST_HOST, GUEST_PORT, cli, type Escrow } from './escrow.ts'
import { bootVm, type Vm } from './qemu.ts'

// A boot takes 25-60 s under TCG on an idle 2-core machine and several minutes when other work
// shares the CPU; the hard limit only stops a hung guest, so it is far above either.
export const BOOT_LIMIT_MS = 600_000

export interface EnrolledDisk {
  rootImg: string
  uuid: string
  passphrase: string
  marker: string
  /** The host's config dir (server URL on 127.0.0.1, device = the image file). */
  configDir: string
}

/** /sbin/init of the root filesystem: report what is left of unlockd, then power off. */
function initScript(): string {
  return `#!/bin/busybox sh
export PATH=/bin
/bin/busybox mount -t proc proc /proc 2>/dev/null
/bin/busybox mount -t sysfs sys /sys 2>/dev/null
echo "ROOTFS: real init at $(/bin/busybox cut -d' ' -f1 /proc/uptime) s"
echo "MARKER: $(/bin/busybox cat /marker.txt)"
echo "RUN: $(/bin/busybox ls -A /run | /bin/busybox tr '\\n' ' ')"
# Regular files only: grep -r would block on a FIFO such as /run/initctl.
secrets=""
for f in $(/bin/busybox find /run -type f 2>/dev/null); do
  /bin/busybox grep -qE '"kty"|PRIVATE KEY' "$f" 2>/dev/null && secrets="$secrets $f"
done
echo "RUNSECRETS:$secrets"
echo "PROCS: $(/bin/busybox grep -l '[u]nlockd' /proc/[0-9]*/cmdline 2>/dev/null | /bin/busybox wc -l)"
echo "NET: $(/bin/busybox ip -4 -o addr show 2>/dev/null | /bin/busybox grep -vc ' lo ')"
echo "ROOTFS: done"
/bin/busybox poweroff -f
`
}

export interface WorldScope {
  /** A private scratch directory, removed after the file's last test. */
  dir: string
  /** Run `fn` after the file's last test (last registered, first run). */
  teardown(fn: () => Promise<void> | void): void
  log(line: string): void
}

/**
 * One expensive world per test file (chroot, escrow server, enrolled disk, initramfs): built by
 * the first test that asks, shared by the rest, torn down after the file. `label` prefixes the
 * progress lines on the console.
 */
export function fileWorld<W>(
  label: string,
  make: (s: WorldScope) => Promise<W>,
): (t: ExecutionContext) => Promise<W> {
  const cleanups: (() => Promise<void> | void)[] = []
  test.after.always(async () => {
    for (const fn of cleanups.reverse()) await fn()
  })
  let world: Promise<W> | undefined
  return (t) => {
    world ??= (async () => {
      await checkPrerequisites()
      const dir = await mkdtemp(join(tmpdir(), `unlockd-${label}-`))
      cleanups.push(() => rm(dir, { recursive: true, force: true }))
      return make({
        dir,
        teardown: (fn) => void cleanups.push(fn),
        log: (line) => {
          t.log(line)
          console.log(`[${label}] ${line}`)
        },
      })
    })()
    return world
  }
}

export async function checkPrerequisites(): Promise<void> {
  const extra = bootUnavailable()
  if (extra) throw new Error(extra)
  for (const f of ['dist/unlockd.mjs', 'dist/unlockd-agent.mjs']) {
    await stat(join(REPO, f)).catch(() => {
      throw new Error(`${f} is missing: run npm run build (npm run test:boot does)`)
    })
  }
}

/**
 * Make the LUKS2 root disk without device-mapper (ext4 from a folder, then encrypted in place,
 * keyslot 0 = a typed passphrase) and enroll it as volume `root` of host `host`.
 */
export async function enrolledRootDisk(
  dir: string,
  escrow: Escrow,
  host: string,
): Promise<EnrolledDisk> {
  const passphrase = `typed-${randomBytes(6).toString('hex')}`
  const marker = `UNLOCKED-OK-${randomBytes(4).toString('hex')}`
  const croot = join(dir, 'croot')
  for (const d of ['bin', 'sbin', 'proc', 'sys', 'dev', 'run', 'tmp', 'etc'])
    await mkdir(join(croot, d), { recursive: true })
  await copyFile('/bin/busybox', join(croot, 'bin/busybox'))
  await chmod(join(croot, 'bin/busybox'), 0o755)
  await writeFile(join(croot, 'sbin/init'), initScript(), { mode: 0o755 })
  await writeFile(join(croot, 'marker.txt'), `${marker}\n`)
  // systemd's switch-root (dracut) insists on /etc/os-release in the new root.
  await copyFile('/etc/os-release', join(croot, 'etc/os-release'))
  const rootImg = join(dir, 'root.img')
  const passFile = join(dir, 'passphrase')
  await writeFile(passFile, passphrase, { mode: 0o600 })
  await writeFile(rootImg, '')
  await truncate(rootImg, 48 * 1024 * 1024)
  await mustRun('mkfs.ext4', ['-q', '-F', '-d', croot, rootImg, '32M'])
  await mustRun('cryptsetup', [
    'reencrypt',
    '--encrypt',
    '--type',
    'luks2',
    '--batch-mode',
    '--force-offline-reencrypt',
    '--reduce-device-size',
    '16M',
    '--pbkdf',
    'pbkdf2',
    '--pbkdf-force-iterations',
    '1000',
    '--key-file',
    passFile,
    rootImg,
  ])
  const uuid = (await mustRun('cryptsetup', ['luksUUID', rootImg])).trim()

  const token = JSON.parse(await escrow.op(['token', 'create', '--host', host, '--json'])) as {
    token: string
  }
  const tokenFile = join(dir, 'enroll.token')
  await writeFile(tokenFile, token.token, { mode: 0o600 })
  const configDir = join(dir, 'host-config')
  const enroll = await cli(
    [
      'enroll',
      '--server',
      escrow.url,
      '--ca',
      escrow.caFile,
      '--token-file',
      tokenFile,
      '--name',
      host,
      '--config',
      configDir,
      '--luks',
      `${rootImg}:root`,
      '--existing-key-file',
      passFile,
      '--json',
    ],
    { UNLOCKD_LUKS_PBKDF: 'fast' },
  )
  if (enroll.code !== 0) throw new Error(`unlockd enroll failed: ${enroll.stderr}`)
  return { rootImg, uuid, passphrase, marker, configDir }
}

/**
 * The files the guest image is built from: the config dir with the guest's view (server at
 * 10.0.2.100, the disk at /dev/vda), the host's Node (20.19+; bookworm's nodejs is 18) where
 * initramfs.conf says, and `extra` files (crypttab, fstab, dracut.conf.d ...).
 */
export async function stageGuest(
  stage: string,
  disk: EnrolledDisk,
  extra: Record<string, string>,
): Promise<void> {
  await mkdir(join(stage, 'etc/unlockd'), { recursive: true, mode: 0o700 })
  await mustRun('cp', ['-a', `${disk.configDir}/.`, join(stage, 'etc/unlockd')])
  const agent = JSON.parse(await readFile(join(disk.configDir, 'agent.json'), 'utf8')) as {
    servers: { url: string }[]
    volumes: { name: string; device: string }[]
  }
  for (const s of agent.servers) s.url = `https://${GUEST_HOST}:${GUEST_PORT}`
  for (const v of agent.volumes) if (v.name === 'root') v.device = '/dev/vda'
  await writeFile(join(stage, 'etc/unlockd/agent.json'), JSON.stringify(agent, null, 2) + '\n', {
    mode: 0o600,
  })
  await writeFile(
    join(stage, 'etc/unlockd/initramfs.conf'),
    'UNLOCKD_NODE=/usr/local/bin/node\nUNLOCKD_TIMEOUT=120\n',
    { mode: 0o600 },
  )
  await stageFile(stage, 'usr/local/bin/node', process.execPath, 0o755)
  for (const [rel, text] of Object.entries(extra)) {
    await mkdir(join(stage, rel, '..'), { recursive: true })
    await writeFile(join(stage, rel), text)
  }
}

let bootCount = 0
let logDir: string | undefined

/** .tmp/boot-logs/PID/: serial consoles of this run; those of finished runs are removed. */
async function consoleLogDir(): Promise<string> {
  if (logDir !== undefined) return logDir
  const base = join(REPO, '.tmp/boot-logs')
  await mkdir(base, { recursive: true })
  for (const d of await readdir(base)) {
    const pid = Number(d)
    let alive = false
    try {
      process.kill(pid, 0)
      alive = true
    } catch {
      /* gone */
    }
    if (!alive) await rm(join(base, d), { recursive: true, force: true })
  }
  logDir = join(base, String(process.pid))
  await mkdir(logDir, { recursive: true })
  return logDir
}

/**
 * Boot a copy of the enrolled disk. `hostPort` is where guest 10.0.2.100:8443 leads on host
 * loopback; undefined means a port nothing listens on (the "server down" case).
 */
export async function bootGuest(
  t: ExecutionContext,
  o: {
    kernel: string
    initrd: string
    rootImg: string
    scratch: string
    append: string
    hostPort: number | undefined
    memoryMiB?: number
    /** When QEMU is killed (default BOOT_LIMIT_MS). */
    limitMs?: number
  },
): Promise<Vm> {
  const n = ++bootCount
  const disk = join(o.scratch, `root-${n}.img`)
  await copyFile(o.rootImg, disk)
  const logFile = join(await consoleLogDir(), `boot-${n}.log`)
  const vm = await bootVm(t, {
    kernel: o.kernel,
    initrd: o.initrd,
    disk,
    logFile,
    timeoutMs: o.limitMs ?? BOOT_LIMIT_MS,
    append: o.append,
    forwards: [{ guestPort: GUEST_PORT, hostPort: o.hostPort ?? (await freePort()) }],
    ...(o.memoryMiB ? { memoryMiB: o.memoryMiB } : {}),
  })
  t.teardown(() => unlink(disk).catch(() => {}))
  t.log(`console: ${logFile}`)
  return vm
}

/** Wait for the tiny OS to report and power off; check it left nothing of unlockd behind. */
export async function finishGuest(
  t: ExecutionContext,
  vm: Vm,
  marker: string,
  o: { networkDown: boolean },
): Promise<string> {
  await vm.waitFor(/ROOTFS: done/, BOOT_LIMIT_MS)
  const { seconds } = await vm.exited
  const out = vm.console()
  t.regex(out, new RegExp(`MARKER: ${marker}`), 'the root filesystem on the LUKS2 disk was mounted')
  t.notRegex(out, /RUN: .*unlockd-initramfs/, 'no runtime files of the boot script in /run')
  t.regex(out, /RUNSECRETS:\n/, 'no host key material in /run after switch_root')
  t.regex(out, /PROCS: 0\b/, 'no unlockd process survives switch_root')
  if (o.networkDown) t.regex(out, /NET: 0\b/, 'the interface the agent brought up is down again')
  t.log(`boot wall time ${seconds.toFixed(1)} s`)
  return out
}

function uptimeOf(out: string, re: RegExp): number | undefined {
  const m = re.exec(out)
  return m ? Number(m[1]) : undefined
}

/** Print boot-to-unlock (guest uptime when the key was handed over); never asserted. */
export function report(t: ExecutionContext, what: string, out: string): void {
  const start = uptimeOf(out, /unlockd: will answer .* \(at ([0-9.]+) s\)/)
  const answered = uptimeOf(
    out,
    /unlockd: answered the passphrase prompt for root \(at ([0-9.]+) s\)/,
  )
  const rootfs = uptimeOf(out, /ROOTFS: real init at ([0-9.]+) s/)
  const line = `${what}: boot-to-unlock ${answered ?? '-'} s guest uptime (boot script started at ${start ?? '-'} s, real init at ${rootfs ?? '-'} s)`
  t.log(line)
  console.log(`[boot] ${line}`)
}
