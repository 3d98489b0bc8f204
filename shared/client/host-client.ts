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
import { UnlockdError } from '../errors.ts'
import { RELEASE_CTY } from '../crypto/algorithms.ts'
import { openCompactJwe } from '../crypto/okp.ts'
import { parseEscrowBlob } from '../crypto/blob.ts'
import { b64uEncode, fromUtf8, randomBytes } from '../crypto/bytes.ts'
import { signHostRequest } from '../crypto/jws.ts'
import {
  generateRecoveryKey,
  publicOf,
  thumbprint,
  type HostKeys,
  type PrivateOkpJwk,
  type PublicOkpJwk,
} from '../crypto/keys.ts'
import {
  PROTOCOL_VERSION,
  parseEnrollResponse,
  parseErrorBody,
  parseNonceResponse,
  parseUnlockResponse,
  parseWatchResponse,
  type ApprovalTicket,
  type EnrollResponse,
  type ReleasedVolume,
  type UnlockResponse,
  type VolumeEnrollment,
  type WireReleasedVolume,
} from '../protocol/messages.ts'
import { verifyVerdict } from '../protocol/verdict.ts'
import { errorFromResponse, type Transport, type TransportResponse } from './transport.ts'
import type { EncryptionPayload } from '../protocol/encryption.ts'

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

/**
 * One unlock attempt of a v2 host: the attempt's one-time X25519 key (in memory only; the
 * release is wrapped to it) and the server keys the host pinned (destructive verdicts must be
 * signed by one of them). Without an attempt, requests are v1: unwrapped, unsigned answers.
 */
export interface Attempt {
  ephemeral: PrivateOkpJwk
  serverKeys: readonly PublicOkpJwk[]
}

export async function newAttempt(serverKeys: readonly PublicOkpJwk[]): Promise<Attempt> {
  return { ephemeral: await generateRecoveryKey(), serverKeys }
}

/** An unlock answer with the ephemeral layer removed. */
export type OpenedUnlock =
  | {
      status: 'released'
      host: string
      volumes: ReleasedVolume[]
      /** The server key that signed this release for this very request (not yet trusted). */
      serverKey?: PublicOkpJwk
    }
  | { status: 'approval_required' | 'pending'; host: string; approval: ApprovalTicket }

/** Verdicts whose answer makes the agent destroy something: obeyed only when signed. */
const DESTRUCTIVE = new Set<string>(['host_shredded'])

function challengeFor(a: Attempt | undefined): string | undefined {
  return a ? b64uEncode(randomBytes(32)) : undefined
}

function v2Members(a: Attempt | undefined, challenge: string | undefined): object {
  return a && challenge ? { challenge, epk: publicOf(a.ephemeral) } : {}
}

/**
 * The error of a refused request. A destructive verdict (`host_shredded`) of a v2 request is
 * passed on only when signed by a pinned server key for this request (then `details.verdict`
 * is `signed`); otherwise it becomes `verdict_unsigned`, which only ends this attempt. A v1
 * request's refusal is passed on unmarked.
 */
async function refusal(
  res: TransportResponse,
  what: string,
  serverKeys: readonly PublicOkpJwk[] | undefined,
  bind: { host: string; nonce: string; challenge: string | undefined },
): Promise<UnlockdError> {
  const e = errorFromResponse(res, what)
  // v1 (no attempt): passed on as it is; callers that act on it must check `details.verdict`.
  if (!DESTRUCTIVE.has(e.code) || !serverKeys) return e
  if (bind.challenge === undefined)
    return new UnlockdError('verdict_unsigned', `refused an unsigned shred verdict (${e.code})`)
  try {
    await verifyVerdict(parseErrorBody(res.body)?.verdict, serverKeys, {
      host: bind.host,
      nonce: bind.nonce,
      challenge: bind.challenge,
      verdict: e.code,
    })
  } catch (err) {
    return new UnlockdError(
      'verdict_unsigned',
      `refused an unsigned shred verdict (${e.code}): ${err instanceof Error ? err.message : String(err)}`,
    )
  }
  return new UnlockdError(e.code, e.message, { details: { ...e.details, verdict: 'signed' } })
}

async function unwrapRelease(
  v: WireReleasedVolume,
  a: Attempt | undefined,
  bind: { host: string; nonce: string },
): Promise<ReleasedVolume> {
  if (!a) {
    if (!v.blob) throw new UnlockdError('protocol_invalid', `release of ${v.name} has no blob`)
    return { name: v.name, kind: v.kind, blob: v.blob }
  }
  // A v2 attempt takes only a release wrapped to its own ephemeral key.
  if (!v.sealed)
    throw new UnlockdError(
      'protocol_invalid',
      `release of ${v.name} is not wrapped to this attempt's key`,
    )
  let plain: Uint8Array
  try {
    const r = await openCompactJwe(v.sealed, a.ephemeral)
    const h = r.protectedHeader
    if (
      h['cty'] !== RELEASE_CTY ||
      h['host'] !== bind.host ||
      h['nonce'] !== bind.nonce ||
      h['vol'] !== v.name
    )
      throw new Error('release header is not bound to this request')
    plain = r.plaintext
  } catch (cause) {
    throw new UnlockdError(
      'integrity_failed',
      `release of ${v.name} does not open with this attempt's key (altered or for another request)`,
      { cause },
    )
  }
  try {
    return { name: v.name, kind: v.kind, blob: parseEscrowBlob(JSON.parse(fromUtf8(plain))) }
  } catch (cause) {
    throw new UnlockdError('protocol_invalid', `release of ${v.name} is not a blob`, { cause })
  } finally {
    plain.fill(0)
  }
}

async function openUnlock(
  res: UnlockResponse,
  a: Attempt | undefined,
  bind: { host: string; nonce: string; challenge: string | undefined },
): Promise<OpenedUnlock> {
  if (res.status !== 'released') return res
  const volumes: ReleasedVolume[] = []
  for (const v of res.volumes) volumes.push(await unwrapRelease(v, a, bind))
  const out: OpenedUnlock = { status: 'released', host: res.host, volumes }
  // A self-signed proof that the key it carries answered this request (pinning on first use).
  if (a && bind.challenge && res.serverKey && res.verdict) {
    try {
      await verifyVerdict(res.verdict, [res.serverKey], {
        host: bind.host,
        nonce: bind.nonce,
        challenge: bind.challenge,
        verdict: 'released',
      })
      out.serverKey = res.serverKey
    } catch {
      /* no proof: nothing to pin from this answer */
    }
  }
  return out
}

/** What every request of an unlock attempt (unlock, its approval polls) is signed with. */
interface AttemptAsk {
  keys: HostKeys
  hostId: string
  bootId: string
  /** v2 (ephemeral key, pinned server keys); omitted: a v1 request. */
  attempt?: Attempt
  signal?: AbortSignal
}

/**
 * One signed request of an unlock attempt: a fresh nonce, and for v2 a fresh challenge and the
 * attempt's ephemeral key in the payload; the answer opened (unwrapped, verdicts checked) for
 * this very request.
 */
async function attemptRequest(
  t: Transport,
  o: AttemptAsk,
  r: {
    purpose: 'unlock' | 'poll'
    path: string
    what: string
    members: Record<string, unknown>
    timeoutMs?: number | undefined
  },
): Promise<OpenedUnlock> {
  const nonce = await fetchNonce(t, o.signal)
  const challenge = challengeFor(o.attempt)
  const jws = await signHostRequest(
    r.purpose,
    {
      v: o.attempt ? PROTOCOL_VERSION : 1,
      host: o.hostId,
      ...r.members,
      nonce,
      bootId: o.bootId,
      iat: nowSec(),
      ...v2Members(o.attempt, challenge),
    },
    o.keys.signing,
    o.hostId,
  )
  const res = await t({
    method: 'POST',
    path: r.path,
    body: { jws },
    ...(o.signal ? { signal: o.signal } : {}),
    ...(r.timeoutMs ? { timeoutMs: r.timeoutMs } : {}),
  })
  const bind = { host: o.hostId, nonce, challenge }
  if (res.status !== 200 && res.status !== 202)
    throw await refusal(res, r.what, o.attempt?.serverKeys, bind)
  return openUnlock(parseUnlockResponse(res.body), o.attempt, bind)
}

export interface UnlockAsk extends AttemptAsk {
  /** Volume names; empty asks for all. */
  volumes: string[]
  timeoutMs?: number
}

/** Signed unlock request. Resolves `released` or `approval_required`; denials throw with the server's code. */
export async function requestUnlock(t: Transport, o: UnlockAsk): Promise<OpenedUnlock> {
  return attemptRequest(t, o, {
    purpose: 'unlock',
    path: '/v1/unlock',
    what: 'unlock',
    members: { volumes: o.volumes },
    timeoutMs: o.timeoutMs,
  })
}

/**
 * One long-poll for an approval. Resolves `released` or `pending` (ask again); denial throws.
 * A v2 poll must use the attempt that asked: the server binds the approval to that attempt's
 * ephemeral key (`approval_key_mismatch` otherwise), and wraps the release to it.
 */
export async function pollApproval(
  t: Transport,
  o: AttemptAsk & { approvalId: string; holdMs?: number },
): Promise<OpenedUnlock> {
  return attemptRequest(t, o, {
    purpose: 'poll',
    path: '/v1/approval/poll',
    what: 'approval poll',
    members: { approval: o.approvalId },
    timeoutMs: (o.holdMs ?? 25_000) + 15_000,
  })
}

/**
 * Ask the server whether there is an order (shred) for this host; long-polls. With
 * `serverKeys` (v2) a shred order counts only when signed by one of them for this request;
 * anything else throws `verdict_unsigned`.
 */
export async function watch(
  t: Transport,
  o: {
    keys: HostKeys
    hostId: string
    bootId: string
    serverKeys?: readonly PublicOkpJwk[]
    signal?: AbortSignal
    holdMs?: number
  },
): Promise<WatchOrder> {
  const nonce = await fetchNonce(t, o.signal)
  const challenge = o.serverKeys ? b64uEncode(randomBytes(32)) : undefined
  const jws = await signHostRequest(
    'watch',
    {
      v: o.serverKeys ? PROTOCOL_VERSION : 1,
      host: o.hostId,
      nonce,
      bootId: o.bootId,
      iat: nowSec(),
      ...(challenge ? { challenge } : {}),
    },
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
  const bind = { host: o.hostId, nonce, challenge }
  if (res.status !== 200) throw await refusal(res, 'watch', o.serverKeys, bind)
  const r = parseWatchResponse(res.body)
  if (r.order !== 'shred') return { order: 'none', volumes: [] }
  if (!o.serverKeys || challenge === undefined) return { order: 'shred', volumes: r.volumes }
  try {
    const claims = await verifyVerdict(r.verdict, o.serverKeys, {
      ...bind,
      challenge,
      verdict: 'shred',
    })
    // The signed claims, not the unsigned body, say which volumes.
    return { order: 'shred', volumes: claims.volumes, signed: true }
  } catch (err) {
    throw new UnlockdError(
      'verdict_unsigned',
      `refused an unsigned shred verdict (watch order): ${err instanceof Error ? err.message : String(err)}`,
    )
  }
}

/** A watch answer: `signed` is set only on a shred order verified for this request. */
export interface WatchOrder {
  order: 'none' | 'shred'
  volumes: string[]
  signed?: true
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
