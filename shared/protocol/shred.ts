/**
 * Operator API messages of crypto-shred, KEK rotation and escrow export, and their
 * single parsers. The host side of the kill switch (watch, report) is in messages.ts.
 */
import * as v from 'valibot'
import { parseEscrowBlob, type EscrowBlob } from '../crypto/blob.ts'
import { TOTP_CODE_RE } from './messages.ts'
import { epochSeconds, hostId, name, parseWith } from './validate.ts'

export const SHRED_LIMITS = { volumes: 64 } as const

const reason = v.pipe(
  v.string('must be a string'),
  v.maxLength(200, 'must be at most 200 characters'),
  v.regex(/^[^\p{Cc}]*$/u, 'must not contain control characters'),
)

/** POST /v1/admin/shred */
export const ShredRequestSchema = v.pipe(
  v.strictObject({
    host: v.optional(name),
    all: v.optional(v.boolean('must be a boolean')),
    volumes: v.optional(
      v.pipe(
        v.array(name),
        v.minLength(1, 'must name at least one volume'),
        v.maxLength(SHRED_LIMITS.volumes),
      ),
    ),
    dryRun: v.optional(v.boolean('must be a boolean'), false),
    code: v.optional(
      v.pipe(v.string('must be a string'), v.regex(TOTP_CODE_RE, 'must be a 6-digit TOTP code')),
    ),
    reason: v.optional(reason),
  }),
  v.check((r) => (r.host !== undefined) !== (r.all === true), 'give either "host" or "all": true'),
  v.check((r) => r.volumes === undefined || r.host !== undefined, '"volumes" goes with "host"'),
)
export interface ShredRequest {
  host?: string | undefined
  all?: boolean | undefined
  volumes?: string[] | undefined
  dryRun: boolean
  code?: string | undefined
  reason?: string | undefined
}
export const parseShredRequest = (x: unknown): ShredRequest =>
  parseWith(ShredRequestSchema, x, 'body') as ShredRequest

export const ShredTargetSchema = v.object({
  host: name,
  id: hostId,
  /** The host itself is shredded (not only some volumes). */
  wholeHost: v.boolean(),
  /** It was shredded before: nothing left to destroy. */
  alreadyShredded: v.boolean(),
  volumes: v.array(name),
})
export type ShredTarget = v.InferOutput<typeof ShredTargetSchema>

export const ShredResultSchema = v.object({
  dryRun: v.boolean(),
  targets: v.array(ShredTargetSchema),
  deletedBlobs: v.pipe(v.number(), v.integer(), v.minValue(0)),
  kek: v.nullable(
    v.object({
      /** `pending`: the rotation failed and is retried at the next start or maintenance tick. */
      status: v.picklist(['rotated', 'unchanged', 'pending']),
      current: v.pipe(v.number(), v.integer()),
      destroyed: v.array(v.pipe(v.number(), v.integer())),
      error: v.nullable(v.string()),
    }),
  ),
  /** What shred cannot reach (shown to the operator). */
  cannot: v.array(v.string()),
})
export type ShredResult = v.InferOutput<typeof ShredResultSchema>
export const parseShredResult = (x: unknown): ShredResult =>
  parseWith(ShredResultSchema, x, 'shred result', 'protocol_invalid')

/** GET /v1/admin/kek and the answer of POST /v1/admin/kek/rotate (with `rotated`). */
export const KekStatusSchema = v.object({
  current: v.pipe(v.number(), v.integer()),
  versions: v.array(v.pipe(v.number(), v.integer())),
  rotatedAt: v.nullable(epochSeconds),
  nextRotationAt: v.nullable(epochSeconds),
  pending: v.nullable(
    v.object({ upTo: v.number(), reasons: v.array(v.string()), since: epochSeconds }),
  ),
  behind: v.pipe(v.number(), v.integer()),
  rotated: v.optional(
    v.object({
      destroyed: v.array(v.pipe(v.number(), v.integer())),
      rewrapped: v.object({ volumes: v.number(), totpSecrets: v.number() }),
    }),
  ),
})
export type KekStatusView = v.InferOutput<typeof KekStatusSchema>
export const parseKekStatus = (x: unknown): KekStatusView =>
  parseWith(KekStatusSchema, x, 'kek status', 'protocol_invalid')

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

/**
 * POST /v1/admin/hosts/:name/escrow-export: a host's escrow blobs with the KEK layer and the
 * host's own recipient removed, so sealed only to the recovery key. It is also the file format
 * `unlockd recover --blob` reads.
 */
export const EscrowExportSchema = v.object({
  format: v.literal('unlockd-escrow-export/v1'),
  host: name,
  hostId,
  exportedAt: epochSeconds,
  volumes: v.array(
    v.object({
      name,
      kind: v.picklist(['luks', 'fscrypt']),
      ref: v.nullable(v.string()),
      /** `kid`s of the blob's recipients: the recovery key(s) only (never the host key). */
      recipients: v.array(v.string()),
      blob,
    }),
  ),
  /** Volumes enrolled without a recovery key: only the host keys open them, so not exported. */
  notExported: v.optional(v.array(name)),
})
export interface EscrowExport {
  format: 'unlockd-escrow-export/v1'
  host: string
  hostId: string
  exportedAt: number
  volumes: {
    name: string
    kind: 'luks' | 'fscrypt'
    ref: string | null
    recipients: string[]
    blob: EscrowBlob
  }[]
  notExported?: string[]
}
export const parseEscrowExport = (x: unknown): EscrowExport =>
  parseWith(EscrowExportSchema, x, 'escrow export', 'protocol_invalid') as EscrowExport

/** Answer of POST /v1/report. */
export const ReportAckSchema = v.object({
  recorded: v.literal(true),
  order: v.picklist(['none', 'shred']),
})
export type ReportAck = v.InferOutput<typeof ReportAckSchema>
