/**
 * Adding or replacing volumes of an enrolled host (POST /v1/volumes), signed by the host with a
 * fresh nonce. No token is needed: the host key already proves who it is.
 */
import { UnlockdError } from '../../shared/errors.ts'
import type { EnrollResponse } from '../../shared/protocol/messages.ts'
import type { ServerDeps } from '../context.ts'
import { audit } from './audit-log.ts'
import { wrapVolume } from './enroll.ts'
import { consumeNonceOrThrow, type HostRequest } from './host-auth.ts'

export async function addVolumes(
  deps: ServerDeps,
  req: HostRequest<'volumes'>,
  source: string,
): Promise<EnrollResponse> {
  const { signer, payload } = req
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
