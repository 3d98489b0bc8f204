/**
 * Notifications for new approval requests: one JSON POST to `settings.webhook.url`, signed with
 * HMAC-SHA256 over the exact body bytes (`X-Unlockd-Signature: sha256=<hex>`) when a secret is
 * set. ntfy reads the `Title`, `Click`, `Tags` and `Priority` headers, so a plain ntfy topic URL
 * works too; generic receivers read the JSON (`message` plus the request's facts).
 *
 * Delivery runs beside the unlock path, never in it: the 'approval:new' event only queues work
 * (after the opening transaction commits), each attempt has a timeout, failures are logged and
 * retried with bounded backoff, and the number of deliveries in flight is capped.
 * The body carries no secret: no TOTP, no token, no key material.
 */
import { createHmac } from 'node:crypto'
import type { ServerDeps } from '../context.ts'
import type { ApprovalView } from '../../shared/protocol/messages.ts'
import { showApproval } from './decide.ts'
import type { AuditHead } from '../../shared/audit.ts'

export interface NotifierOptions {
  /** Delays before each retry; attempts = delays + 1. */
  retryDelaysMs: readonly number[]
  timeoutMs: number
  maxInFlight: number
}

export const DEFAULT_NOTIFIER: NotifierOptions = {
  retryDelaysMs: [500, 2000, 8000, 30_000],
  timeoutMs: 5000,
  maxInFlight: 64,
}

export interface ApprovalNotification {
  event: 'approval.requested'
  title: string
  message: string
  approval: ApprovalView
  sentAt: number
}

export function signBody(secret: string, body: string): string {
  return `sha256=${createHmac('sha256', secret).update(body).digest('hex')}`
}

export function notificationFor(a: ApprovalView, now: number): ApprovalNotification {
  const vols = a.volumes.length ? a.volumes.join(', ') : 'all volumes'
  const who = a.required > 1 ? ` (${a.required} operators must approve)` : ''
  const link = a.url ? `\nApprove: ${a.url}` : `\nApprove: unlockd approve ${a.id} --code CODE`
  return {
    event: 'approval.requested',
    title: `unlockd: ${a.host} asks to unlock`,
    message: `${a.host} asks to unlock ${vols} from ${a.source} (boot ${a.bootId}); rule ${a.rule}${who}. Expires ${new Date(a.expiresAt * 1000).toISOString()}.${link}`,
    approval: a,
    sentAt: now,
  }
}

/** Strip what a header value cannot hold (ntfy shows Title as is). */
const headerSafe = (s: string): string => s.replace(/[^\x20-\x7e]/g, '?').slice(0, 200)

/** Where a URL points, without credentials, path or query (those may hold an access token). */
const originOf = (url: string): string => {
  try {
    return new URL(url).origin
  } catch {
    return 'invalid-url'
  }
}

const installed = new WeakSet<object>()

/**
 * Subscribe once per `deps.events`. The webhook settings are read when an event fires, so a
 * server started before `settings.webhook` was filled in still notifies.
 */
export function installNotifier(deps: ServerDeps, opts: NotifierOptions = DEFAULT_NOTIFIER): void {
  if (installed.has(deps.events)) return
  installed.add(deps.events)
  let inFlight = 0
  deps.events.on('approval:new', (id: unknown) => {
    const hook = deps.settings.webhook
    if (!hook || typeof id !== 'string') return
    if (inFlight >= opts.maxInFlight) {
      deps.log.log('warn', 'webhook backlog full; notification dropped', { approval: id })
      return
    }
    inFlight++
    // setImmediate: the event fires inside the opening transaction; reading the request waits
    // for it to commit (the store serializes transactions), and the unlock never waits for us.
    setImmediate(() => {
      void deliver(deps, hook, id, opts).finally(() => {
        inFlight--
      })
    })
  })
}

async function deliver(
  deps: ServerDeps,
  hook: { url: string; secret: string | null },
  id: string,
  opts: NotifierOptions,
): Promise<void> {
  let view: ApprovalView
  try {
    view = await showApproval(deps, id)
  } catch {
    return // the request did not commit (or is gone): nothing to announce
  }
  const n = notificationFor(view, deps.now())
  const body = JSON.stringify(n)
  const headers: Record<string, string> = {
    'content-type': 'application/json',
    'user-agent': 'unlockd-webhook/1',
    'x-unlockd-event': n.event,
    'x-unlockd-delivery': id,
    title: headerSafe(n.title),
    tags: 'lock,unlockd',
    priority: 'high',
  }
  if (view.url) headers['click'] = view.url
  await post(deps, hook, headers, body, { approval: id }, opts)
}

/**
 * One audit chain head to the webhook (server/escrow/audit-chain.ts), so a copy lives outside
 * the server: event `audit.head`, signed like approval notifications. Fire and forget.
 */
export function notifyAuditHead(
  deps: ServerDeps,
  head: AuditHead,
  opts: NotifierOptions = DEFAULT_NOTIFIER,
): Promise<void> {
  const hook = deps.settings.webhook
  if (!hook) return Promise.resolve()
  const body = JSON.stringify({
    event: 'audit.head',
    title: 'unlockd: audit chain head',
    message: `audit chain head: position ${head.pos}, entry ${head.seq}, link ${head.hash}`,
    head,
    sentAt: deps.now(),
  })
  const headers: Record<string, string> = {
    'content-type': 'application/json',
    'user-agent': 'unlockd-webhook/1',
    'x-unlockd-event': 'audit.head',
    'x-unlockd-delivery': `audit-${head.pos}`,
    title: 'unlockd: audit chain head',
    tags: 'lock,unlockd',
    priority: 'min',
  }
  if (hook.secret) headers['x-unlockd-signature'] = signBody(hook.secret, body)
  return post(deps, hook, headers, body, { auditHead: head.pos }, opts)
}

async function post(
  deps: ServerDeps,
  hook: { url: string; secret: string | null },
  headers: Record<string, string>,
  body: string,
  what: Record<string, unknown>,
  opts: NotifierOptions,
): Promise<void> {
  const where = originOf(hook.url)
  for (let attempt = 0; ; attempt++) {
    let outcome: string
    try {
      const res = await fetch(hook.url, {
        method: 'POST',
        headers,
        body,
        redirect: 'manual',
        signal: AbortSignal.timeout(opts.timeoutMs),
      })
      await res.body?.cancel()
      if (res.status >= 200 && res.status < 300) {
        deps.log.log('info', 'webhook delivered', {
          ...what,
          to: where,
          status: res.status,
          attempt: attempt + 1,
        })
        return
      }
      outcome = `HTTP ${res.status}`
      // Redirects are not followed, and a 4xx will not get better by retrying (but 408, 429 may).
      if (res.status >= 300 && res.status < 500 && res.status !== 408 && res.status !== 429) {
        deps.log.log('error', 'webhook refused; not retrying', {
          ...what,
          to: where,
          status: res.status,
        })
        return
      }
    } catch (err) {
      outcome =
        err instanceof Error
          ? err.cause instanceof Error
            ? err.cause.message
            : err.message
          : 'network error'
    }
    const delay = opts.retryDelaysMs[attempt]
    if (delay === undefined) {
      deps.log.log('error', 'webhook failed; giving up', {
        ...what,
        to: where,
        attempts: attempt + 1,
        err: outcome,
      })
      return
    }
    deps.log.log('warn', 'webhook failed; will retry', {
      ...what,
      to: where,
      attempt: attempt + 1,
      retryInMs: delay,
      err: outcome,
    })
    await new Promise<void>((resolve) => setTimeout(resolve, delay).unref())
  }
}
