/**
 * Oversized request bodies cost the server no more than the route's bound, whatever the
 * framing. The real server runs as a child process (so its memory can be read from
 * /proc/PID/status); a 64 MiB chunked body is streamed to each route that reads a body, over
 * real HTTP. Each must answer 413 payload_too_large, and the server's resident set must not grow
 * by anything near the body size.
 */
import test from 'ava'
import { Agent, request } from 'node:http'
import { readFileSync } from 'node:fs'
import { join } from 'node:path'
import { initDataDirCli, startCliServer } from '../helpers/cli-server.ts'
import { tempDir } from '../helpers/tmp.ts'

const MiB = 1024 * 1024
const BODY = 64 * MiB
const CHUNK = Buffer.alloc(64 * 1024, 0x7b) // '{', never valid JSON or a complete form

function statusKiB(pid: number, field: 'VmRSS' | 'VmHWM'): number {
  const text = readFileSync(`/proc/${pid}/status`, 'utf8')
  const m = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(text)
  if (!m) throw new Error(`no ${field} in /proc/${pid}/status`)
  return Number(m[1])
}

interface Sent {
  status: number
  body: string
  sent: number
}

/**
 * Stream up to `BODY` bytes to `url` (chunked unless `contentLength` is given), stopping as soon
 * as the server answers. A reset after the answer is expected: the server stops reading.
 */
function streamBody(
  url: string,
  headers: Record<string, string>,
  contentLength?: number,
): Promise<Sent> {
  return new Promise((resolve, reject) => {
    let sent = 0
    let answered = false
    const h: Record<string, string> = { ...headers }
    if (contentLength !== undefined) h['content-length'] = String(contentLength)
    // Keep-alive, as real clients do: the server then reads on (and discards) for a moment after
    // answering, so the answer is not lost to a reset while the client is still writing.
    const agent = new Agent({ keepAlive: true, maxSockets: 1 })
    const req = request(url, { method: 'POST', headers: h, agent }, (res) => {
      answered = true
      const chunks: Buffer[] = []
      res.on('data', (d: Buffer) => chunks.push(d))
      res.on('end', () => {
        resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString(), sent })
        req.destroy()
        agent.destroy()
      })
      res.on('error', (e) => reject(e))
    })
    req.on('error', (e) => {
      agent.destroy()
      if (!answered) reject(new Error(`${url}: no answer after ${sent} bytes: ${e.message}`))
    })
    // One chunk at a time, yielding between writes so that an answer that has arrived is read
    // before the next write (which would fail once the server has closed).
    const pump = (): void => {
      if (answered || req.destroyed) return
      if (sent >= BODY) {
        req.end()
        return
      }
      sent += CHUNK.byteLength
      req.write(CHUNK, () => setImmediate(pump))
    }
    pump()
  })
}

const json = { 'content-type': 'application/json' }

test('a 64 MiB body is refused with 413 on every body-reading route, without buffering it', async (t) => {
  const dir = join(await tempDir(t), 'data')
  const d = await initDataDirCli(dir)
  const srv = await startCliServer(t, d)
  const pid = srv.child.pid as number

  const routes: { path: string; headers: Record<string, string> }[] = [
    { path: '/v1/enroll', headers: { ...json, authorization: `Bearer ue_${'A'.repeat(43)}` } },
    { path: '/v1/unlock', headers: json },
    { path: '/v1/volumes', headers: json },
    { path: '/v1/approval/poll', headers: json },
    { path: '/v1/watch', headers: json },
    { path: '/v1/report', headers: json },
    { path: '/tang/web-1/rec/abc', headers: { 'content-type': 'application/jose+json' } },
    {
      path: `/approve/ap_${'A'.repeat(22)}`,
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    },
    { path: '/v1/admin/tokens', headers: { ...json, authorization: `Bearer ${d.token}` } },
  ]

  // Warm every route with a small request first, so lazily loaded code is not counted.
  for (const r of routes) {
    const res = await fetch(srv.url + r.path, { method: 'POST', headers: r.headers, body: '{}' })
    await res.arrayBuffer()
  }
  const rssBefore = statusKiB(pid, 'VmRSS')
  const hwmBefore = statusKiB(pid, 'VmHWM')
  let rssPeak = rssBefore
  const sampler = setInterval(() => {
    rssPeak = Math.max(rssPeak, statusKiB(pid, 'VmRSS'))
  }, 20)
  t.teardown(() => clearInterval(sampler))

  for (const r of routes) {
    const res = await streamBody(srv.url + r.path, r.headers)
    t.is(res.status, 413, `${r.path}: ${res.body}`)
    if (!r.path.startsWith('/approve/'))
      t.is((JSON.parse(res.body) as { error: string }).error, 'payload_too_large', r.path)
    t.true(res.sent < BODY, `${r.path}: the server read the whole body before answering`)
  }
  // A declared length over the bound is refused before the body is read, on any route.
  for (const path of ['/v1/unlock', '/healthz', '/no/such/route']) {
    const res = await streamBody(srv.url + path, json, BODY)
    t.is(res.status, 413, `${path} with Content-Length: ${res.body}`)
  }
  clearInterval(sampler)
  rssPeak = Math.max(rssPeak, statusKiB(pid, 'VmRSS'))
  const hwmGrowth = statusKiB(pid, 'VmHWM') - hwmBefore
  t.true((rssPeak - rssBefore) * 1024 < 20 * MiB, `RSS grew ${(rssPeak - rssBefore) / 1024} MiB`)
  t.true(hwmGrowth * 1024 < 20 * MiB, `peak RSS grew ${hwmGrowth / 1024} MiB`)

  // The server still answers normally afterwards.
  const health = await fetch(`${srv.url}/healthz`)
  t.is(health.status, 200)
  await srv.stop()
})
