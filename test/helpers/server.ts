/**
 * A real escrow server for a test: a fresh data dir with a real keystore and SQLite file,
 * listening on 127.0.0.1 port 0, closed in teardown.
 */
import type { ExecutionContext } from 'ava'
import { mkdtempSync, readFileSync, rmSync } from 'node:fs'
import { nodeTransport } from '../../platform/node-transport.ts'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { initDataDir, openDeps } from '../../server/setup.ts'
import { startServer, type RunningServer } from '../../server/main.ts'
import { memoryLogger } from '../../server/log.ts'
import type { ServerDeps, ServerSettings } from '../../server/context.ts'
import { fetchTransport, type Transport } from '../../shared/client/transport.ts'
import { totpCodeAt } from '../../server/approvals/totp.ts'
import type { TangListenerConfig } from '../../shared/config/server.ts'

/** The base32 secret inside an otpauth:// URI. */
export function secretOfUri(uri: string): string {
  const s = new URL(uri).searchParams.get('secret')
  if (!s) throw new Error(`no secret in ${uri}`)
  return s
}

export const TEST_PASSPHRASE = 'correct horse battery staple'

const REQUEST_TIMEOUT_MS = 120_000

export interface TestServer {
  url: string
  dataDir: string
  token: string
  /** The init operator's TOTP secret (base32), made by `server init`. */
  adminSecret: string
  deps: ServerDeps
  server: RunningServer
  transport: Transport
  logs: string[]
  /** Stop and start again on the same data dir (state must survive). */
  restart(): Promise<TestServer>
  close(): Promise<void>
  /**
   * A fresh code of the init operator. Each call stands for the admin reading the authenticator
   * again later: the admin's last accepted step is cleared first, so a test can make several
   * calls within one 30 s step without waiting. Only this helper's operator gets that.
   */
  adminCode(): Promise<string>
  /** Call the admin API as the init operator; `totp` adds a fresh code in X-Unlockd-Totp. */
  admin(
    method: 'GET' | 'POST' | 'PATCH' | 'DELETE',
    path: string,
    body?: unknown,
    opts?: { totp?: boolean },
  ): Promise<{ status: number; body: any }>
}

export async function startTestServer(
  t: ExecutionContext,
  opts: {
    settings?: Partial<ServerSettings>
    dataDir?: string
    token?: string
    adminSecret?: string
    db?: string
    now?: () => number
    listen?: string
    tls?: { cert: string; key: string }
    /** The plain-HTTP Tang listener (server.json `tangListener`). */
    tangListener?: TangListenerConfig
  } = {},
): Promise<TestServer> {
  const dataDir = opts.dataDir ?? mkdtempSync(join(tmpdir(), 'unlockd-srv-'))
  const log = memoryLogger()
  let token = opts.token
  let adminSecret = opts.adminSecret
  if (!opts.dataDir) {
    const init = await initDataDir(dataDir, TEST_PASSPHRASE, {
      operator: 'admin',
      db: opts.db,
      log,
    })
    token = init.token
    adminSecret = secretOfUri(init.otpauthUri)
  }
  const deps = await openDeps(dataDir, TEST_PASSPHRASE, log, { db: opts.db })
  deps.settings = { ...deps.settings, pollHold: 2, ...opts.settings }
  if (opts.now) deps.now = opts.now
  const server = await startServer(deps, {
    listen: opts.listen ?? '127.0.0.1:0',
    ...(opts.tls ? { tlsCert: opts.tls.cert, tlsKey: opts.tls.key } : {}),
    tang: opts.tangListener,
  })
  const base = opts.tls
    ? nodeTransport(server.url, { ca: readFileSync(opts.tls.cert, 'utf8') })
    : fetchTransport(server.url)
  // The clients' 10 s default is for real networks; a test on a busy 2-core machine can wait
  // longer for its own server, so requests without their own bound get a generous one.
  const transport: Transport = (req) => base({ timeoutMs: REQUEST_TIMEOUT_MS, ...req })
  let closed = false
  const ts: TestServer = {
    url: server.url,
    dataDir,
    token: token as string,
    adminSecret: adminSecret ?? '',
    deps,
    server,
    transport,
    logs: log.lines,
    async restart() {
      await ts.close()
      return startTestServer(t, {
        ...opts,
        dataDir,
        token: token as string,
        ...(adminSecret ? { adminSecret } : {}),
      })
    },
    async close() {
      if (closed) return
      closed = true
      await server.close()
    },
    async adminCode() {
      if (!adminSecret) throw new Error('this test server was started without the admin secret')
      await deps.store.tx(async (tx) => {
        const op = await tx.getOperatorByName('admin')
        if (op) await tx.updateOperator(op.id, { totpLastStep: null })
      })
      return totpCodeAt(adminSecret, deps.now())
    },
    async admin(method, path, body, o = {}) {
      const res = await transport({
        method,
        path: `/v1/admin${path}`,
        bearer: token as string,
        ...(body === undefined ? {} : { body }),
        ...(o.totp ? { headers: { 'x-unlockd-totp': await ts.adminCode() } } : {}),
      })
      return res as { status: number; body: any }
    },
  }
  t.teardown(async () => {
    await ts.close()
    if (!opts.dataDir) rmSync(dataDir, { recursive: true, force: true })
  })
  return ts
}
