/**
 * Enrollment (POST /v1/enroll): a one-time token plus a self-signed request carrying the host's
 * public keys and its volumes' escrow blobs. The server wraps each blob with the current KEK.
 * The host id is the signing key's thumbprint, so a shredded host's keys can never enroll again.
 *
 * A retry is idempotent: when the reply to a committed enrollment is lost, the host (which
 * rolled back) sends the same token again, signed by the same key, for the same name and
 * volumes. The token then names that host as its user, the request proves possession of that
 * key, and the server answers what it answered the first time instead of `token_used`. Any other
 * key, name or volume set with a used token is still refused.
 */
import { UnlockdError } from '../../shared/errors.ts'
import { parseEscrowBlob } from '../../shared/crypto/blob.ts'
import { thumbprint } from '../../shared/crypto/keys.ts'
import { peekJwsKid, verifyHostRequest } from '../../shared/crypto/jws.ts'
import { decodeJwtPayloadUnverified } from './jws-peek.ts'
import { DEFAULT_POLICY } from '../../shared/protocol/policy.ts'
import {
  parseEnrollPayload,
  type EnrollResponse,
  type VolumeEnrollment,
} from '../../shared/protocol/messages.ts'
import { ipInAny } from '../../shared/util/cidr.ts'
import { utf8 } from '../../shared/crypto/bytes.ts'
import type { ServerDeps } from '../context.ts'
import { blobAad, wrap } from '../keys/kek-wrap.ts'
import type { StoreTx, VolumeRow } from '../store/store.ts'
import { audit } from './audit-log.ts'
import { hashToken, tokenFormatOk } from './secrets.ts'
import { serverKeyInfo } from './verdicts.ts'

export function wrapVolume(
  deps: ServerDeps,
  hostId: string,
  v: VolumeEnrollment,
  createdAt: number,
): VolumeRow {
  const version = deps.keystore.currentVersion
  const { iv, ct } = wrap(
    deps.keystore.kek(version),
    utf8(JSON.stringify(parseEscrowBlob(v.blob))),
    blobAad(hostId, v.name, version),
  )
  return {
    hostId,
    name: v.name,
    kind: v.kind,
    ref: v.ref ?? null,
    kekVersion: version,
    iv,
    ct,
    createdAt,
  }
}

async function checkTokenState(
  deps: ServerDeps,
  t: StoreTx,
  token: string,
  source: string,
  hostId: string,
): Promise<{ id: string; hostName: string; cidrs: string[]; retry: boolean }> {
  if (!tokenFormatOk('ue', token))
    throw new UnlockdError('token_invalid', 'enrollment token is malformed')
  const row = await t.getTokenByHash(await hashToken(token))
  if (!row) throw new UnlockdError('token_invalid', 'enrollment token is not known to this server')
  if (row.revokedAt !== null)
    throw new UnlockdError('token_revoked', 'enrollment token was revoked')
  const retry = row.usedAt !== null && row.usedByHost === hostId
  if (row.usedAt !== null && !retry)
    throw new UnlockdError(
      'token_used',
      'enrollment token was already used; ask an operator for a new one (`unlockd token create`)',
    )
  if (!retry && row.expiresAt <= deps.now())
    throw new UnlockdError(
      'token_expired',
      'enrollment token has expired; ask an operator for a new one',
    )
  if (row.cidrs.length > 0 && !ipInAny(source, row.cidrs))
    throw new UnlockdError(
      'cidr_denied',
      `enrollment from ${source} is outside the token's networks`,
    )
  return { ...row, retry }
}

/** The answer of the enrollment this retry repeats, or a refusal when it is not the same one. */
async function repeatEnrollment(
  t: StoreTx,
  hostId: string,
  name: string,
  volumes: readonly VolumeEnrollment[],
): Promise<EnrollResponse> {
  const host = await t.getHost(hostId)
  if (host?.state === 'shredded')
    throw new UnlockdError(
      'host_shredded',
      'this host identity was shredded and can never enroll again; make new host keys',
    )
  const stored = host ? await t.listVolumes(hostId) : []
  const key = (v: { name: string; kind: string }): string => `${v.name}\0${v.kind}`
  const same =
    host !== undefined &&
    host.name === name &&
    stored.map(key).sort().join('\n') === volumes.map(key).sort().join('\n')
  if (!same)
    throw new UnlockdError(
      'token_used',
      'enrollment token was already used; ask an operator for a new one (`unlockd token create`)',
    )
  return { hostId, name, volumes: volumes.map((v) => v.name) }
}

export async function enrollHost(
  deps: ServerDeps,
  token: string,
  jws: unknown,
  source: string,
): Promise<EnrollResponse> {
  const kid = peekJwsKid(jws, 'enroll')
  const unverified = parseEnrollPayload(decodeJwtPayloadUnverified(jws as string))
  if ((await thumbprint(unverified.signingKey)) !== kid)
    throw new UnlockdError(
      'protocol_invalid',
      'jws kid is not the thumbprint of the enclosed signing key',
    )
  // Proof of possession: the request must verify with the key it registers.
  const payload = parseEnrollPayload(
    await verifyHostRequest(jws as string, 'enroll', unverified.signingKey),
  )
  const now = deps.now()
  if (Math.abs(now - payload.iat) > deps.settings.iatSkew)
    throw new UnlockdError(
      'iat_skew',
      'request time is too far from the server clock; check NTP on the host',
    )
  const names = new Set<string>()
  for (const v of payload.volumes) {
    if (names.has(v.name))
      throw new UnlockdError('bad_request', `volume name ${v.name} appears twice`)
    names.add(v.name)
  }

  return deps.store.tx(async (t) => {
    const tok = await checkTokenState(deps, t, token, source, kid)
    if (tok.hostName !== payload.name)
      throw new UnlockdError(
        'forbidden',
        `this token is bound to host ${tok.hostName}, not ${payload.name}`,
      )
    if (tok.retry) {
      const answer = await repeatEnrollment(t, kid, payload.name, payload.volumes)
      await audit(t, now, `enroll-token:${tok.id}`, 'host.enroll_retry', payload.name, {
        hostId: kid,
        source,
      })
      // The same answer as the first time, server key included (the lost reply carried it).
      return { ...answer, ...(await serverKeyInfo(deps)) }
    }
    const existing = await t.getHost(kid)
    if (existing?.state === 'shredded')
      throw new UnlockdError(
        'host_shredded',
        'this host identity was shredded and can never enroll again; make new host keys',
      )
    if (existing)
      throw new UnlockdError(
        'host_exists',
        `host ${existing.name} is already enrolled with these keys; add volumes with \`unlockd enroll\` (no token needed)`,
      )
    const byName = await t.getHostByName(payload.name)
    if (byName && byName.state !== 'shredded')
      throw new UnlockdError(
        'host_exists',
        `another live host is named ${payload.name}; shred it or pick another name`,
      )
    if (!(await t.useToken(tok.id, now, kid)))
      throw new UnlockdError('token_used', 'enrollment token was already used')
    await t.insertHost({
      id: kid,
      name: payload.name,
      state: 'active',
      stateReason: null,
      signingJwk: JSON.stringify(payload.signingKey),
      sealingJwk: JSON.stringify(payload.sealingKey),
      // The token's networks become the host's unlock networks: where it enrolled is where it lives.
      policy: { ...DEFAULT_POLICY, cidrs: tok.cidrs },
      createdAt: now,
      lastSeenAt: now,
      lastUnlockAt: null,
      lastBootId: null,
      lastSource: source,
      tang: false,
    })
    for (const v of payload.volumes) await t.upsertVolume(wrapVolume(deps, kid, v, now))
    await audit(t, now, `enroll-token:${tok.id}`, 'host.enroll', payload.name, {
      hostId: kid,
      source,
      volumes: payload.volumes.map((v) => v.name),
    })
    return {
      hostId: kid,
      name: payload.name,
      volumes: payload.volumes.map((v) => v.name),
      // The agent pins this key: only verdicts it signs can make the host destroy anything.
      ...(await serverKeyInfo(deps)),
    }
  })
}
