/**
 * Sealing, exporting and verifying the keyed audit chain (the MACs are in shared/audit.ts).
 *
 * Why entries are chained by a sealer and not when they are appended: a chain whose every
 * entry names the previous one has to read the head and insert after it in one step, so on
 * PostgreSQL every writing transaction of every instance would queue on one lock held until its
 * COMMIT. Instead an append is one insert, numbered from a sequence (no lock, gaps from
 * rollbacks allowed), carrying the MAC of the entry alone, so a rewrite is caught from the
 * moment it commits. The sealer then, in a short transaction of its own under the audit-head
 * lock, gives committed entries consecutive chain positions after the head and links each to
 * the previous by a second MAC. An entry that commits late (a lower seq than ones already
 * sealed) simply gets the next position: the chain order is the order entries became visible.
 * Deleting a sealed entry leaves a position gap and a broken link; deleting the newest ones is
 * caught by an exported head (`verify --head`).
 *
 * What the sealer cannot protect: an entry deleted by someone with database write access in the
 * seconds between its commit and the next seal leaves no trace (its MAC is gone with it). Seals
 * run at every maintenance tick and before every audit read, head export and verify.
 */
import {
  verifyAuditChain,
  auditHeadMac,
  type AuditHead,
  type AuditVerdict,
} from '../../shared/audit.ts'
import type { AuditEntry } from '../../shared/protocol/messages.ts'
import type { ServerDeps } from '../context.ts'
import { notifyAuditHead } from '../approvals/notify.ts'
import type { AuditSeal } from '../store/store.ts'
import { audit } from './audit-log.ts'

const SEAL_BATCH = 2000
const PAGE = 5000

/** Chain every committed entry not yet sealed; returns the head. */
export async function sealAudit(deps: ServerDeps): Promise<AuditSeal> {
  let total = 0
  for (;;) {
    const r = await deps.store.tx((t) => t.sealAudit(deps.keystore.auditKey, SEAL_BATCH))
    total += r.sealed
    if (r.sealed < SEAL_BATCH) return { sealed: total, head: r.head }
  }
}

/** Seal, then the head with its MAC (null while the log is empty). */
export async function auditHead(deps: ServerDeps): Promise<AuditHead | null> {
  const { head } = await sealAudit(deps)
  if (!head) return null
  const h = { ...head, at: deps.now() }
  return { ...h, mac: auditHeadMac(deps.keystore.auditKey, h) }
}

async function allEntries(deps: ServerDeps): Promise<AuditEntry[]> {
  const all: AuditEntry[] = []
  for (let after = 0; ;) {
    const page = await deps.store.tx((t) => t.listAudit(after, PAGE))
    all.push(...page)
    if (page.length < PAGE) return all
    after = (page[page.length - 1] as AuditEntry).seq
  }
}

/**
 * Seal, then check every MAC and link and (given one) that the chain still holds `head`. A
 * failure is audited once per distinct finding, so repeated verifies do not flood the log.
 */
export async function verifyAudit(deps: ServerDeps, head?: AuditHead): Promise<AuditVerdict> {
  await sealAudit(deps)
  const verdict = verifyAuditChain(await allEntries(deps), deps.keystore.auditKey, head)
  if (!verdict.ok) {
    // The reason's first clause: the rest may name where the chain ends now, which moves.
    const finding = `${verdict.badSeq}:${verdict.reason.split(':')[0] ?? ''}`
    await deps.store.tx(async (t) => {
      if ((await t.getMeta('audit_last_failure')) === finding) return
      await t.setMeta('audit_last_failure', finding)
      await audit(t, deps.now(), 'system', 'audit.integrity_failure', null, {
        badSeq: verdict.badSeq,
        reason: verdict.reason,
      })
    })
    deps.log.log('error', 'audit chain integrity failure', {
      badSeq: verdict.badSeq,
      reason: verdict.reason,
    })
  }
  return verdict
}

/**
 * Maintenance: seal, and export the head (a log line and the webhook) when
 * `settings.auditHead` entries were added or seconds passed since the last export.
 */
export async function anchorAuditHead(deps: ServerDeps): Promise<AuditHead | null> {
  const head = await auditHead(deps)
  if (!head) return null
  const last = await deps.store.tx((t) => t.getMeta('audit_head_exported'))
  const prev = last ? (JSON.parse(last) as { pos: number; at: number }) : undefined
  const { everyEntries, everySeconds } = deps.settings.auditHead
  const due =
    !prev ||
    head.pos - prev.pos >= everyEntries ||
    (head.at - prev.at >= everySeconds && head.pos > prev.pos)
  if (!due) return null
  await deps.store.tx((t) =>
    t.setMeta('audit_head_exported', JSON.stringify({ pos: head.pos, at: head.at })),
  )
  deps.log.log('info', 'audit chain head', { ...head })
  void notifyAuditHead(deps, head)
  return head
}
