/**
 * Debian's tang as a benchmark peer, run the way Debian runs it: `tangd.socket` with
 * `Accept=yes`, i.e. one `tangd` process per TCP connection, here through
 * `systemd-socket-activate -l 127.0.0.1:PORT -a --inetd /usr/libexec/tangd DIR` (socat as a
 * fallback when systemd-socket-activate is absent). Installs nothing itself; see apt.ts.
 *
 * Measuring: tangd writes each response in two write()s on a socket without TCP_NODELAY, so on
 * a reused (keep-alive) connection every response waits ~40 ms for the client's delayed ACK
 * (Nagle's algorithm on the server side). clevis runs one curl per request, i.e. a fresh
 * connection, which never hits that. So {@link tangRecExchange} opens a new connection per
 * request (node:http with `agent: false`).
 */
import { freePort } from '../../test/helpers/net.ts'
import { spawn, type ChildProcess } from 'node:child_process'
import { createHash } from 'node:crypto'
import { mkdtemp, rm } from 'node:fs/promises'
import http from 'node:http'
import os from 'node:os'
import path from 'node:path'
import { b64uDecode, fromUtf8 } from '../../shared/crypto/bytes.ts'
import {
  parseEcPublicJwk,
  provision,
  startRecovery,
  type EcPublicJwk,
  type McrRecovery,
} from '../../shared/tang/mcr.ts'
import { hasBinary, type DebianPackage } from './apt.ts'
import { runLoad, type LoadResult } from './load.ts'

export const TANGD = '/usr/libexec/tangd'
export const TANGD_KEYGEN = '/usr/libexec/tangd-keygen'

/** What the tang benchmarks want installed (tang-only needs just tang and a launcher). */
export const TANG_PACKAGES: readonly DebianPackage[] = [
  { name: 'tang', binaries: [TANGD, TANGD_KEYGEN] },
  { name: 'clevis', binaries: ['clevis'] },
  { name: 'jose', binaries: ['jose'] },
  { name: 'socat', binaries: ['socat'] },
]

export type TangLauncher = 'systemd-socket-activate' | 'socat'

export interface TangPeer {
  /** Base URL, e.g. http://127.0.0.1:40123 */
  url: string
  port: number
  keyDir: string
  launcher: TangLauncher
  /** PID of the launcher; its reaped children are the per-connection tangd processes. */
  pid: number
  /** Stop the listener (and remove the key directory if we created it). Idempotent. */
  stop(): Promise<void>
}

export interface StartTangOptions {
  /** Loopback port; default: a free one. */
  port?: number
  /** Existing tangd key directory; default: a fresh temporary one made with tangd-keygen. */
  keyDir?: string
  /** Default: systemd-socket-activate when present, else socat. */
  launcher?: TangLauncher
}

/** Is tang installed, and which launchers are available? Checks only; installs nothing. */
export function checkTang(): { ok: boolean; missing: string[]; launchers: TangLauncher[] } {
  const missing = [TANGD, TANGD_KEYGEN].filter((b) => !hasBinary(b))
  const launchers: TangLauncher[] = []
  if (hasBinary('systemd-socket-activate')) launchers.push('systemd-socket-activate')
  if (hasBinary('socat')) launchers.push('socat')
  if (launchers.length === 0) missing.push('systemd-socket-activate or socat')
  return { ok: missing.length === 0, missing, launchers }
}

function runQuiet(cmd: string, args: readonly string[], timeoutMs: number): Promise<void> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] })
    let err = ''
    child.stderr?.on('data', (b: Buffer) => {
      if (err.length < 4096) err += b.toString()
    })
    const timer = setTimeout(() => child.kill('SIGKILL'), timeoutMs)
    child.on('error', (e) => {
      clearTimeout(timer)
      reject(e)
    })
    child.on('close', (code) => {
      clearTimeout(timer)
      if (code === 0) resolve()
      else reject(new Error(`${cmd} exited ${String(code)}: ${err.trim()}`))
    })
  })
}

interface HttpReply {
  status: number
  body: string
}

/** One HTTP exchange on a fresh loopback connection (`agent: false` => `Connection: close`). */
export function freshRequest(
  url: string,
  method: 'GET' | 'POST',
  body?: Buffer,
  contentType?: string,
  timeoutMs = 10_000,
  /** A keep-alive agent to share one connection between requests; default a new connection. */
  agent: http.Agent | false = false,
): Promise<HttpReply> {
  return new Promise((resolve, reject) => {
    const u = new URL(url)
    if (u.hostname !== '127.0.0.1') {
      reject(new Error(`refusing non-loopback URL ${url}`))
      return
    }
    const headers: Record<string, string> = {}
    if (body !== undefined) headers['Content-Length'] = String(body.length)
    if (contentType !== undefined) headers['Content-Type'] = contentType
    const req = http.request(
      {
        host: '127.0.0.1',
        port: Number(u.port),
        path: `${u.pathname}${u.search}`,
        method,
        agent,
        headers,
        timeout: timeoutMs,
      },
      (res) => {
        const chunks: Buffer[] = []
        let size = 0
        res.on('data', (c: Buffer) => {
          size += c.length
          if (size > 1 << 20) req.destroy(new Error('response too large'))
          else chunks.push(c)
        })
        res.on('end', () =>
          resolve({ status: res.statusCode ?? 0, body: Buffer.concat(chunks).toString('utf8') }),
        )
        res.on('error', reject)
      },
    )
    req.on('timeout', () => req.destroy(new Error(`timed out after ${timeoutMs} ms`)))
    req.on('error', reject)
    req.end(body)
  })
}

/** `GET {url}/adv` on a fresh connection; returns the JWS text. */
export async function fetchAdv(url: string): Promise<string> {
  const r = await freshRequest(`${url}/adv`, 'GET')
  if (r.status !== 200) throw new Error(`GET ${url}/adv: HTTP ${r.status}`)
  return r.body
}

async function waitReady(
  url: string,
  child: ChildProcess,
  stderrTail: () => string,
): Promise<void> {
  let last: unknown
  for (let i = 0; i < 100; i++) {
    if (child.exitCode !== null || child.signalCode !== null)
      throw new Error(`tang launcher exited early: ${stderrTail()}`)
    try {
      await fetchAdv(url)
      return
    } catch (e) {
      last = e
    }
    await new Promise((r) => setTimeout(r, 50))
  }
  throw new Error(`tang at ${url} not ready after 5 s: ${String(last)} ${stderrTail()}`)
}

/**
 * Start Debian's tangd on a loopback port, inetd-style (one tangd per connection), with a fresh
 * key directory unless one is given. Always call `stop()` (use try/finally).
 */
export async function startTangPeer(opts: StartTangOptions = {}): Promise<TangPeer> {
  const check = checkTang()
  if (!check.ok)
    throw new Error(
      `tang is not installed (missing ${check.missing.join(', ')}); apt-get install -y tang socat`,
    )
  const launcher = opts.launcher ?? check.launchers[0]
  if (launcher === undefined || !check.launchers.includes(launcher))
    throw new Error(`launcher ${String(launcher)} is not available`)
  const ownDir = opts.keyDir === undefined
  const keyDir = opts.keyDir ?? (await mkdtemp(path.join(os.tmpdir(), 'unlockd-bench-tang-')))
  if (ownDir) await runQuiet(TANGD_KEYGEN, [keyDir], 30_000)
  const port = opts.port ?? (await freePort())
  const args =
    launcher === 'systemd-socket-activate'
      ? ['-l', `127.0.0.1:${port}`, '-a', '--inetd', TANGD, keyDir]
      : [`TCP-LISTEN:${port},bind=127.0.0.1,reuseaddr,fork,backlog=1024`, `EXEC:${TANGD} ${keyDir}`]
  // tangd logs one line per request to stderr: drain it (a full pipe would block tangd), keep a tail.
  const child = spawn(launcher, args, { stdio: ['ignore', 'ignore', 'pipe'] })
  let tail = ''
  child.stderr?.on('data', (b: Buffer) => {
    tail = (tail + b.toString()).slice(-2048)
  })
  const url = `http://127.0.0.1:${port}`
  let stopped: Promise<void> | undefined
  const stop = (): Promise<void> => {
    stopped ??= (async () => {
      if (child.exitCode === null && child.signalCode === null) {
        // Give the launcher a moment to reap the last per-connection tangd processes.
        await new Promise((r) => setTimeout(r, 200))
        const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()))
        child.kill('SIGTERM')
        const timer = setTimeout(() => child.kill('SIGKILL'), 3000)
        await exited
        clearTimeout(timer)
      }
      if (ownDir) await rm(keyDir, { recursive: true, force: true })
    })()
    return stopped
  }
  try {
    await waitReady(url, child, () => tail)
  } catch (e) {
    await stop()
    throw e
  }
  return { url, port, keyDir, launcher, pid: child.pid as number, stop }
}

function exchangeKeyOf(adv: unknown): EcPublicJwk {
  const jws: unknown = typeof adv === 'string' ? JSON.parse(adv) : adv
  if (
    typeof jws !== 'object' ||
    jws === null ||
    typeof (jws as { payload?: unknown }).payload !== 'string'
  )
    throw new Error('not a tang advertisement')
  const bytes = b64uDecode((jws as { payload: string }).payload)
  if (bytes === undefined) throw new Error('advertisement payload is not base64url')
  const payload = JSON.parse(fromUtf8(bytes)) as { keys?: unknown }
  if (!Array.isArray(payload.keys)) throw new Error('advertisement payload has no keys')
  for (const k of payload.keys) {
    const jwk = parseEcPublicJwk(k)
    if (jwk.key_ops?.includes('deriveKey') === true || jwk.use === 'enc') return jwk
  }
  throw new Error('advertisement has no exchange key')
}

function s256Thumbprint(jwk: EcPublicJwk): string {
  return createHash('sha256')
    .update(JSON.stringify({ crv: jwk.crv, kty: jwk.kty, x: jwk.x, y: jwk.y }))
    .digest('base64url')
}

export interface RecExchangeOptions {
  /** Distinct blinded requests prepared up front and used round-robin. Default 16. */
  pool?: number
}

/**
 * Build the load function for one blinded `/rec` exchange per call, on a fresh TCP connection:
 * POST `{url}/rec/{kid}` with `X = C + E`, check HTTP 200, unblind the reply and check it equals
 * the ECDH point made at provisioning. The P-521 scalar multiplications (ephemeral and blinding
 * keys, `e·S`) happen once per pool entry here, so the load generator spends only a point
 * subtraction per request and the CPU it shares with the server goes to the server. The advertisement's
 * signatures are not checked (trusted peer). `url` is the Tang base URL (also works for
 * `/tang/HOST`-style bases).
 */
export function tangRecExchange(
  url: string,
  adv: unknown,
  opts: RecExchangeOptions = {},
): () => Promise<void> {
  const size = opts.pool ?? 16
  if (!Number.isInteger(size) || size < 1 || size > 1024)
    throw new RangeError('pool must be in 1..1024')
  const server = exchangeKeyOf(adv)
  const recUrl = `${url.replace(/\/+$/, '')}/rec/${s256Thumbprint(server)}`
  const { epk, sharedX } = provision(server)
  const expected = Buffer.from(sharedX)
  const pool: { rec: McrRecovery; body: Buffer }[] = []
  for (let i = 0; i < size; i++) {
    const rec = startRecovery(epk, server)
    pool.push({ rec, body: Buffer.from(JSON.stringify(rec.request)) })
  }
  let next = 0
  return async () => {
    const entry = pool[next++ % pool.length]
    if (entry === undefined) throw new Error('empty pool')
    const r = await freshRequest(recUrl, 'POST', entry.body, 'application/jwk+json')
    if (r.status !== 200) throw new Error(`POST /rec: HTTP ${r.status}`)
    const z = entry.rec.unblind(JSON.parse(r.body) as unknown)
    if (!expected.equals(z)) throw new Error('unblinded point does not match: wrong /rec answer')
  }
}

export interface BenchRecOptions {
  concurrencies?: readonly number[]
  durationMs?: number
  /** Calls before measuring (also a correctness check). Default 50. */
  warmupRequests?: number
  log?: (line: string) => void
}

/**
 * Measure `/rec` of any Tang-compatible base URL at each concurrency (closed loop, fresh
 * connection per request). Use the same function for tangd and for our server.
 */
export async function benchTangRec(
  url: string,
  adv: unknown,
  opts: BenchRecOptions = {},
): Promise<{ concurrency: number; result: LoadResult }[]> {
  const log = opts.log ?? (() => {})
  const fn = tangRecExchange(url, adv)
  const warm = await runLoad({ concurrency: 4, requests: opts.warmupRequests ?? 50, fn })
  if (warm.errors > 0)
    throw new Error(`warm-up against ${url} failed: ${warm.firstError ?? 'unknown error'}`)
  const out: { concurrency: number; result: LoadResult }[] = []
  for (const c of opts.concurrencies ?? [1, 16, 64]) {
    log(`  /rec c=${c} for ${opts.durationMs ?? 5000} ms ...`)
    out.push({
      concurrency: c,
      result: await runLoad({ concurrency: c, durationMs: opts.durationMs ?? 5000, fn }),
    })
  }
  return out
}
