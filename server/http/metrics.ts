/**
 * Prometheus metrics at `GET /metrics`, behind a read-only scrape token of their own (an
 * operator token is not accepted, and being on loopback is not enough: a local reverse proxy
 * would make every visitor local). Disabled (404) unless `metrics.tokenFile` is configured.
 *
 * Counters are per instance and counted at the HTTP edge, after the decision committed:
 * releases (agent unlocks and approval polls answered 200, Tang /rec answered 200) and
 * denials by code on the same routes, plus an unlock latency histogram. Gauges are read from
 * the store at scrape time, so they are fleet-wide on PostgreSQL: hosts by state, pending
 * approvals and the age of the oldest, the current KEK's age, and the progress of every
 * conversion (`unlockd encrypt`) a host reported, 1 once done.
 */
import type { MiddlewareHandler } from 'hono'
import { Counter, Gauge, Histogram, Registry } from 'prom-client'
import { UnlockdError } from '../../shared/errors.ts'
import { HOST_STATES } from '../../shared/protocol/messages.ts'
import { encryptionRatio } from '../../shared/protocol/encryption.ts'
import type { ServerDeps } from '../context.ts'
import { hashToken, hashesEqual } from '../escrow/secrets.ts'
import { bearer, type AppEnv } from './middleware.ts'

export interface Metrics {
  registry: Registry
  /** Counts releases, denials and latency of the unlock routes. */
  middleware: MiddlewareHandler<AppEnv>
  /**
   * The same counters on the plain-HTTP Tang listener, where a root host's `/rec/KID` is a
   * Tang recovery too.
   */
  tangListenerMiddleware: MiddlewareHandler<AppEnv>
  /** `GET /metrics`: checks the scrape token and renders the text format. */
  handler: MiddlewareHandler<AppEnv>
}

/** Which unlock route a request is, or undefined for any other route. */
function unlockRoute(method: string, path: string): 'unlock' | 'poll' | 'tang' | undefined {
  if (method !== 'POST') return undefined
  if (path === '/v1/unlock') return 'unlock'
  if (path === '/v1/approval/poll') return 'poll'
  if (/^\/tang\/[^/]+\/rec\/[^/]+$/.test(path)) return 'tang'
  return undefined
}

/** On the Tang listener: every Tang recovery, at /tang/NAME/rec/KID or the root /rec/KID. */
function tangListenerRoute(method: string, path: string): 'tang' | undefined {
  if (method !== 'POST') return undefined
  return /^(?:\/tang\/[^/]+)?\/rec\/[^/]+$/.test(path) ? 'tang' : undefined
}

export function createMetrics(deps: ServerDeps): Metrics {
  const registry = new Registry()
  const releases = new Counter({
    name: 'unlockd_releases_total',
    help: 'Key releases answered by this instance (agent unlocks and approval polls, Tang /rec).',
    labelNames: ['route'],
    registers: [registry],
  })
  const denials = new Counter({
    name: 'unlockd_denials_total',
    help: 'Refused unlock, poll and Tang /rec requests answered by this instance, by error code.',
    labelNames: ['route', 'code'],
    registers: [registry],
  })
  const pendingAnswers = new Counter({
    name: 'unlockd_approval_waits_total',
    help: 'Unlock and poll requests answered 202 (waiting for a human approval).',
    labelNames: ['route'],
    registers: [registry],
  })
  const latency = new Histogram({
    name: 'unlockd_unlock_duration_seconds',
    help: 'Time to answer POST /v1/unlock and Tang /rec on this instance.',
    labelNames: ['route'],
    buckets: [0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
    registers: [registry],
  })
  const hosts = new Gauge({
    name: 'unlockd_hosts',
    help: 'Enrolled hosts by state.',
    labelNames: ['state'],
    registers: [registry],
  })
  const approvalsPending = new Gauge({
    name: 'unlockd_approvals_pending',
    help: 'Approval requests waiting for operators.',
    registers: [registry],
  })
  const oldestPending = new Gauge({
    name: 'unlockd_approval_oldest_pending_seconds',
    help: 'Age of the oldest pending approval request (0 when none).',
    registers: [registry],
  })
  const kekAge = new Gauge({
    name: 'unlockd_kek_age_seconds',
    help: 'Age of the current key-encryption key.',
    registers: [registry],
  })

  const encryption = new Gauge({
    name: 'unlockd_encryption_progress_ratio',
    help: 'Fraction of the data an `unlockd encrypt` run has converted, by host and volume (1 when done).',
    labelNames: ['host', 'volume'],
    registers: [registry],
  })

  // Read from the store's own counters at scrape time (this instance, since it opened).
  const stats = (): ReturnType<ServerDeps['store']['commitStats']> => deps.store.commitStats()
  new Counter({
    name: 'unlockd_store_transactions_total',
    help: 'Store transactions run by this instance.',
    registers: [registry],
    collect() {
      this.reset()
      this.inc(stats().transactions)
    },
  })
  new Counter({
    name: 'unlockd_store_commits_total',
    help: 'Store commits by this instance, by whether they waited for durability (SQLite: one WAL fsync each; group commit makes them fewer than transactions).',
    labelNames: ['synced'],
    registers: [registry],
    collect() {
      const s = stats()
      this.reset()
      this.inc({ synced: 'true' }, s.syncedCommits)
      this.inc({ synced: 'false' }, s.commits - s.syncedCommits)
    },
  })
  new Counter({
    name: 'unlockd_store_round_trips_total',
    help: 'Statements (or statement batches) this instance sent to PostgreSQL (0 on SQLite).',
    registers: [registry],
    collect() {
      this.reset()
      this.inc(stats().roundTrips)
    },
  })

  async function readGauges(): Promise<void> {
    const now = deps.now()
    const { rows, pending, conversions } = await deps.store.tx(async (t) => ({
      rows: await t.listHosts(),
      pending: await t.listApprovals('pending'),
      conversions: await t.listEncryption(),
    }))
    const names = new Map(rows.map((h) => [h.id, h.name]))
    encryption.reset()
    for (const e of conversions)
      encryption.set(
        { host: names.get(e.hostId) ?? e.hostId, volume: e.volume },
        encryptionRatio(e),
      )
    for (const s of HOST_STATES) hosts.set({ state: s }, rows.filter((h) => h.state === s).length)
    const live = pending.filter((a) => a.expiresAt > now)
    approvalsPending.set(live.length)
    oldestPending.set(live.length === 0 ? 0 : now - Math.min(...live.map((a) => a.createdAt)))
    const created = deps.keystore.createdAt(deps.keystore.currentVersion)
    kekAge.set(created === undefined ? 0 : Math.max(0, now - created))
  }

  const counting =
    (classify: typeof unlockRoute): MiddlewareHandler<AppEnv> =>
    async (c, next) => {
      const route = classify(c.req.method, c.req.path)
      if (route === undefined) return next()
      const end = route === 'poll' ? undefined : latency.startTimer({ route })
      await next()
      end?.()
      const status = c.res.status
      if (status === 200) releases.inc({ route })
      else if (status === 202) pendingAnswers.inc({ route })
      else if (status >= 400 && status < 500)
        denials.inc({ route, code: c.get('errCode') ?? `http_${status}` })
      return undefined
    }
  const middleware = counting(unlockRoute)
  const tangListenerMiddleware = counting(tangListenerRoute)

  const handler: MiddlewareHandler<AppEnv> = async (c) => {
    const expected = deps.settings.metricsTokenHash
    if (expected === null) throw new UnlockdError('not_found', 'no such route')
    const token = bearer(c)
    if (token === undefined || token === '')
      throw new UnlockdError(
        'unauthorized',
        'metrics need the scrape token (Authorization: Bearer)',
      )
    if (!hashesEqual(await hashToken(token), expected))
      throw new UnlockdError('unauthorized', 'the scrape token is not valid')
    await readGauges()
    c.header('Cache-Control', 'no-store')
    return c.body(await registry.metrics(), 200, { 'Content-Type': registry.contentType })
  }

  return { registry, middleware, tangListenerMiddleware, handler }
}
