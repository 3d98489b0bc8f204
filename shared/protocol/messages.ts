/**
 * Wire messages of protocol v2 (v1 requests still accepted) and their single parsers. Handlers and the agent use only the
 * values these return. See shared/protocol/README.md for the exchange.
 */
import * as v from 'valibot'
import { parseEscrowBlob, type EscrowBlob } from '../crypto/blob.ts'
import { parseSealingPublicKey, parseSigningPublicKey, type PublicOkpJwk } from '../crypto/keys.ts'
import { UnlockdError, isErrorCode, type UnlockdErrorCode } from '../errors.ts'
import type { EncryptionView } from './encryption.ts'
import { PolicySchema, type Policy } from './policy.ts'
import { bootId, cidr, epochSeconds, hostId, name, nonce, parseWith } from './validate.ts'

/**
 * v2: unlock, poll and watch carry the host's fresh `challenge` (signed verdicts answer it) and
 * unlock and poll the attempt's ephemeral key `epk` (releases are wrapped to it). Servers accept
 * v1 requests from older agents for one release; their answers are neither signed nor wrapped.
 */
export const PROTOCOL_VERSION = 2
export type ProtocolVersion = 1 | 2
const version = v.picklist([1, 2] as const, 'must be protocol version 1 or 2')

const blob = v.pipe(
  v.unknown(),
  v.rawTransform(({ dataset, addIssue, NEVER }) => {
    try {
      return parseEscrowBlob(dataset.value)
    } catch (e) {
      addIssue({ message: e instanceof Error ? e.message : 'invalid blob' })
      return NEVER
    }
  }),
)
const signingKey = v.pipe(
  v.unknown(),
  v.rawTransform(({ dataset, addIssue, NEVER }) => {
    try {
      return parseSigningPublicKey(dataset.value)
    } catch (e) {
      addIssue({ message: e instanceof Error ? e.message : 'invalid key' })
      return NEVER
    }
  }),
)
const sealingKey = v.pipe(
  v.unknown(),
  v.rawTransform(({ dataset, addIssue, NEVER }) => {
    try {
      return parseSealingPublicKey(dataset.value)
    } catch (e) {
      addIssue({ message: e instanceof Error ? e.message : 'invalid key' })
      return NEVER
    }
  }),
)

export const VOLUME_KINDS = ['luks', 'fscrypt', 'tang'] as const
export type VolumeKind = (typeof VOLUME_KINDS)[number]

// --- host → server ---------------------------------------------------------------------------

export const VolumeEnrollmentSchema = v.strictObject({
  name,
  kind: v.picklist(['luks', 'fscrypt'], 'must be "luks" or "fscrypt"'),
  /** LUKS UUID or fscrypt key identifier (hex); lets operators match volumes to disks. */
  ref: v.optional(
    v.pipe(v.string(), v.regex(/^[A-Za-z0-9-]{1,64}$/, 'must be a UUID or hex identifier')),
  ),
  blob,
})
export type VolumeEnrollment = {
  name: string
  kind: 'luks' | 'fscrypt'
  ref?: string
  blob: EscrowBlob
}

const volumeList = v.pipe(v.array(VolumeEnrollmentSchema), v.maxLength(64, 'at most 64 volumes'))

/** Payload of the self-signed enrollment JWS (proves possession of the signing key). */
export const EnrollPayloadSchema = v.strictObject({
  v: version,
  name,
  signingKey,
  sealingKey,
  volumes: volumeList,
  iat: epochSeconds,
})
export interface EnrollPayload {
  v: ProtocolVersion
  name: string
  signingKey: PublicOkpJwk
  sealingKey: PublicOkpJwk
  volumes: VolumeEnrollment[]
  iat: number
}
export const parseEnrollPayload = (x: unknown): EnrollPayload =>
  parseWith(EnrollPayloadSchema, x, 'enroll payload', 'protocol_invalid') as EnrollPayload

/** Body of every host-signed POST: `{ "jws": "<compact>" }`. */
export const JwsBodySchema = v.strictObject({
  jws: v.pipe(v.string('must be a string'), v.maxLength(65536)),
})
export const parseJwsBody = (x: unknown): { jws: string } => parseWith(JwsBodySchema, x, 'body')

/** The v2 members of unlock and poll: the host's challenge and the attempt's ephemeral key. */
const v2Fields = {
  /** Fresh random value of the host; signed verdicts must repeat it. */
  challenge: v.optional(nonce),
  /** Public X25519 key of this unlock attempt; the release is wrapped to it. */
  epk: v.optional(sealingKey),
}

/** v2 requests must carry every v2 member; v1 requests none of them. */
function requireV2<T extends { v: ProtocolVersion; challenge?: string | undefined; epk?: unknown }>(
  p: T,
  what: string,
  needsEpk = true,
): T {
  const has = p.challenge !== undefined && (!needsEpk || p.epk !== undefined)
  if (p.v === 2 && !has)
    throw new UnlockdError(
      'protocol_invalid',
      `${what}: v2 needs challenge${needsEpk ? ' and epk' : ''}`,
    )
  if (p.v === 1 && (p.challenge !== undefined || p.epk !== undefined))
    throw new UnlockdError('protocol_invalid', `${what}: challenge and epk need v2`)
  return p
}

export const UnlockPayloadSchema = v.strictObject({
  v: version,
  host: hostId,
  /** Volume names to release; empty means all of the host's volumes. */
  volumes: v.pipe(v.array(name), v.maxLength(64)),
  nonce,
  bootId,
  iat: epochSeconds,
  ...v2Fields,
})
export type UnlockPayload = v.InferOutput<typeof UnlockPayloadSchema>
export const parseUnlockPayload = (x: unknown): UnlockPayload =>
  requireV2(
    parseWith(UnlockPayloadSchema, x, 'unlock payload', 'protocol_invalid'),
    'unlock payload',
  )

/** Long-poll for an approval (signed, single-use nonce like unlock). */
export const PollPayloadSchema = v.strictObject({
  v: version,
  host: hostId,
  approval: v.pipe(v.string(), v.regex(/^ap_[A-Za-z0-9_-]{22}$/, 'must be an approval id')),
  nonce,
  bootId,
  iat: epochSeconds,
  ...v2Fields,
})
export type PollPayload = v.InferOutput<typeof PollPayloadSchema>
export const parsePollPayload = (x: unknown): PollPayload =>
  requireV2(parseWith(PollPayloadSchema, x, 'poll payload', 'protocol_invalid'), 'poll payload')

/** Add volumes to an already enrolled host (host-signed, no token needed). */
export const AddVolumesPayloadSchema = v.strictObject({
  v: version,
  host: hostId,
  volumes: volumeList,
  nonce,
  iat: epochSeconds,
})
export type AddVolumesPayload = {
  v: ProtocolVersion
  host: string
  volumes: VolumeEnrollment[]
  nonce: string
  iat: number
}
export const parseAddVolumesPayload = (x: unknown): AddVolumesPayload =>
  parseWith(AddVolumesPayloadSchema, x, 'volumes payload', 'protocol_invalid') as AddVolumesPayload

/** Watch (kill-switch channel) and report payloads. */
export const WatchPayloadSchema = v.strictObject({
  v: version,
  host: hostId,
  nonce,
  bootId,
  iat: epochSeconds,
  challenge: v.optional(nonce),
})
export type WatchPayload = v.InferOutput<typeof WatchPayloadSchema>
export const parseWatchPayload = (x: unknown): WatchPayload =>
  requireV2(
    parseWith(WatchPayloadSchema, x, 'watch payload', 'protocol_invalid'),
    'watch payload',
    false,
  )

export const ReportPayloadSchema = v.strictObject({
  v: version,
  host: hostId,
  nonce,
  iat: epochSeconds,
  event: v.picklist(['shred_done', 'shred_failed']),
  actions: v.pipe(v.array(v.pipe(v.string(), v.maxLength(300))), v.maxLength(64)),
})
export type ReportPayload = v.InferOutput<typeof ReportPayloadSchema>
export const parseReportPayload = (x: unknown): ReportPayload =>
  parseWith(ReportPayloadSchema, x, 'report payload', 'protocol_invalid')

// --- server → host ---------------------------------------------------------------------------

export const NonceResponseSchema = v.object({ nonce, expiresAt: epochSeconds })
export type NonceResponse = v.InferOutput<typeof NonceResponseSchema>
export const parseNonceResponse = (x: unknown): NonceResponse =>
  parseWith(NonceResponseSchema, x, 'nonce response', 'protocol_invalid')

export const EnrollResponseSchema = v.object({
  hostId,
  name,
  volumes: v.array(name),
  /** The server's verdict-signing key (v2 servers), pinned by the agent at enrollment. */
  serverKey: v.optional(signingKey),
  /** Its RFC 7638 thumbprint, to compare out of band. */
  serverKeyThumbprint: v.optional(v.pipe(v.string(), v.regex(/^[A-Za-z0-9_-]{43}$/))),
})
export type EnrollResponse = v.InferOutput<typeof EnrollResponseSchema>
export const parseEnrollResponse = (x: unknown): EnrollResponse =>
  parseWith(EnrollResponseSchema, x, 'enroll response', 'protocol_invalid')

/**
 * A released volume on the wire: v1 answers carry the `blob` (sealed to the host key); v2
 * answers carry it only `sealed` once more to the attempt's ephemeral key (compact JWE).
 */
export const WireReleasedVolumeSchema = v.object({
  name,
  kind: v.picklist(['luks', 'fscrypt']),
  blob: v.optional(blob),
  sealed: v.optional(v.pipe(v.string(), v.maxLength(32768), v.regex(/^[A-Za-z0-9_.-]+$/))),
})
export type WireReleasedVolume = {
  name: string
  kind: 'luks' | 'fscrypt'
  blob?: EscrowBlob
  sealed?: string
}
/** A released volume once the host removed the ephemeral layer. */
export type ReleasedVolume = { name: string; kind: 'luks' | 'fscrypt'; blob: EscrowBlob }
const verdictJws = v.optional(v.pipe(v.string(), v.maxLength(4096)))

export const ApprovalTicketSchema = v.object({
  id: v.pipe(v.string(), v.regex(/^ap_[A-Za-z0-9_-]{22}$/)),
  expiresAt: epochSeconds,
  rule: v.pipe(v.string(), v.maxLength(100)),
})
export type ApprovalTicket = v.InferOutput<typeof ApprovalTicketSchema>

export const UnlockResponseSchema = v.variant('status', [
  v.object({
    status: v.literal('released'),
    host: hostId,
    volumes: v.array(WireReleasedVolumeSchema),
    /** v2: the server's verdict key and its `released` verdict for this request (pinning). */
    serverKey: v.optional(signingKey),
    verdict: verdictJws,
  }),
  v.object({
    status: v.literal('approval_required'),
    host: hostId,
    approval: ApprovalTicketSchema,
  }),
  v.object({ status: v.literal('pending'), host: hostId, approval: ApprovalTicketSchema }),
])
export type UnlockResponse =
  | {
      status: 'released'
      host: string
      volumes: WireReleasedVolume[]
      serverKey?: PublicOkpJwk
      verdict?: string
    }
  | { status: 'approval_required' | 'pending'; host: string; approval: ApprovalTicket }
export const parseUnlockResponse = (x: unknown): UnlockResponse =>
  parseWith(UnlockResponseSchema, x, 'unlock response', 'protocol_invalid') as UnlockResponse

export const WatchResponseSchema = v.object({
  order: v.picklist(['none', 'shred']),
  volumes: v.array(name),
  /** v2: a shred order's signed verdict (shared/protocol/verdict.ts). */
  verdict: verdictJws,
})
export type WatchResponse = v.InferOutput<typeof WatchResponseSchema>
export const parseWatchResponse = (x: unknown): WatchResponse =>
  parseWith(WatchResponseSchema, x, 'watch response', 'protocol_invalid')

/** Error body of every 4xx/5xx: a stable code, a sentence, and optionally the deciding rule. */
export interface ErrorBody {
  error: UnlockdErrorCode
  message: string
  rule?: string
  /** v2: the signed verdict of a final denial (shared/protocol/verdict.ts). */
  verdict?: string
}
export function parseErrorBody(x: unknown): ErrorBody | undefined {
  if (typeof x !== 'object' || x === null) return undefined
  const o = x as Record<string, unknown>
  if (!isErrorCode(o['error']) || typeof o['message'] !== 'string') return undefined
  const out: ErrorBody = { error: o['error'], message: o['message'].slice(0, 500) }
  if (typeof o['rule'] === 'string') out.rule = o['rule'].slice(0, 100)
  if (typeof o['verdict'] === 'string' && o['verdict'].length <= 4096) out.verdict = o['verdict']
  return out
}

// --- operator API ----------------------------------------------------------------------------

export const CreateTokenSchema = v.strictObject({
  host: name,
  ttlSeconds: v.optional(
    v.pipe(
      v.number(),
      v.integer(),
      v.minValue(60, 'must be at least 60 s'),
      v.maxValue(30 * 86400, 'must be at most 30 days'),
    ),
    3600,
  ),
  cidrs: v.optional(v.pipe(v.array(cidr), v.maxLength(64)), []),
})
export type CreateTokenRequest = v.InferOutput<typeof CreateTokenSchema>
export const parseCreateToken = (x: unknown): CreateTokenRequest =>
  parseWith(CreateTokenSchema, x, 'body')

const hex64 = v.pipe(v.string(), v.regex(/^[0-9a-f]{64}$/, 'must be 64 hex digits'))
const count = v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(Number.MAX_SAFE_INTEGER))
/** An exported audit chain head (`unlockd audit head`), as the server MAC'd it. */
export const AuditHeadSchema = v.strictObject({
  pos: count,
  seq: count,
  hash: hex64,
  at: v.pipe(v.number(), v.integer(), v.minValue(0)),
  mac: hex64,
})
export const parseAuditHead = (x: unknown, where = 'head'): v.InferOutput<typeof AuditHeadSchema> =>
  parseWith(AuditHeadSchema, x, where)
export const AuditVerifyRequestSchema = v.strictObject({ head: v.optional(AuditHeadSchema) })
export const parseAuditVerifyRequest = (
  x: unknown,
): v.InferOutput<typeof AuditVerifyRequestSchema> => parseWith(AuditVerifyRequestSchema, x, 'body')

export const PolicyPatchSchema = v.strictObject({
  cidrs: v.optional(PolicySchema.entries.cidrs),
  maxUnlocks: v.optional(PolicySchema.entries.maxUnlocks),
  notBefore: v.optional(PolicySchema.entries.notBefore),
  notAfter: v.optional(PolicySchema.entries.notAfter),
  approval: v.optional(PolicySchema.entries.approval),
  approvers: v.optional(PolicySchema.entries.approvers),
  idleSuspendSeconds: v.optional(PolicySchema.entries.idleSuspendSeconds),
  cloneWindowSeconds: v.optional(PolicySchema.entries.cloneWindowSeconds),
})
export type PolicyPatch = Partial<Policy>
export const parsePolicyPatch = (x: unknown): PolicyPatch =>
  parseWith(PolicyPatchSchema, x, 'policy') as PolicyPatch

export const HOST_STATES = ['active', 'suspended', 'shredded'] as const
export type HostState = (typeof HOST_STATES)[number]

export interface HostView {
  id: string
  name: string
  state: HostState
  stateReason: string | null
  createdAt: number
  lastSeenAt: number | null
  lastUnlockAt: number | null
  volumes: { name: string; kind: VolumeKind; ref: string | null; createdAt: number }[]
  policy: Policy
  /** Conversions (`unlockd encrypt`) the host reported, latest state per volume. */
  encryption?: EncryptionView[] | undefined
}

export interface TokenView {
  id: string
  host: string
  cidrs: string[]
  createdAt: number
  expiresAt: number
  usedAt: number | null
  revokedAt: number | null
  state: 'unused' | 'used' | 'expired' | 'revoked'
}

export interface AuditEntry {
  seq: number
  at: number
  actor: string
  action: string
  host: string | null
  detail: Record<string, unknown>
  /** HMAC of the entry alone (shared/audit.ts); null only on an entry no server keyed. */
  mac: string | null
  /** Chain position once sealed; null (and empty prevHash/hash) until then. */
  pos: number | null
  prevHash: string
  hash: string
}

// --- human approval and operators ---------------------------------------------------------------

export const APPROVAL_ID_RE = /^ap_[A-Za-z0-9_-]{22}$/
/** A TOTP code (RFC 6238, 6 digits). One-time and short-lived: not a long-lived secret. */
export const TOTP_CODE_RE = /^\d{6}$/
const totpCode = v.pipe(
  v.string('must be a string'),
  v.regex(TOTP_CODE_RE, 'must be a 6-digit TOTP code'),
)
const reasonText = v.pipe(
  v.string('must be a string'),
  v.maxLength(200, 'must be at most 200 characters'),
  v.regex(/^[^\p{Cc}]*$/u, 'must not contain control characters'),
)

/** POST /v1/admin/approvals/:id/approve */
export const ApproveBodySchema = v.strictObject({ code: totpCode })
export type ApproveBody = v.InferOutput<typeof ApproveBodySchema>
export const parseApproveBody = (x: unknown): ApproveBody => parseWith(ApproveBodySchema, x, 'body')

/** POST /v1/admin/approvals/:id/deny (a code is optional: denying only fails closed). */
export const DenyBodySchema = v.strictObject({
  reason: v.optional(reasonText),
  code: v.optional(totpCode),
})
export type DenyBody = v.InferOutput<typeof DenyBodySchema>
export const parseDenyBody = (x: unknown): DenyBody => parseWith(DenyBodySchema, x, 'body')

/** POST /v1/admin/operators; `code` is the caller's own TOTP code (needed once the caller has TOTP). */
export const AddOperatorSchema = v.strictObject({ name, code: v.optional(totpCode) })
export type AddOperatorRequest = v.InferOutput<typeof AddOperatorSchema>
export const parseAddOperator = (x: unknown): AddOperatorRequest =>
  parseWith(AddOperatorSchema, x, 'body')

/** Body of operator changes that only need the caller's TOTP code (remove, TOTP enrollment). */
export const OperatorCodeSchema = v.strictObject({ code: v.optional(totpCode) })
export type OperatorCodeBody = v.InferOutput<typeof OperatorCodeSchema>
export const parseOperatorCode = (x: unknown): OperatorCodeBody =>
  parseWith(OperatorCodeSchema, x, 'body')

export const APPROVAL_STATES = ['pending', 'approved', 'denied', 'expired', 'used'] as const

/** An approval request as operators see it (CLI, admin API, the /approve page). */
export const ApprovalViewSchema = v.object({
  id: v.pipe(v.string(), v.regex(APPROVAL_ID_RE)),
  host: name,
  hostId,
  volumes: v.array(name),
  source: v.pipe(v.string(), v.maxLength(64)),
  bootId,
  rule: v.pipe(v.string(), v.maxLength(100)),
  required: v.pipe(v.number(), v.integer(), v.minValue(1)),
  approvedBy: v.array(name),
  /** `pending` past its expiry is shown as `expired`. */
  state: v.picklist(APPROVAL_STATES),
  createdAt: epochSeconds,
  expiresAt: epochSeconds,
  ageSeconds: v.pipe(v.number(), v.integer()),
  decidedAt: v.nullable(epochSeconds),
  reason: v.nullable(v.string()),
  /** Link to the phone page when the server knows its public URL. */
  url: v.nullable(v.string()),
})
export type ApprovalView = v.InferOutput<typeof ApprovalViewSchema>
export const parseApprovalView = (x: unknown): ApprovalView =>
  parseWith(ApprovalViewSchema, x, 'approval', 'protocol_invalid')
export const parseApprovalList = (x: unknown): { approvals: ApprovalView[] } =>
  parseWith(
    v.object({ approvals: v.array(ApprovalViewSchema) }),
    x,
    'approval list',
    'protocol_invalid',
  )

export const OperatorViewSchema = v.object({
  id: v.string(),
  name,
  createdAt: epochSeconds,
  totp: v.boolean(),
  /** Expiry of the operator's open enrollment (not yet redeemed), if any. */
  enrollmentExpiresAt: v.optional(v.nullable(epochSeconds)),
})
export type OperatorView = v.InferOutput<typeof OperatorViewSchema>
export const parseOperatorList = (x: unknown): { operators: OperatorView[] } =>
  parseWith(
    v.object({ operators: v.array(OperatorViewSchema) }),
    x,
    'operator list',
    'protocol_invalid',
  )

/** A one-time operator enrollment code: `oe_` and 43 base64url characters (256 random bits). */
export const OPERATOR_ENROLL_CODE_RE = /^oe_[A-Za-z0-9_-]{43}$/

/**
 * Answer to `operator add` and to a factor reset by another operator: no secret of the
 * operator, only the one-time code it redeems with `unlockd operator enroll`.
 */
export const OperatorEnrollmentSchema = v.object({
  operator: OperatorViewSchema,
  enrollment: v.object({
    kind: v.picklist(['add', 'reset']),
    code: v.pipe(v.string(), v.regex(OPERATOR_ENROLL_CODE_RE)),
    expiresAt: epochSeconds,
  }),
  /** Pending approval requests whose vote by this operator was voided (reset only). */
  voidedVotes: v.optional(v.array(v.string())),
})
export type OperatorEnrollment = v.InferOutput<typeof OperatorEnrollmentSchema>
export const parseOperatorEnrollment = (x: unknown): OperatorEnrollment =>
  parseWith(OperatorEnrollmentSchema, x, 'operator enrollment', 'protocol_invalid')

/** POST /v1/operator/enroll: the one-time code (a reset's also needs the operator's token). */
export const RedeemEnrollmentSchema = v.strictObject({
  code: v.pipe(
    v.string('must be a string'),
    v.regex(OPERATOR_ENROLL_CODE_RE, 'must be an enrollment code oe_…'),
  ),
})
export const parseRedeemEnrollment = (x: unknown): { code: string } =>
  parseWith(RedeemEnrollmentSchema, x, 'body')

/** Answer to operator add / TOTP enrollment: secrets shown once (token only on add). */
export const OperatorSecretsSchema = v.object({
  operator: OperatorViewSchema,
  token: v.optional(v.pipe(v.string(), v.regex(/^uo_[A-Za-z0-9_-]{43}$/))),
  otpauthUri: v.pipe(v.string(), v.startsWith('otpauth://totp/')),
})
export type OperatorSecrets = v.InferOutput<typeof OperatorSecretsSchema>
export const parseOperatorSecrets = (x: unknown): OperatorSecrets =>
  parseWith(OperatorSecretsSchema, x, 'operator', 'protocol_invalid')
