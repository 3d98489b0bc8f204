/**
 * Wire messages of protocol v1 and their single parsers. Handlers and the agent use only the
 * values these return. See shared/protocol/README.md for the exchange.
 */
import * as v from 'valibot'
import { parseEscrowBlob, type EscrowBlob } from '../crypto/blob.ts'
import { parseSealingPublicKey, parseSigningPublicKey, type PublicOkpJwk } from '../crypto/keys.ts'
import { isErrorCode, type UnlockdErrorCode } from '../errors.ts'
import type { EncryptionView } from './encryption.ts'
import { PolicySchema, type Policy } from './policy.ts'
import { bootId, cidr, epochSeconds, hostId, name, nonce, parseWith } from './validate.ts'

export const PROTOCOL_VERSION = 1

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
  v: v.literal(PROTOCOL_VERSION),
  name,
  signingKey,
  sealingKey,
  volumes: volumeList,
  iat: epochSeconds,
})
export interface EnrollPayload {
  v: 1
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

export const UnlockPayloadSchema = v.strictObject({
  v: v.literal(PROTOCOL_VERSION),
  host: hostId,
  /** Volume names to release; empty means all of the host's volumes. */
  volumes: v.pipe(v.array(name), v.maxLength(64)),
  nonce,
  bootId,
  iat: epochSeconds,
})
export type UnlockPayload = v.InferOutput<typeof UnlockPayloadSchema>
export const parseUnlockPayload = (x: unknown): UnlockPayload =>
  parseWith(UnlockPayloadSchema, x, 'unlock payload', 'protocol_invalid')

/** Long-poll for an approval (signed, single-use nonce like unlock). */
export const PollPayloadSchema = v.strictObject({
  v: v.literal(PROTOCOL_VERSION),
  host: hostId,
  approval: v.pipe(v.string(), v.regex(/^ap_[A-Za-z0-9_-]{22}$/, 'must be an approval id')),
  nonce,
  bootId,
  iat: epochSeconds,
})
export type PollPayload = v.InferOutput<typeof PollPayloadSchema>
export const parsePollPayload = (x: unknown): PollPayload =>
  parseWith(PollPayloadSchema, x, 'poll payload', 'protocol_invalid')

/** Add volumes to an already enrolled host (host-signed, no token needed). */
export const AddVolumesPayloadSchema = v.strictObject({
  v: v.literal(PROTOCOL_VERSION),
  host: hostId,
  volumes: volumeList,
  nonce,
  iat: epochSeconds,
})
export type AddVolumesPayload = {
  v: 1
  host: string
  volumes: VolumeEnrollment[]
  nonce: string
  iat: number
}
export const parseAddVolumesPayload = (x: unknown): AddVolumesPayload =>
  parseWith(AddVolumesPayloadSchema, x, 'volumes payload', 'protocol_invalid') as AddVolumesPayload

/** Watch (kill-switch channel) and report payloads. */
export const WatchPayloadSchema = v.strictObject({
  v: v.literal(PROTOCOL_VERSION),
  host: hostId,
  nonce,
  bootId,
  iat: epochSeconds,
})
export type WatchPayload = v.InferOutput<typeof WatchPayloadSchema>
export const parseWatchPayload = (x: unknown): WatchPayload =>
  parseWith(WatchPayloadSchema, x, 'watch payload', 'protocol_invalid')

export const ReportPayloadSchema = v.strictObject({
  v: v.literal(PROTOCOL_VERSION),
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
})
export type EnrollResponse = v.InferOutput<typeof EnrollResponseSchema>
export const parseEnrollResponse = (x: unknown): EnrollResponse =>
  parseWith(EnrollResponseSchema, x, 'enroll response', 'protocol_invalid')

export const ReleasedVolumeSchema = v.object({
  name,
  kind: v.picklist(['luks', 'fscrypt']),
  blob,
})
export type ReleasedVolume = { name: string; kind: 'luks' | 'fscrypt'; blob: EscrowBlob }

export const ApprovalTicketSchema = v.object({
  id: v.pipe(v.string(), v.regex(/^ap_[A-Za-z0-9_-]{22}$/)),
  expiresAt: epochSeconds,
  rule: v.pipe(v.string(), v.maxLength(100)),
})
export type ApprovalTicket = v.InferOutput<typeof ApprovalTicketSchema>

export const UnlockResponseSchema = v.variant('status', [
  v.object({ status: v.literal('released'), host: hostId, volumes: v.array(ReleasedVolumeSchema) }),
  v.object({
    status: v.literal('approval_required'),
    host: hostId,
    approval: ApprovalTicketSchema,
  }),
  v.object({ status: v.literal('pending'), host: hostId, approval: ApprovalTicketSchema }),
])
export type UnlockResponse =
  | { status: 'released'; host: string; volumes: ReleasedVolume[] }
  | { status: 'approval_required' | 'pending'; host: string; approval: ApprovalTicket }
export const parseUnlockResponse = (x: unknown): UnlockResponse =>
  parseWith(UnlockResponseSchema, x, 'unlock response', 'protocol_invalid') as UnlockResponse

export const WatchResponseSchema = v.object({
  order: v.picklist(['none', 'shred']),
  volumes: v.array(name),
})
export type WatchResponse = v.InferOutput<typeof WatchResponseSchema>
export const parseWatchResponse = (x: unknown): WatchResponse =>
  parseWith(WatchResponseSchema, x, 'watch response', 'protocol_invalid')

/** Error body of every 4xx/5xx: a stable code, a sentence, and optionally the deciding rule. */
export interface ErrorBody {
  error: UnlockdErrorCode
  message: string
  rule?: string
}
export function parseErrorBody(x: unknown): ErrorBody | undefined {
  if (typeof x !== 'object' || x === null) return undefined
  const o = x as Record<string, unknown>
  if (!isErrorCode(o['error']) || typeof o['message'] !== 'string') return undefined
  const out: ErrorBody = { error: o['error'], message: o['message'].slice(0, 500) }
  if (typeof o['rule'] === 'string') out.rule = o['rule'].slice(0, 100)
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
  prevHash: string
  hash: string
}

// --- human approval and operators (issue 4) ---------------------------------------------------

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
})
export type OperatorView = v.InferOutput<typeof OperatorViewSchema>
export const parseOperatorList = (x: unknown): { operators: OperatorView[] } =>
  parseWith(
    v.object({ operators: v.array(OperatorViewSchema) }),
    x,
    'operator list',
    'protocol_invalid',
  )

/** Answer to operator add / TOTP enrollment: secrets shown once (token only on add). */
export const OperatorSecretsSchema = v.object({
  operator: OperatorViewSchema,
  token: v.optional(v.pipe(v.string(), v.regex(/^uo_[A-Za-z0-9_-]{43}$/))),
  otpauthUri: v.pipe(v.string(), v.startsWith('otpauth://totp/')),
})
export type OperatorSecrets = v.InferOutput<typeof OperatorSecretsSchema>
export const parseOperatorSecrets = (x: unknown): OperatorSecrets =>
  parseWith(OperatorSecretsSchema, x, 'operator', 'protocol_invalid')
