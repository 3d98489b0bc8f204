/**
 * `unlockd escrow export --host NAME`: hand the operator a host's escrow blobs with the KEK
 * layer removed, for `unlockd recover` on another machine. The blobs stay sealed to the host key
 * and, when the host enrolled them with one, to the operator's recovery key: the server still
 * cannot open them, and neither can whoever reads the export without a private key. Needs the
 * operator's own TOTP code (the blobs open with a host's sealing key from a disk image). Audited;
 * refused for a shredded host (there is nothing left to give, and saying so is the point).
 */
import { fromUtf8 } from '../../shared/crypto/bytes.ts'
import { parseEscrowBlob } from '../../shared/crypto/blob.ts'
import type { EscrowExport } from '../../shared/protocol/shred.ts'
import { requireFactor, type Authority } from '../approvals/factor.ts'
import type { ServerDeps } from '../context.ts'
import type { OperatorRow } from '../store/store.ts'
import { blobAad, unwrap } from '../keys/kek-wrap.ts'
import { requireLiveHost } from './admin.ts'
import { audit } from './audit-log.ts'

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
    const volumes: EscrowExport['volumes'] = []
    for (const v of await t.listVolumes(host.id)) {
      if (v.kind === 'tang') continue // Tang keys are server secrets, not escrow blobs
      const plain = unwrap(
        deps.keystore.kek(v.kekVersion),
        v.iv,
        v.ct,
        blobAad(host.id, v.name, v.kekVersion),
      )
      const blob = parseEscrowBlob(JSON.parse(fromUtf8(plain)))
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
    })
    return {
      format: 'unlockd-escrow-export/v1',
      host: host.name,
      hostId: host.id,
      exportedAt: now,
      volumes,
    }
  })
}
