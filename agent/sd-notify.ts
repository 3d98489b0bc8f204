/**
 * systemd's notify protocol (sd_notify(3)) for `Type=notify` units: one datagram of
 * `KEY=value` lines sent to the AF_UNIX socket named by $NOTIFY_SOCKET.
 *
 * Node has no unix datagram sockets, so socket()/sendto() come from libc through koffi, loaded
 * lazily (the agent runs without koffi when it is not under systemd). Every function returns
 * whether the message was sent and never throws: being unable to talk to systemd must not stop
 * an unlock, and the caller decides whether to log it.
 */
import { openLibc } from './libc.ts'

const AF_UNIX = 1
const SOCK_DGRAM = 2
const SOCK_CLOEXEC = 0o2000000
const MSG_NOSIGNAL = 0x4000
const SUN_PATH_MAX = 108 // sizeof(sockaddr_un.sun_path)

interface SocketLib {
  socket(domain: number, type: number, protocol: number): number
  sendto(fd: number, buf: Buffer, len: number, flags: number, addr: Buffer, addrlen: number): number
  close(fd: number): number
}

let libPromise: Promise<SocketLib | undefined> | undefined

async function loadLib(): Promise<SocketLib | undefined> {
  try {
    const koffi = (await import('koffi')).default
    const lib = openLibc(koffi)
    const socket = lib.func('int socket(int domain, int type, int protocol)')
    const sendto = lib.func(
      'intptr_t sendto(int fd, const uint8_t *buf, size_t len, int flags, const uint8_t *addr, uint32_t addrlen)',
    )
    const close = lib.func('int close(int fd)')
    return {
      socket: (d, t, p) => socket(d, t, p) as number,
      sendto: (fd, buf, len, flags, addr, addrlen) =>
        Number(sendto(fd, buf, len, flags, addr, addrlen)),
      close: (fd) => close(fd) as number,
    }
  } catch {
    return undefined
  }
}

/**
 * Encode $NOTIFY_SOCKET as a sockaddr_un: an absolute path, or `@name` for the abstract
 * namespace (leading NUL, no terminator; the length covers exactly the name).
 */
function socketAddress(spec: string): { addr: Buffer; len: number } | undefined {
  const abstract = spec.startsWith('@')
  if (!abstract && !spec.startsWith('/')) return undefined // vsock: and relative paths are not supported
  const name = Buffer.from(abstract ? spec.slice(1) : spec, 'utf8')
  const pathBytes = name.length + 1 // abstract: leading NUL; path: trailing NUL
  if (pathBytes > SUN_PATH_MAX) return undefined
  const addr = Buffer.alloc(2 + SUN_PATH_MAX)
  addr.writeUInt16LE(AF_UNIX, 0) // sa_family_t, host byte order (little-endian on our targets)
  name.copy(addr, abstract ? 3 : 2)
  return { addr, len: 2 + pathBytes }
}

/**
 * Send `state` (e.g. `{ READY: '1', STATUS: 'waiting for approval' }`) to systemd.
 * Returns false when NOTIFY_SOCKET is unset (not started by systemd) or the send failed.
 * Newlines in values become spaces, so a value can never inject another assignment.
 */
export async function notify(state: Readonly<Record<string, string>>): Promise<boolean> {
  const spec = process.env['NOTIFY_SOCKET']
  if (spec === undefined || spec === '') return false
  const lines: string[] = []
  for (const [key, value] of Object.entries(state)) {
    if (!/^[A-Z][A-Z0-9_]*$/.test(key) || typeof value !== 'string') return false
    lines.push(`${key}=${value.replace(/[\r\n]/g, ' ')}`)
  }
  if (lines.length === 0) return false
  const target = socketAddress(spec)
  if (target === undefined) return false
  libPromise ??= loadLib()
  const lib = await libPromise
  if (lib === undefined) return false
  try {
    const fd = lib.socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0)
    if (fd < 0) return false
    try {
      const msg = Buffer.from(lines.join('\n'), 'utf8')
      return lib.sendto(fd, msg, msg.length, MSG_NOSIGNAL, target.addr, target.len) === msg.length
    } finally {
      lib.close(fd)
    }
  } catch {
    return false
  }
}

/** `READY=1`: start-up is finished; systemd starts the units ordered after us. */
export function ready(): Promise<boolean> {
  return notify({ READY: '1' })
}

/** `STATUS=text`: shown by `systemctl status` (e.g. "waiting for approval of request 42"). */
export function status(text: string): Promise<boolean> {
  return notify({ STATUS: text })
}

/** `STOPPING=1`: shutting down. */
export function stopping(): Promise<boolean> {
  return notify({ STOPPING: '1' })
}

/** `WATCHDOG=1`: keep-alive for units with `WatchdogSec=`. */
export function watchdog(): Promise<boolean> {
  return notify({ WATCHDOG: '1' })
}

/**
 * How often to send watchdog(): half of $WATCHDOG_USEC, as sd_watchdog_enabled(3) advises, or
 * undefined when the watchdog is off or meant for another process ($WATCHDOG_PID).
 */
export function watchdogIntervalMs(): number | undefined {
  const usec = Number(process.env['WATCHDOG_USEC'])
  const pid = process.env['WATCHDOG_PID']
  if (!Number.isSafeInteger(usec) || usec <= 0) return undefined
  if (pid !== undefined && pid !== '' && Number(pid) !== process.pid) return undefined
  return Math.max(1, Math.floor(usec / 2000))
}
