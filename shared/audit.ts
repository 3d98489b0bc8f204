/**
 * The audit chain: every entry carries the hash of the previous one, so removing, reordering or
 * editing an entry breaks every hash after it. The same function is used by the server when it
 * appends and by `unlockd audit verify` when it checks, so they cannot disagree.
 */
import { sha256Hex } from './crypto/bytes.ts'
import type { AuditEntry } from './protocol/messages.ts'

export const AUDIT_GENESIS = '0'.repeat(64)

/** Deterministic JSON: object keys sorted at every level. */
export function canonicalJson(value: unknown): string {
  if (value === null || typeof value !== 'object') return JSON.stringify(value) ?? 'null'
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`
  const obj = value as Record<string, unknown>
  const keys = Object.keys(obj)
    .filter((k) => obj[k] !== undefined)
    .sort()
  return `{${keys.map((k) => `${JSON.stringify(k)}:${canonicalJson(obj[k])}`).join(',')}}`
}

export type AuditFields = Omit<AuditEntry, 'hash'>

export async function auditHash(e: AuditFields): Promise<string> {
  return sha256Hex(
    canonicalJson({
      seq: e.seq,
      at: e.at,
      actor: e.actor,
      action: e.action,
      host: e.host,
      detail: e.detail,
      prevHash: e.prevHash,
    }),
  )
}

export type AuditVerdict =
  | { ok: true; count: number; head: string }
  | { ok: false; count: number; badSeq: number; reason: string }

/**
 * Recompute the chain over entries in sequence order. Names the first bad entry.
 * @example const v = await verifyAuditChain(entries); if (!v.ok) console.log(v.badSeq)
 */
export async function verifyAuditChain(
  entries: readonly AuditEntry[],
  startPrev = AUDIT_GENESIS,
): Promise<AuditVerdict> {
  let prev = startPrev
  let expectedSeq = entries[0]?.seq ?? 1
  for (const e of entries) {
    if (e.seq !== expectedSeq)
      return {
        ok: false,
        count: entries.length,
        badSeq: e.seq,
        reason: `sequence gap: expected ${expectedSeq}`,
      }
    if (e.prevHash !== prev)
      return {
        ok: false,
        count: entries.length,
        badSeq: e.seq,
        reason: 'prevHash does not match the previous entry',
      }
    const h = await auditHash(e)
    if (h !== e.hash)
      return {
        ok: false,
        count: entries.length,
        badSeq: e.seq,
        reason: 'hash does not match the entry contents',
      }
    prev = e.hash
    expectedSeq++
  }
  return { ok: true, count: entries.length, head: prev }
}
