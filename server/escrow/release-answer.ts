/**
 * The released answer of unlock and of an approval poll. For a v2 request every blob travels
 * only wrapped once more to the attempt's ephemeral X25519 key (compact JWE, ECDH-ES+A256KW /
 * A256GCM, the host id and the request nonce in the protected header): whoever recorded the
 * response cannot open it later, even with every host key file, because the one-time private
 * key lived only in the agent's memory. The answer also carries the server's verdict key and a
 * `released` verdict over this request, so that hosts enrolled before signed verdicts can pin it.
 * v1 requests get the blobs as they are stored (sealed to the host key only).
 */
import { RELEASE_CTY } from '../../shared/crypto/algorithms.ts'
import { utf8 } from '../../shared/crypto/bytes.ts'
import type { PublicOkpJwk } from '../../shared/crypto/keys.ts'
import { sealCompactJwe } from '../../shared/crypto/okp.ts'
import type { ReleasedVolume, UnlockResponse } from '../../shared/protocol/messages.ts'
import type { ServerDeps } from '../context.ts'
import { serverPublicKey, verdictFor } from './verdicts.ts'

export interface ReleaseRequest {
  host: string
  nonce: string
  challenge?: string | undefined
  epk?: PublicOkpJwk | undefined
}

export async function wrapToEphemeral(
  blob: ReleasedVolume['blob'],
  epk: PublicOkpJwk,
  bind: { host: string; nonce: string; volume: string },
): Promise<string> {
  return sealCompactJwe(
    utf8(JSON.stringify(blob)),
    { cty: RELEASE_CTY, host: bind.host, nonce: bind.nonce, vol: bind.volume },
    epk,
  )
}

export async function releasedAnswer(
  deps: ServerDeps,
  req: ReleaseRequest,
  volumes: ReleasedVolume[],
): Promise<UnlockResponse> {
  const epk = req.epk
  if (epk === undefined || req.challenge === undefined)
    return { status: 'released', host: req.host, volumes }
  const wrapped = []
  for (const v of volumes)
    wrapped.push({
      name: v.name,
      kind: v.kind,
      sealed: await wrapToEphemeral(v.blob, epk, {
        host: req.host,
        nonce: req.nonce,
        volume: v.name,
      }),
    })
  const verdict = await verdictFor(deps, req, 'released')
  return {
    status: 'released',
    host: req.host,
    volumes: wrapped,
    serverKey: serverPublicKey(deps),
    ...(verdict ? { verdict } : {}),
  }
}
