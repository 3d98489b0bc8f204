/**
 * A receiver for sd-notify datagrams, bound the way systemd binds NOTIFY_SOCKET: an AF_UNIX
 * datagram socket on a path or an abstract `@name`. Node has no unix datagram sockets, so this
 * uses koffi (as agent/sd-notify.ts does on the sending side).
 */
const koffi = (await import('koffi')).default
const libc = koffi.load('libc.so.6')
const socket = libc.func('int socket(int domain, int type, int protocol)')
const bind = libc.func('int bind(int fd, const uint8_t *addr, uint32_t len)')
const recv = libc.func('intptr_t recv(int fd, _Inout_ uint8_t *buf, size_t len, int flags)')
const close = libc.func('int close(int fd)')
const AF_UNIX = 1
const SOCK_DGRAM = 2
const MSG_DONTWAIT = 0x40

export interface Receiver {
  /** Datagrams received so far, each as one string (non-blocking). */
  drain(): string[]
}

/** Bind a datagram socket like systemd's notify socket: `name` is a path, or `@name` (abstract). */
export function listen(t: { teardown(fn: () => void): void }, name: string): Receiver {
  const fd = socket(AF_UNIX, SOCK_DGRAM, 0) as number
  if (fd < 0) throw new Error(`socket: errno ${koffi.errno()}`)
  t.teardown(() => close(fd))
  const abstract = name.startsWith('@')
  const path = Buffer.from(abstract ? name.slice(1) : name)
  const addr = Buffer.alloc(110)
  addr.writeUInt16LE(AF_UNIX, 0)
  path.copy(addr, abstract ? 3 : 2)
  if ((bind(fd, addr, 2 + 1 + path.length) as number) < 0)
    throw new Error(`bind ${name}: errno ${koffi.errno()}`)
  return {
    drain() {
      const got: string[] = []
      const buf = Buffer.alloc(4096)
      for (;;) {
        const n = Number(recv(fd, buf, buf.length, MSG_DONTWAIT))
        if (n < 0) return got
        got.push(buf.subarray(0, n).toString('utf8'))
      }
    },
  }
}
