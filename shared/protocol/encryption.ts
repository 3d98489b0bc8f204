/**
 * Progress of `unlockd encrypt` as the agent reports it to the server (POST /v1/encryption,
 * host-signed, single-use nonce) and as operators see it (`unlockd hosts`, `host show`): one
 * state per host and volume, replaced by every report. The message never carries key material.
 */
import * as v from 'valibot'
import { epochSeconds, hostId, name, nonce, parseWith } from './validate.ts'
import { PROTOCOL_VERSION } from './messages.ts'
import { formatBytes, formatEtaShort } from '../util/bytes.ts'

export const ENCRYPTION_EVENTS = ['started', 'progress', 'done', 'failed'] as const
export type EncryptionEvent = (typeof ENCRYPTION_EVENTS)[number]
export const ENCRYPTION_KINDS = ['luks', 'fscrypt'] as const

const bytes = v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(Number.MAX_SAFE_INTEGER))
const seconds = v.nullable(v.pipe(v.number(), v.minValue(0), v.maxValue(1e9)))

export const EncryptionPayloadSchema = v.strictObject({
  v: v.literal(PROTOCOL_VERSION),
  host: hostId,
  nonce,
  iat: epochSeconds,
  volume: name,
  kind: v.picklist(ENCRYPTION_KINDS),
  event: v.picklist(ENCRYPTION_EVENTS),
  /** What is being done now, e.g. "encrypting" or "copying". */
  phase: v.pipe(v.string(), v.maxLength(40)),
  doneBytes: bytes,
  totalBytes: bytes,
  bytesPerSecond: v.nullable(v.pipe(v.number(), v.minValue(0))),
  etaSeconds: seconds,
  /** Why it failed (an error sentence), or null. */
  message: v.nullable(v.pipe(v.string(), v.maxLength(500))),
})
export type EncryptionPayload = v.InferOutput<typeof EncryptionPayloadSchema>
export const parseEncryptionPayload = (x: unknown): EncryptionPayload =>
  parseWith(EncryptionPayloadSchema, x, 'encryption payload', 'protocol_invalid')

export type EncryptionState = 'running' | 'done' | 'failed'
export const stateOf = (e: EncryptionEvent): EncryptionState =>
  e === 'done' ? 'done' : e === 'failed' ? 'failed' : 'running'

/** The latest state of one volume's conversion, as the admin API shows it. */
export interface EncryptionView {
  volume: string
  kind: 'luks' | 'fscrypt'
  state: EncryptionState
  phase: string
  doneBytes: number
  totalBytes: number
  bytesPerSecond: number | null
  etaSeconds: number | null
  message: string | null
  startedAt: number
  updatedAt: number
}

export const EncryptionViewSchema = v.looseObject({
  volume: name,
  kind: v.picklist(ENCRYPTION_KINDS),
  state: v.picklist(['running', 'done', 'failed']),
  phase: v.string(),
  doneBytes: bytes,
  totalBytes: bytes,
  bytesPerSecond: v.nullable(v.number()),
  etaSeconds: v.nullable(v.number()),
  message: v.nullable(v.string()),
  startedAt: epochSeconds,
  updatedAt: epochSeconds,
})

/** Fraction done in [0, 1] (1 once done). */
export function encryptionRatio(
  e: Pick<EncryptionView, 'state' | 'doneBytes' | 'totalBytes'>,
): number {
  if (e.state === 'done') return 1
  if (e.totalBytes <= 0) return 0
  return Math.min(1, Math.max(0, e.doneBytes / e.totalBytes))
}

/** "encrypting data 43% (1.2 GiB of 2.8 GiB, ETA 5m)", "encrypted", "encryption failed: ...". */
export function encryptionSummary(e: EncryptionView): string {
  if (e.state === 'done') return 'encrypted'
  if (e.state === 'failed') return `encryption failed${e.message ? `: ${e.message}` : ''}`
  const what = e.kind === 'luks' ? 'encrypting data' : `encrypting data (${e.phase})`
  if (e.totalBytes <= 0) return `${what}, starting`
  const pct = Math.floor(encryptionRatio(e) * 100)
  const eta = e.etaSeconds === null ? '' : `, ETA ${formatEtaShort(e.etaSeconds)}`
  return `${what} ${pct}% (${formatBytes(e.doneBytes)} of ${formatBytes(e.totalBytes)}${eta})`
}
