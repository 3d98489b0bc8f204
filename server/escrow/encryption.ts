/**
 * POST /v1/encryption: the agent's account of an `unlockd encrypt` run (started, progress, done,
 * failed). The latest state per host and volume replaces the previous one; start, completion
 * and failure are audited and announced (the webhook, see ../approvals/notify.ts), progress
 * reports are not (they come every few seconds). Signed and single-use like every host request.
 * A report is not contact: lastSeenAt (idle suspension) moves only with released keys.
 */
import type { EncryptionView } from '../../shared/protocol/encryption.ts'
import { stateOf } from '../../shared/protocol/encryption.ts'
import type { ServerDeps } from '../context.ts'
import type { EncryptionRow, HostRow } from '../store/store.ts'
import { audit } from './audit-log.ts'
import { consumeNonceOrThrow, type HostRequest } from './host-auth.ts'
import { reopenIfNamed } from './shred.ts'

/** Emitted on `deps.events` after the report committed (not for plain progress). */
export const ENCRYPTION_EVENT = 'encryption:event'
export interface EncryptionAnnouncement {
  host: string
  event: 'started' | 'done' | 'failed'
  view: EncryptionView
}

export function encryptionView(r: EncryptionRow): EncryptionView {
  return {
    volume: r.volume,
    kind: r.kind,
    state: r.state,
    phase: r.phase,
    doneBytes: r.doneBytes,
    totalBytes: r.totalBytes,
    bytesPerSecond: r.bytesPerSecond,
    etaSeconds: r.etaSeconds,
    message: r.message,
    startedAt: r.startedAt,
    updatedAt: r.updatedAt,
  }
}

export async function recordEncryption(
  deps: ServerDeps,
  req: HostRequest<'encryption'>,
  source: string,
): Promise<{ recorded: true }> {
  const { signer, payload: p } = req
  const { host, row } = await deps.store.tx(
    async (t) => {
      const now = deps.now()
      await consumeNonceOrThrow(t, p.nonce, now)
      const host = (await t.getHost(signer.id)) as HostRow
      // A volume under a closed shred order that still reports is not gone (./shred.ts).
      if (await reopenIfNamed(t, host, [p.volume], now)) deps.events.emit(`shred:${host.id}`)
      const prev = await t.getEncryption(host.id, p.volume)
      // A new run starts the clock again; any other report keeps the start of the running one
      // (a progress report that arrives first, its start lost, starts it).
      const startedAt =
        p.event === 'started' || prev === undefined || prev.state !== 'running'
          ? now
          : prev.startedAt
      const row: EncryptionRow = {
        hostId: host.id,
        volume: p.volume,
        kind: p.kind,
        state: stateOf(p.event),
        phase: p.phase,
        doneBytes: p.doneBytes,
        totalBytes: p.totalBytes,
        bytesPerSecond: p.bytesPerSecond,
        etaSeconds: p.etaSeconds,
        message: p.message,
        startedAt,
        updatedAt: now,
      }
      await t.upsertEncryption(row)
      if (p.event !== 'progress')
        await audit(t, now, `host:${host.name}`, `encryption.${p.event}`, host.name, {
          hostId: host.id,
          volume: p.volume,
          kind: p.kind,
          totalBytes: p.totalBytes,
          message: p.message,
          source,
        })
      return { host, row }
    },
    { host: signer.id },
  )
  if (p.event !== 'progress') {
    const a: EncryptionAnnouncement = { host: host.name, event: p.event, view: encryptionView(row) }
    deps.events.emit(ENCRYPTION_EVENT, a)
  }
  return { recorded: true }
}
