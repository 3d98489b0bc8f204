/**
 * Adding or replacing volumes of an enrolled host (POST /v1/volumes), signed by the host with a
 * fresh nonce. No token is needed: the host key already proves who it is.
 */
import { UnlockdError } from '../../shared/errors.ts'
import { parseAddVolumesPayload, type EnrollResponse } from '../../shared/protocol/messages.ts'
import type { ServerDeps } from '../context.ts'
import { audit } from './audit-log.ts'
import { wrapVolume } from './enroll.ts'
import { authenticateHost, checkIat, consumeNonceOrThrow } from './host-auth.ts'

export async function addVolumes(
  deps: ServerDeps,
  jws: unknown,
  source: string,
): Promise<EnrollResponse> {
  const { host: signer, payload: raw } = await authenticateHost(deps, jws, 'volumes')
  const payload = parseAddVolumesPayload(raw)
  if (payload.host !== signer.id)
    throw new UnlockdError('protocol_invalid', 'payload host does not match the signing key')
  checkIat(deps, payload.iat)
  const now = deps.now()
  return deps.store.tx(async (t) => {
    await consumeNonceOrThrow(t, payload.nonce, now)
    const host = await t.getHost(signer.id)
    if (!host || host.state === 'shredded')
      throw new UnlockdError('host_shredded', 'this host was shredded')
    if (host.state === 'suspended')
      throw new UnlockdError('host_suspended', 'this host is suspended')
    const before = new Set((await t.listVolumes(host.id)).map((v) => v.name))
    for (const v of payload.volumes) await t.upsertVolume(wrapVolume(deps, host.id, v, now))
    await audit(t, now, `host:${host.name}`, 'volume.add', host.name, {
      source,
      added: payload.volumes.filter((v) => !before.has(v.name)).map((v) => v.name),
      replaced: payload.volumes.filter((v) => before.has(v.name)).map((v) => v.name),
    })
    const all = await t.listVolumes(host.id)
    return { hostId: host.id, name: host.name, volumes: all.map((v) => v.name) }
  })
}
