/**
 * `unlockd escrow export --host NAME`: hand the operator a host's escrow blobs with the KEK
 * layer removed, for `unlockd recover` on another machine. Each blob is handed out sealed only to
 * the operator's recovery key: the host's recipient is removed (a General JWE recipient is its own
 * wrapped content key, so dropping one leaves the others intact), so that the file does not open
 * with the host's sealing key from a disk image or snapshot, which shred cannot reach. A volume
 * enrolled without a recovery key is not exported at all (only the host keys open it) and is
 * named in `notExported`. Needs the operator's own TOTP code. Audited; refused for a shredded host
 * (there is nothing left to give, and saying so is the point).
 */
import { fromUtf8 } from '../../shared/crypto/bytes.ts'
import { parseEscrowBlob, type EscrowBlob } from '../../shared/crypto/blob.ts'
import { parseSealingPublicKey, thumbprint } from '../../shared/crypto/keys.ts'
import type { EscrowExport } from '../../shared/protocol/shred.ts'
import { requireFactor, type Authority } from '../approvals/factor.ts'
import type { ServerDeps } from '../context.ts'
import type { OperatorRow } from '../store/store.ts'
import { blobAad, unwrap } from '../keys/kek-wrap.ts'
import { requireLiveHost } from './admin.ts'
import { audit } from './audit-log.ts'

/** The blob without the recipient(s) of `hostKid`; undefined when no other recipient is left. */
export function withoutRecipient(blob: EscrowBlob, hostKid: string): EscrowBlob | undefined {
  const recipients = blob.recipients.filter((r) => r.header.kid !== hostKid)
  return recipients.length === 0 ? undefined : { ...blob, recipients }
}

/** Hands out key material past every policy, so it needs the caller's own TOTP code. */
export function exportEscrow(
  deps: ServerDeps,
  caller: OperatorRow,
  hostName: string,
  code: Authority,
): Promise<EscrowExport> {
  const actor = `operator:${caller.name}` as const
  return deps.store.tx(async (t) => {
    const host = await requireLiveHost(t, hostName, 'its escrow blobs no longer exist')
    const now = deps.now()
    await requireFactor(deps, t, caller, code, now, 'escrow export', host.name)
    const hostKid = await thumbprint(parseSealingPublicKey(JSON.parse(host.sealingJwk)))
    const volumes: EscrowExport['volumes'] = []
    const notExported: string[] = []
    for (const v of await t.listVolumes(host.id)) {
      if (v.kind === 'tang') continue // Tang keys are server secrets, not escrow blobs
      const plain = unwrap(
        deps.keystore.kek(v.kekVersion),
        v.iv,
        v.ct,
        blobAad(host.id, v.name, v.kekVersion),
      )
      const blob = withoutRecipient(parseEscrowBlob(JSON.parse(fromUtf8(plain))), hostKid)
      plain.fill(0)
      if (!blob) {
        notExported.push(v.name)
        continue
      }
      volumes.push({
        name: v.name,
        kind: v.kind,
        ref: v.ref,
        recipients: blob.recipients.map((r) => String(r.header?.kid)),
        blob,
      })
    }
    await audit(t, now, actor, 'escrow.export', host.name, {
      hostId: host.id,
      volumes: volumes.map((v) => v.name),
      ...(notExported.length > 0 ? { notExported } : {}),
    })
    return {
      format: 'unlockd-escrow-export/v1',
      host: host.name,
      hostId: host.id,
      exportedAt: now,
      volumes,
      ...(notExported.length > 0 ? { notExported } : {}),
    }
  })
}
