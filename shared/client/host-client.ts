/**
 * The host side of protocol v1: make keys, seal a volume key, enroll, ask for an unlock, wait
 * for an approval, open a released blob. Pure: I/O goes through the injected `Transport`.
 *
 * @example
 * ```ts
 * const keys = await generateHostKeys()
 * const blob = await sealVolumeKey(vk, [publicOf(keys.sealing)])
 * const t = fetchTransport(url)
 * const { hostId } = await enroll(t, { token, name: 'web-1', keys, volumes: [{ name: 'data', kind: 'luks', blob }] })
 * const res = await requestUnlock(t, { keys, hostId, bootId, volumes: [] })
 * if (res.status === 'released') vk = await openEscrowBlob(res.volumes[0].blob, keys.sealing)
 * ```
 */
import { signHostRequest } from '../crypto/jws.ts'
import { publicOf, thumbprint, type HostKeys } from '../crypto/keys.ts'
import {
  PROTOCOL_VERSION,
  parseEnrollResponse,
  parseNonceResponse,
  parseUnlockResponse,
  parseWatchResponse,
  type EnrollResponse,
  type UnlockResponse,
  type VolumeEnrollment,
  type WatchResponse,
} from '../protocol/messages.ts'
import type { EncryptionPayload } from '../protocol/encryption.ts'
import { errorFromResponse, type Transport } from './transport.ts'

export { openEscrowBlob, sealVolumeKey } from '../crypto/blob.ts'
export { generateHostKeys, publicOf } from '../crypto/keys.ts'

const nowSec = (): number => Math.floor(Date.now() / 1000)

export async function hostIdOf(keys: HostKeys): Promise<string> {
  return thumbprint(publicOf(keys.signing))
}

export async function fetchNonce(t: Transport, signal?: AbortSignal): Promise<string> {
  const res = await t({ method: 'GET', path: '/v1/nonce', ...(signal ? { signal } : {}) })
  if (res.status !== 200) throw errorFromResponse(res, 'nonce')
  return parseNonceResponse(res.body).nonce
}

export async function enroll(
  t: Transport,
  o: { token: string; name: string; keys: HostKeys; volumes: VolumeEnrollment[] },
): Promise<EnrollResponse> {
  const hostId = await hostIdOf(o.keys)
  const payload = {
    v: PROTOCOL_VERSION,
    name: o.name,
    signingKey: publicOf(o.keys.signing),
    sealingKey: publicOf(o.keys.sealing),
    volumes: o.volumes,
    iat: nowSec(),
  }
  const jws = await signHostRequest('enroll', payload, o.keys.signing, hostId)
  const res = await t({ method: 'POST', path: '/v1/enroll', bearer: o.token, body: { jws } })
  if (res.status !== 201) throw errorFromResponse(res, 'enroll')
  return parseEnrollResponse(res.body)
}

export async function addVolumes(
  t: Transport,
  o: { keys: HostKeys; hostId: string; volumes: VolumeEnrollment[] },
): Promise<EnrollResponse> {
  const nonce = await fetchNonce(t)
  const jws = await signHostRequest(
    'volumes',
    { v: PROTOCOL_VERSION, host: o.hostId, volumes: o.volumes, nonce, iat: nowSec() },
    o.keys.signing,
    o.hostId,
  )
  const res = await t({ method: 'POST', path: '/v1/volumes', body: { jws } })
  if (res.status !== 200) throw errorFromResponse(res, 'add volumes')
  return parseEnrollResponse(res.body)
}

export interface UnlockAsk {
  keys: HostKeys
  hostId: string
  bootId: string
  /** Volume names; empty asks for all. */
  volumes: string[]
  signal?: AbortSignal
  timeoutMs?: number
}

/** Signed unlock request. Resolves `released` or `approval_required`; denials throw with the server's code. */
export async function requestUnlock(t: Transport, o: UnlockAsk): Promise<UnlockResponse> {
  const nonce = await fetchNonce(t, o.signal)
  const jws = await signHostRequest(
    'unlock',
    {
      v: PROTOCOL_VERSION,
      host: o.hostId,
      volumes: o.volumes,
      nonce,
      bootId: o.bootId,
      iat: nowSec(),
    },
    o.keys.signing,
    o.hostId,
  )
  const res = await t({
    method: 'POST',
    path: '/v1/unlock',
    body: { jws },
    ...(o.signal ? { signal: o.signal } : {}),
    ...(o.timeoutMs ? { timeoutMs: o.timeoutMs } : {}),
  })
  if (res.status !== 200 && res.status !== 202) throw errorFromResponse(res, 'unlock')
  return parseUnlockResponse(res.body)
}

/** One long-poll for an approval. Resolves `released` or `pending` (ask again); denial throws. */
export async function pollApproval(
  t: Transport,
  o: {
    keys: HostKeys
    hostId: string
    bootId: string
    approvalId: string
    signal?: AbortSignal
    holdMs?: number
  },
): Promise<UnlockResponse> {
  const nonce = await fetchNonce(t, o.signal)
  const jws = await signHostRequest(
    'poll',
    {
      v: PROTOCOL_VERSION,
      host: o.hostId,
      approval: o.approvalId,
      nonce,
      bootId: o.bootId,
      iat: nowSec(),
    },
    o.keys.signing,
    o.hostId,
  )
  const res = await t({
    method: 'POST',
    path: '/v1/approval/poll',
    body: { jws },
    timeoutMs: (o.holdMs ?? 25_000) + 15_000,
    ...(o.signal ? { signal: o.signal } : {}),
  })
  if (res.status !== 200 && res.status !== 202) throw errorFromResponse(res, 'approval poll')
  return parseUnlockResponse(res.body)
}

/** Ask the server whether there is an order (shred) for this host; long-polls. */
export async function watch(
  t: Transport,
  o: { keys: HostKeys; hostId: string; bootId: string; signal?: AbortSignal; holdMs?: number },
): Promise<WatchResponse> {
  const nonce = await fetchNonce(t, o.signal)
  const jws = await signHostRequest(
    'watch',
    { v: PROTOCOL_VERSION, host: o.hostId, nonce, bootId: o.bootId, iat: nowSec() },
    o.keys.signing,
    o.hostId,
  )
  const res = await t({
    method: 'POST',
    path: '/v1/watch',
    body: { jws },
    timeoutMs: (o.holdMs ?? 25_000) + 15_000,
    ...(o.signal ? { signal: o.signal } : {}),
  })
  if (res.status !== 200) throw errorFromResponse(res, 'watch')
  return parseWatchResponse(res.body)
}

export async function report(
  t: Transport,
  o: { keys: HostKeys; hostId: string; event: 'shred_done' | 'shred_failed'; actions: string[] },
): Promise<void> {
  const nonce = await fetchNonce(t)
  const jws = await signHostRequest(
    'report',
    {
      v: PROTOCOL_VERSION,
      host: o.hostId,
      nonce,
      iat: nowSec(),
      event: o.event,
      actions: o.actions.map((a) => a.slice(0, 300)),
    },
    o.keys.signing,
    o.hostId,
  )
  const res = await t({ method: 'POST', path: '/v1/report', body: { jws } })
  if (res.status !== 200) throw errorFromResponse(res, 'report')
}

/** One encryption progress report (POST /v1/encryption): start, progress, done or failed. */
export async function reportEncryption(
  t: Transport,
  o: {
    keys: HostKeys
    hostId: string
    report: Omit<EncryptionPayload, 'v' | 'host' | 'nonce' | 'iat'>
  },
): Promise<void> {
  const nonce = await fetchNonce(t)
  const payload: EncryptionPayload = {
    v: PROTOCOL_VERSION,
    host: o.hostId,
    nonce,
    iat: nowSec(),
    ...o.report,
    message: o.report.message === null ? null : o.report.message.slice(0, 500),
  }
  const jws = await signHostRequest('encryption', payload, o.keys.signing, o.hostId)
  const res = await t({ method: 'POST', path: '/v1/encryption', body: { jws } })
  if (res.status !== 200) throw errorFromResponse(res, 'encryption report')
}
