/**
 * `unlockd server start`: the only place that listens. Plain HTTP is refused on anything but
 * loopback; TLS uses the given certificate and key. The optional Tang listener
 * (./tang-listener.ts) is plain HTTP on any address and serves only the Tang routes.
 * SIGTERM/SIGINT close gracefully (stop accepting, let in-flight requests finish, close the
 * store); background jobs purge spent nonces and rotate the KEK on schedule.
 */
import { createAdaptorServer } from '@hono/node-server'
import { createServer as createHttpsServer } from 'node:https'
import { readFileSync } from 'node:fs'
import type { Server as HttpServer } from 'node:http'
import type { AddressInfo } from 'node:net'
import { UnlockdError } from '../shared/errors.ts'
import { isLoopback, parseIp } from '../shared/util/cidr.ts'
import type { TangListenerConfig } from '../shared/config/server.ts'
import { createApp } from './app.ts'
import { createMetrics } from './http/metrics.ts'
import { createTangApp } from './tang-listener.ts'
import type { ServerDeps } from './context.ts'
import { closeDeps } from './setup.ts'
import { runMaintenance } from './jobs.ts'
import { flushAuthFailureAudit } from './escrow/auth-failure-audit.ts'

export interface ListenOptions {
  listen: string
  tlsCert?: string | undefined
  tlsKey?: string | undefined
  /** The plain-HTTP Tang listener; absent: none. */
  tang?: TangListenerConfig | undefined
}

export function parseListen(text: string): { host: string; port: number } {
  const m = /^(?:\[([0-9a-fA-F:.]+)\]|([A-Za-z0-9.-]+)):(\d{1,5})$/.exec(text)
  const port = Number(m?.[3])
  if (!m || !Number.isInteger(port) || port > 65535)
    throw new UnlockdError('usage', `--listen must be HOST:PORT (got ${text})`)
  return { host: (m[1] ?? m[2]) as string, port }
}

/**
 * Per-connection bounds against slow or bloated requests. The timeouts cover *receiving* a
 * request (headers, then the whole body), not answering it: a long-poll whose small body has
 * arrived may be held for pollHold without tripping them. Node checks them every
 * connectionsCheckingInterval, so that is their resolution.
 */
export const CONNECTION_LIMITS = {
  /** Request line plus headers; ours are a bearer token and a few short fields. */
  maxHeaderSize: 16 * 1024,
  /** Headers must be complete this long after the connection (or previous request) starts. */
  headersTimeout: 10_000,
  /** The whole request, body included (bodies are at most 256 KiB). */
  requestTimeout: 30_000,
  connectionsCheckingInterval: 1000,
  keepAliveTimeout: 5000,
} as const

export interface RunningServer {
  url: string
  port: number
  /** The Tang listener's base URL (http://HOST:PORT), when there is one. */
  tangUrl?: string
  tangPort?: number
  close(): Promise<void>
}

type AnyServer = ReturnType<typeof createAdaptorServer>

function listenOn(server: AnyServer, host: string, port: number): Promise<AddressInfo> {
  return new Promise<AddressInfo>((resolve, reject) => {
    server.once('error', reject)
    server.listen(port, host, () => {
      server.off('error', reject)
      resolve(server.address() as AddressInfo)
    })
  })
}

function shownHost(addr: AddressInfo): string {
  return addr.family === 'IPv6' ? `[${addr.address}]` : addr.address
}

/** Stop accepting, let in-flight requests finish; long-polls get a bounded grace period. */
function closeQuietly(server: AnyServer): Promise<void> {
  return new Promise<void>((resolve) => {
    server.close(() => resolve())
    ;(server as HttpServer).closeIdleConnections?.()
    setTimeout(() => (server as HttpServer).closeAllConnections?.(), 3000).unref()
  })
}

/** A root host that is not (yet) a Tang host answers 404; say so once at start. */
async function warnUnlessTangHost(deps: ServerDeps, name: string | undefined): Promise<void> {
  if (name === undefined) return
  const h = await deps.store.tx((t) => t.getHostByName(name))
  if (h?.tang === true && h.state !== 'shredded') return
  deps.log.log(
    'warn',
    'the Tang listener root host is not a live Tang host; its root URLs answer 404',
    {
      host: name,
      fix: `unlockd host add ${name} --tang, or change tangListener.rootHost in server.json`,
    },
  )
}

export async function startServer(deps: ServerDeps, opts: ListenOptions): Promise<RunningServer> {
  const { host, port } = parseListen(opts.listen)
  const tls = opts.tlsCert !== undefined || opts.tlsKey !== undefined
  if (tls && (!opts.tlsCert || !opts.tlsKey))
    throw new UnlockdError('usage', '--tls-cert and --tls-key go together')
  const loopback = host === 'localhost' || (parseIp(host) !== undefined && isLoopback(host))
  if (!tls && !loopback) {
    throw new UnlockdError(
      'usage',
      `refusing plain HTTP on ${host}: give --tls-cert and --tls-key, or listen on 127.0.0.1`,
    )
  }
  const tangAt = opts.tang === undefined ? undefined : parseListen(opts.tang.listen)
  const metrics = createMetrics(deps)
  const app = createApp(deps, metrics)
  const server = tls
    ? createAdaptorServer({
        fetch: app.fetch,
        createServer: createHttpsServer,
        serverOptions: {
          ...CONNECTION_LIMITS,
          cert: readFileSync(opts.tlsCert as string),
          key: readFileSync(opts.tlsKey as string),
          minVersion: 'TLSv1.2',
        },
      })
    : createAdaptorServer({ fetch: app.fetch, serverOptions: CONNECTION_LIMITS })
  const addr = await listenOn(server, host, port)
  const url = `${tls ? 'https' : 'http'}://${shownHost(addr)}:${addr.port}`
  let tangServer: AnyServer | undefined
  let tangAddr: AddressInfo | undefined
  if (opts.tang !== undefined && tangAt !== undefined) {
    const tangApp = createTangApp(deps, metrics, { rootHost: opts.tang.rootHost })
    tangServer = createAdaptorServer({ fetch: tangApp.fetch, serverOptions: CONNECTION_LIMITS })
    try {
      tangAddr = await listenOn(tangServer, tangAt.host, tangAt.port)
    } catch (cause) {
      await closeQuietly(server)
      const why = (cause as { code?: unknown }).code
      throw new UnlockdError(
        'config_invalid',
        `the Tang listener cannot listen on ${opts.tang.listen}${typeof why === 'string' ? ` (${why})` : ''}: free that port or change tangListener.listen in server.json`,
        { cause },
      )
    }
    await warnUnlessTangHost(deps, opts.tang.rootHost)
  }
  const tangUrl = tangAddr && `http://${shownHost(tangAddr)}:${tangAddr.port}`
  const stopJobs = runMaintenance(deps)
  deps.log.log('info', 'listening', {
    url,
    ...(tangUrl === undefined ? {} : { tang: tangUrl, tangRoot: opts.tang?.rootHost ?? null }),
    store: deps.store.kind,
    kek: deps.keystore.currentVersion,
  })
  let closing: Promise<void> | undefined
  return {
    url,
    port: addr.port,
    ...(tangAddr && tangUrl ? { tangUrl, tangPort: tangAddr.port } : {}),
    close() {
      closing ??= (async () => {
        stopJobs()
        await Promise.all([closeQuietly(server), tangServer && closeQuietly(tangServer)])
        await flushAuthFailureAudit(deps, true)
        await closeDeps(deps)
        deps.log.log('info', 'stopped', {})
      })()
      return closing
    },
  }
}
