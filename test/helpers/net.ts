/**
 * Network helpers for tests: a free port, and HTTP requests from a chosen loopback source address.
 */
import http from 'node:http'
import net from 'node:net'
import type { Transport } from '../../shared/client/transport.ts'

/**
 * A TCP port on 127.0.0.1 that was free a moment ago (bind to 0, read it, close). For servers
 * that must be started on a known port later (a late server, a peer launched by another tool).
 */
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

export interface SourcedResponse {
  status: number
  text: string
}

/**
 * One HTTP request whose TCP source address is `localAddress` (any 127.0.0.0/8 address works on
 * Linux loopback), so the server sees a second client without a proxy in between.
 */
export function requestFrom(
  localAddress: string,
  url: string,
  init: { method: string; headers?: Record<string, string>; body?: string },
): Promise<SourcedResponse> {
  return new Promise((resolve, reject) => {
    const req = http.request(
      url,
      { method: init.method, headers: init.headers ?? {}, localAddress, timeout: 120_000 },
      (res) => {
        let text = ''
        res.setEncoding('utf8')
        res.on('data', (d: string) => (text += d))
        res.on('end', () => resolve({ status: res.statusCode ?? 0, text }))
        res.on('error', reject)
      },
    )
    req.on('timeout', () => req.destroy(new Error(`request to ${url} timed out`)))
    req.on('error', reject)
    req.end(init.body)
  })
}

/** A JSON transport (shared/client/transport.ts shape) whose requests come from `localAddress`. */
export function transportFrom(localAddress: string, baseUrl: string): Transport {
  return async (r) => {
    const headers: Record<string, string> = { accept: 'application/json', ...r.headers }
    if (r.bearer !== undefined) headers['authorization'] = `Bearer ${r.bearer}`
    if (r.body !== undefined) headers['content-type'] = 'application/json'
    const res = await requestFrom(localAddress, baseUrl + r.path, {
      method: r.method,
      headers,
      ...(r.body === undefined ? {} : { body: JSON.stringify(r.body) }),
    })
    let body: unknown = res.text
    try {
      body = JSON.parse(res.text) as unknown
    } catch {
      // not JSON: keep the text
    }
    return { status: res.status, body }
  }
}
