/**
 * A TCP port on 127.0.0.1 that was free a moment ago (bind to 0, read it, close). For servers
 * that must be started on a known port later (a late server, a peer launched by another tool).
 */
import net from 'node:net'

export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = net.createServer()
    srv.once('error', reject)
    srv.listen(0, '127.0.0.1', () => {
      const addr = srv.address()
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0
      srv.close(() => resolve(port))
    })
  })
}
