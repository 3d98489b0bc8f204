/**
 * The kill-switch channel. POST /v1/watch: the agent long-polls (signed, single-use nonce, like
 * the approval poll) and is told `{ order: 'shred', volumes }` as soon as a shred order exists for
 * it, else `{ order: 'none' }` after `pollHold`. A host that was offline learns the order on its
 * next contact: the order lives in the database, and a shredded host keeps its tombstone row
 * (with its public signing key), so its requests still verify. POST /v1/report records what the
 * agent did; `shred_done` closes the order.
 *
 * lastSeenAt: a watch counts as contact only from the boot that last received keys (the host's
 * `lastBootId`) on an active host. A watch from any other boot (a disk image booted elsewhere
 * with the host keys on it) must not make an idle host look alive, or it could slip past
 * `after-idle` and idle suspension on its next unlock.
 *
 * A v2 watch carries the host's challenge; a shred order answers it with a signed verdict
 * (./verdicts.ts), which is the only shred order a v2 agent obeys.
 */
import { once } from 'node:events'
import type { WatchResponse } from '../../shared/protocol/messages.ts'
import type { ReportAck } from '../../shared/protocol/shred.ts'
import type { ServerDeps } from '../context.ts'
import type { HostRow } from '../store/store.ts'
import { audit } from './audit-log.ts'
import { consumeNonceOrThrow, type HostRequest } from './host-auth.ts'
import { getShredOrder, orderOutstanding, setShredOrder } from './shred.ts'
import { verdictFor } from './verdicts.ts'

async function currentOrder(deps: ServerDeps, hostId: string): Promise<WatchResponse | undefined> {
  return deps.store.tx(
    async (t) => {
      const host = (await t.getHost(hostId)) as HostRow
      const order = await getShredOrder(t, hostId)
      if (!orderOutstanding(host, order)) return undefined
      if (order.sentAt === null) {
        const now = deps.now()
        await setShredOrder(t, hostId, { ...order, sentAt: now })
        await audit(t, now, 'system', 'shred.order_sent', host.name, {
          hostId,
          volumes: order.volumes,
        })
      }
      return { order: 'shred', volumes: order.volumes }
    },
    { host: hostId },
  )
}

export async function watch(
  deps: ServerDeps,
  req: HostRequest<'watch'>,
  signal?: AbortSignal,
): Promise<WatchResponse> {
  const { signer, payload: p } = req
  await deps.store.tx(
    async (t) => {
      const now = deps.now()
      await consumeNonceOrThrow(t, p.nonce, now)
      const host = (await t.getHost(signer.id)) as HostRow
      if (host.state === 'active' && host.lastBootId !== null && host.lastBootId === p.bootId)
        await t.updateHost(host.id, { lastSeenAt: now })
    },
    { host: signer.id },
  )
  const deadline = Date.now() + deps.settings.pollHold * 1000
  for (;;) {
    const r = await currentOrder(deps, signer.id)
    // v2: the order is signed for this request, so that only this server's key can wipe a host.
    if (r) {
      const verdict = await verdictFor(deps, p, 'shred', r.volumes)
      return verdict ? { ...r, verdict } : r
    }
    const left = deadline - Date.now()
    if (left <= 0 || signal?.aborted) return { order: 'none', volumes: [] }
    // Wake on a shred in this process, or re-check the database every 2 s (other instances).
    const ac = new AbortController()
    const timer = setTimeout(() => ac.abort(), Math.min(left, 2000))
    const onAbort = (): void => ac.abort()
    signal?.addEventListener('abort', onAbort, { once: true })
    try {
      await once(deps.events, `shred:${signer.id}`, { signal: ac.signal })
    } catch {
      /* timeout or client gone: re-check */
    } finally {
      clearTimeout(timer)
      signal?.removeEventListener('abort', onAbort)
    }
  }
}

export async function report(
  deps: ServerDeps,
  req: HostRequest<'report'>,
  source: string,
): Promise<ReportAck> {
  const { signer, payload: p } = req
  return deps.store.tx(async (t) => {
    const now = deps.now()
    await consumeNonceOrThrow(t, p.nonce, now)
    const host = (await t.getHost(signer.id)) as HostRow
    const order = await getShredOrder(t, host.id)
    const open = order !== undefined && order.doneAt === null
    if (open && p.event === 'shred_done')
      await setShredOrder(t, host.id, { ...order, sentAt: order.sentAt ?? now, doneAt: now })
    // The actions list is the agent's own account (device paths, steps); never key material.
    await audit(t, now, `host:${host.name}`, 'shred.report', host.name, {
      hostId: host.id,
      event: p.event,
      actions: p.actions,
      source,
      order: order ? order.volumes : null,
    })
    return { recorded: true, order: order ? 'shred' : 'none' }
  })
}
