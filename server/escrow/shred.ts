/**
 * Crypto-shred: destroy every copy of a host's (or some volumes') escrow blobs that
 * unlockd controls, for good.
 *
 * 1. One transaction: the operator's TOTP code is checked, the blobs are deleted (SQLite
 *    secure_delete zeroes their cells), a whole-host shred marks the host `shredded` (the row
 *    stays as a tombstone, so its keys can never enroll again and its signature still verifies
 *    on the watch channel), the audit entry is written, a shred order is recorded for the
 *    agent's watch channel, and a KEK rotation is journalled (server/keys/rotation.ts).
 * 2. `store.scrub()`: checkpoint and VACUUM, so no free page or WAL frame keeps a deleted blob.
 * 3. The rotation: survivors are re-wrapped under a new KEK and every KEK that wrapped the
 *    shredded blobs is destroyed in the keystore and its backup, so database copies taken
 *    before the shred can no longer be unwrapped with anything the server holds.
 *
 * A crash after step 1 is finished by `completeRotation` at the next start (the journal and the
 * order are in the same transaction as the deletion); a crash inside it leaves nothing behind.
 * Shredding again is a no-op that succeeds. Crash-test fault points (`UNLOCKD_FAULT`):
 * shred-in-tx, shred-after-delete, shred-after-scrub, then those of server/keys/rotation.ts.
 */
import { UnlockdError } from '../../shared/errors.ts'
import type { ShredRequest, ShredResult, ShredTarget } from '../../shared/protocol/shred.ts'
import { SHRED_LIMITS } from '../../shared/protocol/shred.ts'
import type { ServerDeps } from '../context.ts'
import { checkOperatorCode } from '../approvals/totp.ts'
import { completeRotation, faultPoint, requestRotation } from '../keys/rotation.ts'
import { deny } from '../store/denial.ts'
import type { HostRow, OperatorRow, StoreTx } from '../store/store.ts'
import { requireHost } from './admin.ts'
import { audit, type Actor } from './audit-log.ts'

/** A host's shred order for its watch channel (store meta `shred_order:<hostId>`). */
export interface ShredOrder {
  volumes: string[]
  wholeHost: boolean
  createdAt: number
  by: string
  /** First time a watch request carried the order to the host. */
  sentAt: number | null
  /** When the host reported `shred_done`. */
  doneAt: number | null
}

const orderKey = (hostId: string): string => `shred_order:${hostId}`

export async function getShredOrder(t: StoreTx, hostId: string): Promise<ShredOrder | undefined> {
  const raw = await t.getMeta(orderKey(hostId))
  if (raw === undefined) return undefined
  try {
    const o = JSON.parse(raw) as ShredOrder
    if (!Array.isArray(o.volumes) || typeof o.wholeHost !== 'boolean') throw new Error('shape')
    return {
      volumes: o.volumes.map(String),
      wholeHost: o.wholeHost,
      createdAt: Number(o.createdAt),
      by: String(o.by),
      sentAt: o.sentAt ?? null,
      doneAt: o.doneAt ?? null,
    }
  } catch (cause) {
    throw new UnlockdError('store_failed', `shred order of host ${hostId} is malformed`, { cause })
  }
}

export function setShredOrder(t: StoreTx, hostId: string, order: ShredOrder): Promise<void> {
  return t.setMeta(orderKey(hostId), JSON.stringify(order))
}

/** Whether the watch channel should (still) tell this host to shred. */
export function orderOutstanding(
  host: HostRow,
  order: ShredOrder | undefined,
): order is ShredOrder {
  // A shredded host gets the order on every contact, even after it reported: a disk image
  // restored elsewhere with the host keys on it must erase itself too.
  return order !== undefined && (order.doneAt === null || host.state === 'shredded')
}

/**
 * A closed per-volume order comes back when the host names one of its volumes again (an unlock
 * asking for it, an encryption report about it): `shred_done` is only the reporter's word, and a
 * copy of the host keys can send it without erasing anything on the real host. So the order
 * stays outstanding as long as any report channel still sees the volume. Returns whether it
 * reopened the order.
 */
export async function reopenIfNamed(
  t: StoreTx,
  host: HostRow,
  names: readonly string[],
  now: number,
): Promise<boolean> {
  const order = await getShredOrder(t, host.id)
  if (order === undefined || order.doneAt === null || order.wholeHost) return false
  const named = names.filter((n) => order.volumes.includes(n))
  if (named.length === 0) return false
  await setShredOrder(t, host.id, { ...order, sentAt: null, doneAt: null })
  await audit(t, now, 'system', 'shred.order_reopened', host.name, {
    hostId: host.id,
    volumes: named,
    reportedDoneAt: order.doneAt,
  })
  return true
}

interface Planned {
  host: HostRow
  target: ShredTarget
  /** What the agent must erase: the target's volumes less Tang keys (server-side secrets). */
  agentVolumes: string[]
}

async function plan(t: StoreTx, req: ShredRequest): Promise<Planned[]> {
  const hosts = req.all ? await t.listHosts() : [await requireHost(t, req.host as string)]
  const out: Planned[] = []
  for (const h of hosts) {
    const vols = await t.listVolumes(h.id)
    const base = { host: h.name, id: h.id }
    const forAgent = (names: string[]): string[] =>
      vols.filter((v) => v.kind !== 'tang' && names.includes(v.name)).map((v) => v.name)
    const allNames = vols.map((v) => v.name)
    if (h.state === 'shredded') {
      // Idempotent: nothing left to destroy (a stray row, if any, still goes).
      out.push({
        host: h,
        target: { ...base, wholeHost: true, alreadyShredded: true, volumes: allNames },
        agentVolumes: forAgent(allNames),
      })
      continue
    }
    if (req.volumes === undefined) {
      out.push({
        host: h,
        target: { ...base, wholeHost: true, alreadyShredded: false, volumes: allNames },
        agentVolumes: forAgent(allNames),
      })
      continue
    }
    const prior = await getShredOrder(t, h.id)
    const names: string[] = []
    for (const n of req.volumes) {
      if (vols.some((v) => v.name === n)) names.push(n)
      else if (!prior?.volumes.includes(n))
        throw new UnlockdError('volume_unknown', `host ${h.name} has no volume named ${n}`)
      // else: shredded before; shredding it again is a no-op
    }
    out.push({
      host: h,
      target: { ...base, wholeHost: false, alreadyShredded: false, volumes: names },
      agentVolumes: forAgent(names),
    })
  }
  return out
}

/** What shred cannot reach; printed by `unlockd shred` and returned by the API. */
export const SHRED_CANNOT = [
  "Keys already in the RAM of a running host (the kernel keyring, dm-crypt tables, an open fscrypt directory) stay usable until the host locks, erases or reboots; the agent's watch channel does that when it receives the order.",
  "Passphrase keyslots or fscrypt protectors an operator added by hand on the host are not unlockd's: remove them on the host.",
  'Copies of the keystore AND the database made outside unlockd (backups, snapshots, `cp`) taken before this shred still recover the volume keys together with the keystore passphrase: destroy them, or change the passphrase after every backup so old copies need a passphrase you no longer keep.',
  'Escrow blobs exported earlier (`unlockd escrow export`) open with the recovery key: destroy those files, or the recovery key if every volume sealed to it is meant to go.',
  "The filesystem or SSD under the data directory may keep stale blocks of rewritten files; use full-disk encryption for the server's own disk.",
]

export async function shred(
  deps: ServerDeps,
  operator: OperatorRow,
  req: ShredRequest,
): Promise<ShredResult> {
  const actor: Actor = `operator:${operator.name}`
  if (req.dryRun) {
    const targets = await deps.store.tx(async (t) => (await plan(t, req)).map((p) => p.target))
    return { dryRun: true, targets, deletedBlobs: 0, kek: null, cannot: SHRED_CANNOT }
  }
  if (req.code === undefined)
    throw new UnlockdError('totp_invalid', 'shred needs your TOTP code (--code)')
  const code = req.code
  const now = deps.now()

  // Step 1: code, deletion, tombstone, order, audit and rotation journal commit together.
  const outcome = await deps.store.tx(async (t) => {
    const fresh = await t.getOperator(operator.id)
    if (!fresh || fresh.removedAt !== null)
      throw deny(new UnlockdError('unauthorized', 'this operator was removed'))
    const what = req.all ? '*' : (req.host as string)
    // A wrong code is a denial: its failure count commits, and nothing below runs.
    await checkOperatorCode(deps, t, fresh, code, now, {
      host: req.all ? null : what,
      detail: { action: 'shred' },
    })
    const planned = await plan(t, req)
    let deleted = 0
    let destroyedSomething = false
    for (const { host, target, agentVolumes } of planned) {
      const n = await t.deleteVolumes(host.id, target.wholeHost ? undefined : target.volumes)
      deleted += n
      if (target.alreadyShredded && n === 0) continue
      destroyedSomething = true
      if (target.wholeHost && host.state !== 'shredded') {
        await t.updateHost(host.id, {
          state: 'shredded',
          stateReason: req.reason ?? `shredded by ${actor}`,
        })
      }
      // Merge with an order the host has not acted on yet, so it learns every volume.
      const prior = await getShredOrder(t, host.id)
      const pending = prior !== undefined && prior.doneAt === null ? prior : undefined
      await setShredOrder(t, host.id, {
        volumes: [...new Set([...(pending?.volumes ?? []), ...agentVolumes])].slice(
          0,
          SHRED_LIMITS.volumes,
        ),
        wholeHost: target.wholeHost || (pending?.wholeHost ?? false),
        createdAt: now,
        by: actor,
        sentAt: null,
        doneAt: null,
      })
      await audit(t, now, actor, target.wholeHost ? 'host.shred' : 'volume.shred', host.name, {
        hostId: host.id,
        volumes: target.volumes,
        deletedBlobs: n,
        ...(req.reason ? { reason: req.reason } : {}),
      })
    }
    if (destroyedSomething) await requestRotation(t, deps.keystore.currentVersion, 'shred', now)
    faultPoint('shred-in-tx') // a crash here must leave nothing of the shred behind
    return {
      targets: planned.map((p) => p.target),
      deleted,
      hostIds: planned.map((p) => p.host.id),
    }
  })
  for (const id of outcome.hostIds) deps.events.emit(`shred:${id}`)
  faultPoint('shred-after-delete')

  // Step 2: the deleted cells are zeroed; now drop old page images from the WAL and free pages.
  await deps.store.scrub()
  faultPoint('shred-after-scrub')

  // Step 3: rotate and destroy the KEKs that wrapped the shredded blobs. A failure here leaves
  // the journal in place: the next start or maintenance tick finishes it.
  let kek: ShredResult['kek']
  try {
    const r = await completeRotation(deps, actor)
    kek = {
      status: r ? 'rotated' : 'unchanged',
      current: deps.keystore.currentVersion,
      destroyed: r?.destroyed ?? [],
      error: null,
    }
  } catch (err) {
    deps.log.log('error', 'KEK rotation after shred failed; it stays pending', {
      err: err instanceof Error ? err.message : String(err),
    })
    kek = {
      status: 'pending',
      current: deps.keystore.currentVersion,
      destroyed: [],
      error: err instanceof UnlockdError ? err.message : 'see server logs',
    }
  }
  return {
    dryRun: false,
    targets: outcome.targets,
    deletedBlobs: outcome.deleted,
    kek,
    cannot: SHRED_CANNOT,
  }
}
