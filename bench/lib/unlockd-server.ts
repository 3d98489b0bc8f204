/**
 * unlockd as a benchmark target: a real `node dist/unlockd.mjs server start` child process on a
 * loopback port, with a fresh data directory (keystore + SQLite, or a PostgreSQL URL), so the
 * load generator in the bench process never shares an event loop with the server.
 *
 * Settings for load tests (written to server.json, and printed by every suite):
 * - `hostRateLimit: "off"`: the per-source-address limiter (200/s, burst 400 by default) would
 *   throttle a load generator that sends everything from 127.0.0.1;
 * - `kekRotation: "off"`: no scheduled rotation in the middle of a measurement.
 * Everything else is the default (SQLite WAL with synchronous=FULL, access log on stdout, here
 * redirected to a file in the data directory).
 */
import { freePort } from '../../test/helpers/net.ts'
import { spawn, type ChildProcess } from 'node:child_process'
import { closeSync, mkdtempSync, openSync, readFileSync, writeFileSync } from 'node:fs'
import { rm } from 'node:fs/promises'
import http from 'node:http'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import { freshRequest } from './tang-peer.ts'
import { totpCodeAt } from '../../server/approvals/totp.ts'

export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
export const CLI = path.join(ROOT, 'dist/unlockd.mjs')
export const AGENT_CLI = path.join(ROOT, 'dist/unlockd-agent.mjs')
export const BENCH_PASSPHRASE = 'bench keystore passphrase'

export interface DataDir {
  dir: string
  passFile: string
  /** Operator API token of `admin`. */
  token: string
  /** Store location (SQLite file or postgres URL). */
  db: string
  /** The admin's TOTP secret (base32), for the calls that need a second factor. */
  totpSecret: string
  remove(): Promise<void>
}

export interface UnlockdServer {
  url: string
  port: number
  pid: number
  data: DataDir
  /** Tail of the server's output (stdout access log + stderr), for diagnosis. */
  logTail(): string
  stop(): Promise<void>
}

function runCli(args: readonly string[], env: Record<string, string> = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [CLI, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ...env },
    })
    let out = ''
    let err = ''
    child.stdout.on('data', (b: Buffer) => (out += b.toString()))
    child.stderr.on('data', (b: Buffer) => (err += b.toString()))
    const timer = setTimeout(() => child.kill('SIGKILL'), 120_000)
    child.on('error', reject)
    child.on('close', (code) => {
      clearTimeout(timer)
      if (code === 0) resolve(out)
      else reject(new Error(`unlockd ${args.join(' ')} exited ${String(code)}: ${err.trim()}`))
    })
  })
}

/** `unlockd server init` in a fresh directory, with the load-test settings in server.json. */
export async function initDataDir(
  opts: { db?: string; metricsToken?: string } = {},
): Promise<DataDir> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'unlockd-bench-srv-'))
  const passFile = path.join(dir, 'passphrase')
  const totpFile = path.join(dir, 'admin.totp')
  writeFileSync(passFile, BENCH_PASSPHRASE, { mode: 0o600 })
  const out = await runCli([
    'server',
    'init',
    '--data',
    dir,
    '--passphrase-file',
    passFile,
    '--totp-file',
    totpFile,
    '--json',
    ...(opts.db ? ['--db', opts.db] : []),
  ])
  const { token } = JSON.parse(out) as { token: string }
  const cfgPath = path.join(dir, 'server.json')
  const cfg = JSON.parse(readFileSync(cfgPath, 'utf8')) as Record<string, unknown>
  if (opts.metricsToken !== undefined) {
    const tokenFile = path.join(dir, 'metrics.token')
    writeFileSync(tokenFile, opts.metricsToken, { mode: 0o600 })
    cfg['metrics'] = { tokenFile }
  }
  writeFileSync(
    cfgPath,
    JSON.stringify({ ...cfg, hostRateLimit: 'off', kekRotation: 'off' }, null, 2),
    { mode: 0o600 },
  )
  return {
    dir,
    passFile,
    token,
    totpSecret: new URL(readFileSync(totpFile, 'utf8').trim()).searchParams.get('secret') ?? '',
    db: opts.db ?? path.join(dir, 'unlockd.db'),
    remove: () => rm(dir, { recursive: true, force: true }),
  }
}

/** Start `unlockd server start` on a free loopback port over `data`; resolves once /healthz answers. */
export async function startUnlockdServer(
  data: DataDir,
  opts: { nodeArgs?: readonly string[]; cli?: string; env?: Record<string, string> } = {},
): Promise<UnlockdServer> {
  const port = await freePort()
  const logPath = path.join(data.dir, `server-${port}.log`)
  const fd = openSync(logPath, 'a')
  let child: ChildProcess
  try {
    child = spawn(
      process.execPath,
      [
        ...(opts.nodeArgs ?? []),
        opts.cli ?? CLI,
        'server',
        'start',
        '--data',
        data.dir,
        '--listen',
        `127.0.0.1:${port}`,
        '--passphrase-file',
        data.passFile,
      ],
      {
        stdio: ['ignore', fd, fd],
        cwd: data.dir,
        env: { ...process.env, ...opts.env },
      },
    )
  } finally {
    closeSync(fd)
  }
  const url = `http://127.0.0.1:${port}`
  const logTail = (): string => {
    try {
      return readFileSync(logPath, 'utf8').slice(-3000)
    } catch {
      return ''
    }
  }
  let stopped: Promise<void> | undefined
  const stop = (): Promise<void> => {
    stopped ??= new Promise<void>((resolve) => {
      if (child.exitCode !== null || child.signalCode !== null) return resolve()
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000)
      child.once('exit', () => {
        clearTimeout(timer)
        resolve()
      })
      child.kill('SIGTERM')
    })
    return stopped
  }
  for (let i = 0; ; i++) {
    if (child.exitCode !== null)
      throw new Error(`unlockd server exited early (${String(child.exitCode)}): ${logTail()}`)
    try {
      const r = await freshRequest(`${url}/healthz`, 'GET')
      if (r.status === 200) break
    } catch {
      // not up yet
    }
    if (i >= 200) {
      await stop()
      throw new Error(`unlockd server not ready after 20 s: ${logTail()}`)
    }
    await new Promise((r) => setTimeout(r, 100))
  }
  return { url, port, pid: child.pid as number, data, logTail, stop }
}

/** One operator API call (admin token), on a fresh connection. */
export function adminCall(
  server: { url: string; data: DataDir },
  method: 'GET' | 'POST',
  p: string,
  body?: unknown,
  opts: { totp?: boolean } = {},
): Promise<unknown> {
  return new Promise((resolve, reject) => {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body))
    const u = new URL(`${server.url}/v1/admin${p}`)
    const headers: Record<string, string> = { authorization: `Bearer ${server.data.token}` }
    if (opts.totp)
      headers['x-unlockd-totp'] = totpCodeAt(server.data.totpSecret, Math.floor(Date.now() / 1000))
    if (payload) {
      headers['content-type'] = 'application/json'
      headers['content-length'] = String(payload.length)
    }
    const req = http.request(
      {
        host: '127.0.0.1',
        port: Number(u.port),
        path: `${u.pathname}${u.search}`,
        method,
        agent: false,
        headers,
        timeout: 120_000,
      },
      (res) => {
        const chunks: Buffer[] = []
        res.on('data', (c: Buffer) => chunks.push(c))
        res.on('end', () => {
          const text = Buffer.concat(chunks).toString()
          const status = res.statusCode ?? 0
          if (status < 200 || status >= 300)
            reject(new Error(`${method} /v1/admin${p}: HTTP ${status} ${text.slice(0, 300)}`))
          else resolve(JSON.parse(text) as unknown)
        })
        res.on('error', reject)
      },
    )
    req.on('timeout', () => req.destroy(new Error('admin call timed out')))
    req.on('error', reject)
    req.end(payload)
  })
}
