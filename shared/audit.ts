/**
 * The keyed audit chain, as one set of functions used by the server when it appends and seals
 * and when it verifies, so they cannot disagree. Two MACs (HMAC-SHA256 under the audit key, a
 * key of its own in the keystore that rotation and shred never destroy):
 *
 *  - the entry MAC covers the entry alone (seq, at, actor, action, host, detail) and is written
 *    with the entry, inside the transaction that makes it: rewriting an entry needs the key;
 *  - the link MAC chains sealed entries in chain position order (pos, seq, entry MAC, previous
 *    link): deleting or reordering a sealed entry breaks every link after it, and re-hashing
 *    the tail needs the key.
 *
 * Deleting the newest entries leaves a shorter chain that still verifies; that is what the
 * exported head is for. A head (pos, seq, link, time) carries its own MAC; an operator keeps it
 * outside the server, and `verify` with that head checks the chain still holds that entry.
 * Why entries are chained by a sealer rather than at append is explained in
 * server/escrow/audit-chain.ts.
 */
import { createHmac, timingSafeEqual } from 'node:crypto'
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

export type AuditContent = Pick<AuditEntry, 'seq' | 'at' | 'actor' | 'action' | 'host' | 'detail'>

/** A chain head as exported: the last sealed entry's position, sequence and link, and a MAC. */
export interface AuditHead {
  pos: number
  seq: number
  hash: string
  at: number
  mac: string
}

const hmac = (key: Uint8Array, label: string, value: unknown): string =>
  createHmac('sha256', key)
    .update(`unlockd/audit/${label}/v1\n`)
    .update(canonicalJson(value))
    .digest('hex')

export function auditEntryMac(key: Uint8Array, e: AuditContent): string {
  return hmac(key, 'entry', {
    seq: e.seq,
    at: e.at,
    actor: e.actor,
    action: e.action,
    host: e.host,
    detail: e.detail,
  })
}

export function auditLinkMac(
  key: Uint8Array,
  l: { pos: number; seq: number; mac: string; prevHash: string },
): string {
  return hmac(key, 'link', { pos: l.pos, seq: l.seq, mac: l.mac, prevHash: l.prevHash })
}

export function auditHeadMac(key: Uint8Array, h: Omit<AuditHead, 'mac'>): string {
  return hmac(key, 'head', { pos: h.pos, seq: h.seq, hash: h.hash, at: h.at })
}

const same = (a: string, b: string): boolean =>
  a.length === b.length && timingSafeEqual(Buffer.from(a), Buffer.from(b))

export type AuditVerdict =
  | {
      ok: true
      count: number
      /** Sealed entries (the rest are waiting for the next seal and checked by entry MAC). */
      sealed: number
      head: { pos: number; seq: number; hash: string } | null
    }
  | { ok: false; count: number; badSeq: number; reason: string }

/**
 * Check every entry MAC, the link chain over sealed entries, and (given one) that the chain
 * still holds an exported head. Names the first bad entry by its sequence number.
 * @example const v = verifyAuditChain(entries, keystore.auditKey, head); if (!v.ok) log(v.badSeq)
 */
export function verifyAuditChain(
  entries: readonly AuditEntry[],
  key: Uint8Array,
  head?: AuditHead,
): AuditVerdict {
  const count = entries.length
  const bad = (badSeq: number, reason: string): AuditVerdict => ({
    ok: false,
    count,
    badSeq,
    reason,
  })
  const sealed = entries
    .filter((e): e is AuditEntry & { pos: number } => e.pos !== null)
    .sort((a, b) => a.pos - b.pos)
  let prev = AUDIT_GENESIS
  let last: (AuditEntry & { pos: number }) | undefined
  for (const e of sealed) {
    const expected = (last?.pos ?? 0) + 1
    if (e.pos !== expected)
      return bad(
        e.seq,
        e.pos > expected
          ? `chain positions ${expected}..${e.pos - 1} are missing before this entry (entries were deleted)`
          : `chain position ${e.pos} appears twice`,
      )
    if (e.prevHash !== prev) return bad(e.seq, 'its link does not match the previous entry')
    if (e.mac === null) return bad(e.seq, 'it carries no MAC (it was not written by this server)')
    if (!same(e.mac, auditEntryMac(key, e)))
      return bad(e.seq, 'its MAC does not match its contents (the entry was rewritten)')
    if (!same(e.hash, auditLinkMac(key, { pos: e.pos, seq: e.seq, mac: e.mac, prevHash: prev })))
      return bad(e.seq, 'its link MAC is wrong (the chain was re-hashed without the audit key)')
    prev = e.hash
    last = e
  }
  for (const e of entries) {
    if (e.pos !== null) continue
    if (e.mac === null) return bad(e.seq, 'it carries no MAC (it was not written by this server)')
    if (!same(e.mac, auditEntryMac(key, e)))
      return bad(e.seq, 'its MAC does not match its contents (the entry was rewritten)')
  }
  if (head) {
    if (!same(head.mac, auditHeadMac(key, head)))
      return bad(head.seq, 'the head file is not a head this server exported (its MAC is wrong)')
    const at = sealed[head.pos - 1]
    if (!at) {
      const end = last ? `position ${last.pos} (entry ${last.seq})` : 'nothing'
      return bad(
        head.seq,
        `the chain was truncated: the exported head at position ${head.pos} (entry ${head.seq}, ${new Date(head.at * 1000).toISOString()}) is gone and the chain ends at ${end}`,
      )
    }
    if (at.seq !== head.seq || !same(at.hash, head.hash))
      return bad(
        head.seq,
        `the chain was truncated or rewritten: position ${head.pos} now holds entry ${at.seq}, not the exported head`,
      )
  }
  return {
    ok: true,
    count,
    sealed: sealed.length,
    head: last ? { pos: last.pos, seq: last.seq, hash: last.hash } : null,
  }
}
