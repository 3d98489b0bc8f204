/**
 * KEK rotation: add a fresh KEK, re-wrap every survivor (volume blobs and operators' TOTP
 * secrets), scrub the database, then destroy the old KEKs in the keystore and its backup. It
 * runs on a schedule (settings.kekRotationPeriod), on `unlockd kek rotate`, and after every
 * shred, so database copies taken before a shred can no longer be unwrapped.
 *
 * Crash safety. A journal in store meta, `rotation_pending` = { upTo, reasons, since }, says
 * "every KEK with a version <= upTo must be destroyed". It is written in the same transaction as
 * the shred that needs it. Each step below finds where it stands from the keystore and the rows
 * themselves (a KEK newer than upTo exists, rows wrapped below the current KEK remain, ...), so
 * running `completeRotation` again after a crash at any point, which `openDeps` does before the
 * server serves, reaches the same end state. The journal is cleared only after the destruction,
 * and only if no shred raised `upTo` meanwhile (then another round runs).
 *
 * Fault points (`UNLOCKD_FAULT=<name>` kills the process with SIGKILL there; crash tests only):
 * rotate-after-addkek, rotate-after-rewrap, rotate-after-destroy; the keystore has its own
 * keystore-between-copies.
 */
import { UnlockdError } from '../../shared/errors.ts'
import type { ServerDeps } from '../context.ts'
import { audit, type Actor } from '../escrow/audit-log.ts'
import type { StoreTx } from '../store/store.ts'
import { blobAad, totpAad, unwrap, wrap } from './kek-wrap.ts'
import type { Keystore } from './keystore.ts'

export const ROTATION_META = 'rotation_pending'
export const ROTATED_AT_META = 'kek_rotated_at'

/** Kill the process here when the crash tests ask for it (no effect otherwise). */
export function faultPoint(name: string): void {
  if (process.env['UNLOCKD_FAULT'] === name) process.kill(process.pid, 'SIGKILL')
}

export interface RotationJournal {
  /** Every KEK with a version <= upTo must end up destroyed. */
  upTo: number
  /** Why (bounded list, newest last): "shred", "schedule", "operator". */
  reasons: string[]
  /** When the first pending request was made. */
  since: number
}

export function parseJournal(text: string | undefined): RotationJournal | undefined {
  if (text === undefined) return undefined
  let o: unknown
  try {
    o = JSON.parse(text)
  } catch (cause) {
    throw new UnlockdError('store_failed', `${ROTATION_META} in meta is not valid JSON`, { cause })
  }
  const j = o as Partial<RotationJournal>
  if (
    !Number.isSafeInteger(j.upTo) ||
    !Number.isSafeInteger(j.since) ||
    !Array.isArray(j.reasons)
  ) {
    throw new UnlockdError('store_failed', `${ROTATION_META} in meta is malformed`)
  }
  return { upTo: j.upTo as number, since: j.since as number, reasons: j.reasons.map(String) }
}

/**
 * Inside the caller's transaction: require that every KEK up to `currentVersion` be destroyed.
 * Merges with a pending request (upTo only grows), so a shred during a rotation is never lost.
 */
export async function requestRotation(
  t: StoreTx,
  currentVersion: number,
  reason: string,
  now: number,
): Promise<RotationJournal> {
  const prev = parseJournal(await t.getMeta(ROTATION_META))
  const next: RotationJournal = {
    upTo: Math.max(prev?.upTo ?? 0, currentVersion),
    reasons: [...(prev?.reasons ?? []), reason].slice(-20),
    since: prev?.since ?? now,
  }
  await t.setMeta(ROTATION_META, JSON.stringify(next))
  return next
}

export interface RotationResult {
  /** The KEK every survivor is wrapped with now. */
  current: number
  /** KEK versions destroyed by this call (empty when a crashed run had already destroyed them). */
  destroyed: number[]
  rewrapped: { volumes: number; totpSecrets: number }
  reasons: string[]
}

// One rotation at a time per keystore in this process; the store transactions order the rest.
const chains = new WeakMap<Keystore, Promise<unknown>>()
function exclusive<T>(deps: ServerDeps, fn: () => Promise<T>): Promise<T> {
  const prev = chains.get(deps.keystore) ?? Promise.resolve()
  const run = prev.then(fn, fn)
  chains.set(
    deps.keystore,
    run.catch(() => undefined),
  )
  return run
}

const BATCH = 100

/** Re-wrap every row still wrapped by a KEK older than `to`, in bounded transactions. */
async function rewrapBelow(
  deps: ServerDeps,
  to: number,
): Promise<{ volumes: number; totpSecrets: number }> {
  const ks = deps.keystore
  let volumes = 0
  for (;;) {
    const n = await deps.store.tx(async (t) => {
      const rows = await t.listVolumesWithKekBelow(to, BATCH)
      for (const r of rows) {
        const plain = unwrap(
          ks.kek(r.kekVersion),
          r.iv,
          r.ct,
          blobAad(r.hostId, r.name, r.kekVersion),
        )
        try {
          const { iv, ct } = wrap(ks.kek(to), plain, blobAad(r.hostId, r.name, to))
          await t.upsertVolume({ ...r, kekVersion: to, iv, ct })
        } finally {
          plain.fill(0)
        }
      }
      return rows.length
    })
    volumes += n
    if (n < BATCH) break
  }
  const totpSecrets = await deps.store.tx(async (t) => {
    const ops = await t.listOperatorsWithTotpKekBelow(to)
    let count = 0
    for (const o of ops) {
      if (o.totpKekVersion === null || !o.totpIv || !o.totpCt) continue
      const plain = unwrap(
        ks.kek(o.totpKekVersion),
        o.totpIv,
        o.totpCt,
        totpAad(o.id, o.totpKekVersion),
      )
      try {
        const { iv, ct } = wrap(ks.kek(to), plain, totpAad(o.id, to))
        await t.updateOperator(o.id, { totpKekVersion: to, totpIv: iv, totpCt: ct })
        count++
      } finally {
        plain.fill(0)
      }
    }
    return count
  })
  return { volumes, totpSecrets }
}

async function completeUnlocked(
  deps: ServerDeps,
  actor: Actor,
): Promise<RotationResult | undefined> {
  const ks = deps.keystore
  const total = { volumes: 0, totpSecrets: 0 }
  const destroyedAll: number[] = []
  // Each round settles one journal state; a new round is needed only when a shred raised `upTo`
  // while this one ran, so a small bound is plenty.
  for (let round = 0; round < 8; round++) {
    const journal = await deps.store.tx(async (t) => parseJournal(await t.getMeta(ROTATION_META)))
    if (!journal) return undefined
    // Step 1: a KEK newer than everything that must go (skipped when a crashed run, or another
    // instance sharing the keystore, added it). Inside a transaction: the store's write lock
    // (global across PostgreSQL instances) keeps two instances from adding one each.
    await deps.store.tx(async () => {
      if (ks.currentVersion <= journal.upTo) ks.addKek(deps.now())
    })
    faultPoint('rotate-after-addkek')
    const to = ks.currentVersion
    // Step 2: survivors move to the new KEK.
    const n = await rewrapBelow(deps, to)
    total.volumes += n.volumes
    total.totpSecrets += n.totpSecrets
    faultPoint('rotate-after-rewrap')
    // Step 3: no old page image or WAL frame keeps a blob wrapped by a KEK about to go.
    await deps.store.scrub()
    // Step 4: destroy, under the store's write lock so no transaction can wrap or read with an
    // old KEK between the check and the destruction.
    const destroyed = await deps.store.tx(async (t) => {
      if ((await t.countVolumesWithKekBelow(to)) > 0) return undefined
      if ((await t.listOperatorsWithTotpKekBelow(to)).length > 0) return undefined
      return ks.destroyBelow(to)
    })
    if (!destroyed) continue // rows wrapped meanwhile by an older KEK: re-wrap them first
    destroyedAll.push(...destroyed)
    faultPoint('rotate-after-destroy')
    // Step 5: close the journal unless a shred asked for more meanwhile.
    const now = deps.now()
    const done = await deps.store.tx(async (t) => {
      const cur = parseJournal(await t.getMeta(ROTATION_META))
      if (!cur) return true // another instance finished and audited it
      if (cur.upTo >= to) return false
      await t.setMeta(ROTATION_META, undefined)
      await t.setMeta(ROTATED_AT_META, String(now))
      await audit(t, now, actor, 'kek.rotate', null, {
        kek: to,
        destroyedUpTo: journal.upTo,
        destroyed,
        reasons: journal.reasons,
        rewrapped: n,
      })
      return true
    })
    if (done)
      return { current: to, destroyed: destroyedAll, rewrapped: total, reasons: journal.reasons }
  }
  throw new UnlockdError(
    'internal',
    'KEK rotation did not settle after 8 rounds; it stays pending and is retried',
  )
}

/** Finish a pending rotation, if any (crash resume, or after a shred). */
export function completeRotation(
  deps: ServerDeps,
  actor: Actor = 'system',
): Promise<RotationResult | undefined> {
  return exclusive(deps, () => completeUnlocked(deps, actor))
}

/** Rotate now: every current KEK is retired once the survivors are re-wrapped. */
export function rotateKek(deps: ServerDeps, actor: Actor, reason: string): Promise<RotationResult> {
  return exclusive(deps, async () => {
    await deps.store.tx((t) => requestRotation(t, deps.keystore.currentVersion, reason, deps.now()))
    const r = await completeUnlocked(deps, actor)
    if (!r)
      throw new UnlockdError('internal', 'KEK rotation was requested but no journal was found')
    return r
  })
}

/** The maintenance job: finish a pending rotation, then rotate when the period has elapsed. */
export async function rotateIfDue(deps: ServerDeps): Promise<RotationResult | undefined> {
  const { journal, rotatedAt } = await deps.store.tx(async (t) => ({
    journal: parseJournal(await t.getMeta(ROTATION_META)),
    rotatedAt: await t.getMeta(ROTATED_AT_META),
  }))
  if (journal) return completeRotation(deps)
  const period = deps.settings.kekRotationPeriod
  if (period <= 0) return undefined
  const now = deps.now()
  const at = rotatedAt === undefined ? NaN : Number(rotatedAt)
  if (!Number.isFinite(at)) {
    // A database from before this journal existed: start the clock now rather than rotate at once.
    await deps.store.tx((t) => t.setMeta(ROTATED_AT_META, String(now)))
    return undefined
  }
  if (now - at < period) return undefined
  const r = await rotateKek(deps, 'system', 'schedule')
  deps.log.log('info', 'KEK rotated on schedule', {
    kek: r.current,
    destroyed: r.destroyed.join(','),
  })
  return r
}

export interface KekStatus {
  current: number
  versions: number[]
  rotatedAt: number | null
  nextRotationAt: number | null
  pending: RotationJournal | null
  /** Rows not yet on the current KEK (non-zero only while a rotation runs or is pending). */
  behind: number
}

export async function kekStatus(deps: ServerDeps): Promise<KekStatus> {
  const ks = deps.keystore
  return deps.store.tx(async (t) => {
    const raw = await t.getMeta(ROTATED_AT_META)
    const rotatedAt = raw === undefined || !Number.isFinite(Number(raw)) ? null : Number(raw)
    const period = deps.settings.kekRotationPeriod
    return {
      current: ks.currentVersion,
      versions: ks.versions,
      rotatedAt,
      nextRotationAt: period > 0 && rotatedAt !== null ? rotatedAt + period : null,
      pending: parseJournal(await t.getMeta(ROTATION_META)) ?? null,
      behind:
        (await t.countVolumesWithKekBelow(ks.currentVersion)) +
        (await t.listOperatorsWithTotpKekBelow(ks.currentVersion)).length,
    }
  })
}
