/**
 * One QEMU guest for a boot test: TCG (this kind of host offers no usable KVM), q35, one vCPU,
 * the serial console on stdio (read by the test, and typed into for the passphrase prompt), and
 * user networking with `restrict=on`: the only way out of the guest is a `guestfwd` rule that
 * starts `socat` to a port on host loopback for each connection (`cmd:` form; the `tcp:` form
 * connects once, at QEMU start). Every wait is bounded and the process is killed in teardown.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { createWriteStream } from 'node:fs'
import type { ExecutionContext } from 'ava'

export interface VmOptions {
  /** Without a kernel the firmware (SeaBIOS) boots the disk's own boot loader. */
  kernel?: string
  initrd?: string
  disk: string
  append?: string
  /** Further raw disks after `disk` (virtio: /dev/vdb, /dev/vdc ...), with extra -drive options. */
  drives?: { file: string; options?: string }[]
  /** QEMU fw_cfg files (the guest reads /sys/firmware/qemu_fw_cfg/by_name/NAME/raw). */
  fwCfg?: { name: string; file: string }[]
  /** guest 10.0.2.100:guestPort -> host 127.0.0.1:hostPort */
  forwards: { guestPort: number; hostPort: number }[]
  memoryMiB?: number
  /** Serial console copy (for the CI log when something fails). */
  logFile: string
  /** Hard limit for the whole boot. */
  timeoutMs: number
}

export interface Vm {
  /** Everything the guest printed so far (CR stripped). */
  console(): string
  /** Resolve with the match once `re` appears on the console; reject after `ms` or when QEMU exits. */
  waitFor(re: RegExp, ms: number): Promise<RegExpMatchArray>
  /** Type on the serial console (the guest's /dev/console). */
  type(text: string): void
  /** Resolves when QEMU exits, with its status and the wall time of the boot. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null; seconds: number }>
  kill(): void
}

/** At most two guests at once: TCG uses a host core per vCPU, and CI machines have two. */
let running = 0
const queue: (() => void)[] = []
async function slot(): Promise<() => void> {
  if (running >= 2) await new Promise<void>((r) => queue.push(r))
  running++
  return () => {
    running--
    queue.shift()?.()
  }
}

export async function bootVm(t: ExecutionContext, o: VmOptions): Promise<Vm> {
  const release = await slot()
  const netdev = [
    'user',
    'id=n0',
    'restrict=on',
    ...o.forwards.map(
      (f) => `guestfwd=tcp:10.0.2.100:${f.guestPort}-cmd:socat - TCP:127.0.0.1:${f.hostPort}`,
    ),
  ].join(',')
  const args = [
    '-M',
    'q35',
    '-accel',
    'tcg',
    '-cpu',
    'max',
    '-smp',
    '1',
    '-m',
    String(o.memoryMiB ?? 1024),
    '-nodefaults',
    '-no-user-config',
    '-display',
    'none',
    '-serial',
    'stdio',
    '-no-reboot',
    ...(o.kernel === undefined ? [] : ['-kernel', o.kernel]),
    ...(o.initrd === undefined ? [] : ['-initrd', o.initrd]),
    ...(o.append === undefined ? [] : ['-append', o.append]),
    '-drive',
    `file=${o.disk},if=virtio,format=raw,cache=unsafe`,
    ...(o.drives ?? []).flatMap((d) => [
      '-drive',
      `file=${d.file},if=virtio,format=raw,cache=unsafe${d.options ? `,${d.options}` : ''}`,
    ]),
    ...(o.fwCfg ?? []).flatMap((f) => ['-fw_cfg', `name=${f.name},file=${f.file}`]),
    '-netdev',
    netdev,
    '-device',
    'virtio-net-pci,netdev=n0,romfile=',
    '-device',
    'virtio-rng-pci',
  ]
  const t0 = Date.now()
  const child: ChildProcess = spawn('qemu-system-x86_64', args, { stdio: ['pipe', 'pipe', 'pipe'] })
  const logStream = createWriteStream(o.logFile)
  let text = ''
  const waiters = new Set<() => void>()
  const onData = (c: Buffer): void => {
    logStream.write(c)
    text += c.toString('utf8').replace(/\r/g, '')
    for (const w of [...waiters]) w()
  }
  child.stdout?.on('data', onData)
  child.stderr?.on('data', onData)
  child.stdin?.on('error', () => {})
  let done = false
  const exited = new Promise<{
    code: number | null
    signal: NodeJS.Signals | null
    seconds: number
  }>((resolve) => {
    child.on('close', (code, signal) => {
      done = true
      clearTimeout(limit)
      logStream.end()
      release()
      for (const w of [...waiters]) w()
      resolve({ code, signal, seconds: (Date.now() - t0) / 1000 })
    })
    child.on('error', (e) => {
      text += `\n[qemu failed to start: ${e.message}]\n`
    })
  })
  const limit = setTimeout(() => {
    text += `\n[boot test: killed QEMU after ${o.timeoutMs / 1000} s]\n`
    child.kill('SIGKILL')
  }, o.timeoutMs)
  t.teardown(() => {
    if (!done) child.kill('SIGKILL')
    return exited.then(() => undefined)
  })
  return {
    console: () => text,
    waitFor(re, ms) {
      return new Promise((resolve, reject) => {
        const check = (): void => {
          const m = re.exec(text)
          if (m) {
            finish()
            resolve(m)
          } else if (done) {
            finish()
            reject(new Error(`QEMU exited before ${re} appeared on the console`))
          }
        }
        const timer = setTimeout(() => {
          finish()
          reject(new Error(`${re} did not appear on the console within ${ms / 1000} s`))
        }, ms)
        const finish = (): void => {
          clearTimeout(timer)
          waiters.delete(check)
        }
        waiters.add(check)
        check()
      })
    },
    type(s) {
      child.stdin?.write(s)
    },
    exited,
    kill() {
      if (!done) child.kill('SIGKILL')
    },
  }
}
