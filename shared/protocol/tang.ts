/**
 * Operator API messages for hosts served through the Tang endpoints, and their single
 * parsers. The Tang wire protocol itself (adv JWS, ECMR JWKs) lives in shared/tang/.
 */
import * as v from 'valibot'
import { cidr, name, parseWith } from './validate.ts'
import type { HostView } from './messages.ts'

/** POST /v1/admin/hosts: only Tang hosts are added by an operator (agents enroll with a token). */
export const AddHostRequestSchema = v.strictObject({
  name,
  tang: v.literal(
    true,
    'must be true: only Tang hosts are added by an operator; agent hosts enroll with a token',
  ),
  cidrs: v.optional(v.pipe(v.array(cidr, 'must be an array of CIDRs'), v.maxLength(64)), []),
})
export type AddHostRequest = v.InferOutput<typeof AddHostRequestSchema>
export const parseAddHostRequest = (x: unknown): AddHostRequest =>
  parseWith(AddHostRequestSchema, x, 'body')

/** POST /v1/admin/hosts/:name/tang/rotate. `purge` deletes retired keys instead of rotating. */
export const RotateTangRequestSchema = v.strictObject({
  purge: v.optional(v.boolean('must be a boolean'), false),
})
export type RotateTangRequest = v.InferOutput<typeof RotateTangRequestSchema>
export const parseRotateTangRequest = (x: unknown): RotateTangRequest =>
  parseWith(RotateTangRequestSchema, x, 'body')

export const TANG_KEY_STATES = ['advertised', 'retired'] as const
export type TangKeyState = (typeof TANG_KEY_STATES)[number]

const thp = v.pipe(v.string(), v.regex(/^[A-Za-z0-9_-]{43}$/, 'must be an S256 JWK thumbprint'))

/** One Tang key pair of a host: public thumbprints only, never key material. */
export const TangKeyViewSchema = v.object({
  /** The `volumes` row holding the wrapped pair (shred it with `--volume`). */
  row: name,
  state: v.picklist(TANG_KEY_STATES),
  /** S256 thumbprint of the exchange key: the `kid` clevis puts in its JWE and POSTs to /rec. */
  exchange: thp,
  /** S256 thumbprint of the signing key (clevis `thp`, `/adv/{thp}`). */
  signing: thp,
  createdAt: v.pipe(v.number(), v.integer()),
})
export type TangKeyView = v.InferOutput<typeof TangKeyViewSchema>

/** A Tang host: its URL path and its keys, newest first. */
export interface TangHostView {
  host: HostView
  /** Path of the Tang base URL on this server: clevis gets `{"url":"<server URL><path>"}`. */
  path: string
  keys: TangKeyView[]
  /** Rows deleted by a purge (empty otherwise). */
  purged: string[]
}
