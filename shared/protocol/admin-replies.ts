/**
 * Replies of the admin API that the operator CLI reads, checked before use. Each is validated
 * against a loose schema (the fields the CLI relies on) and returned as the server sent it, so
 * `--json` prints the server's object unchanged, field order and all.
 */
import * as v from 'valibot'
import { cidr, epochSeconds, hostId, name, parseWith } from './validate.ts'
import {
  HOST_STATES,
  OperatorViewSchema,
  AuditHeadSchema,
  VOLUME_KINDS,
  type AuditEntry,
  type HostView,
  type OperatorView,
  type TokenView,
} from './messages.ts'
import { EncryptionViewSchema } from './encryption.ts'
import { PolicySchema } from './policy.ts'
import type { AuditHead, AuditVerdict } from '../audit.ts'
import { TangKeyViewSchema, type TangHostView } from './tang.ts'

/**
 * A reply parser: validates `x` and returns it as sent. No transform here changes a type (the
 * CIDR one only normalises the text), so a value that passes has the schema's output type.
 */
function reply<S extends v.GenericSchema>(
  schema: S,
  what: string,
): (x: unknown) => v.InferOutput<S> {
  return (x) => {
    parseWith(schema, x, what, 'protocol_invalid')
    return x as v.InferOutput<S>
  }
}

const nullableTime = v.nullable(epochSeconds)

const HostViewSchema = v.looseObject({
  id: hostId,
  name,
  state: v.picklist(HOST_STATES),
  stateReason: v.nullable(v.string()),
  createdAt: epochSeconds,
  lastSeenAt: nullableTime,
  lastUnlockAt: nullableTime,
  volumes: v.array(
    v.looseObject({
      name,
      kind: v.picklist(VOLUME_KINDS),
      ref: v.nullable(v.string()),
      createdAt: epochSeconds,
    }),
  ),
  policy: v.looseObject(PolicySchema.entries),
  encryption: v.optional(v.array(EncryptionViewSchema)),
})

const TokenViewSchema = v.looseObject({
  id: v.string(),
  host: name,
  cidrs: v.array(cidr),
  createdAt: epochSeconds,
  expiresAt: epochSeconds,
  usedAt: nullableTime,
  revokedAt: nullableTime,
  state: v.picklist(['unused', 'used', 'expired', 'revoked']),
})

const AuditEntrySchema = v.looseObject({
  seq: v.pipe(v.number(), v.integer()),
  at: epochSeconds,
  actor: v.string(),
  action: v.string(),
  host: v.nullable(v.string()),
  detail: v.record(v.string(), v.unknown()),
  mac: v.nullable(v.string()),
  pos: v.nullable(v.pipe(v.number(), v.integer())),
  prevHash: v.string(),
  hash: v.string(),
})

export const parseHostView: (x: unknown) => HostView = reply(HostViewSchema, 'host')
export const parseHostList: (x: unknown) => { hosts: HostView[] } = reply(
  v.looseObject({ hosts: v.array(HostViewSchema) }),
  'host list',
)
export const parseTokenView: (x: unknown) => TokenView = reply(TokenViewSchema, 'token')
export const parseCreatedToken: (x: unknown) => TokenView & { token: string } = reply(
  v.looseObject({ ...TokenViewSchema.entries, token: v.string() }),
  'token',
)
export const parseTokenList: (x: unknown) => { tokens: TokenView[] } = reply(
  v.looseObject({ tokens: v.array(TokenViewSchema) }),
  'token list',
)
export const parseAuditPage: (x: unknown) => { entries: AuditEntry[] } = reply(
  v.looseObject({ entries: v.array(AuditEntrySchema) }),
  'audit log',
)
const HeadPointSchema = v.looseObject({
  pos: v.number(),
  seq: v.number(),
  hash: v.string(),
})
export const parseAuditHeadReply: (x: unknown) => { head: AuditHead | null } = reply(
  v.looseObject({ head: v.nullable(AuditHeadSchema) }),
  'audit head',
)
export const parseAuditVerdict: (x: unknown) => AuditVerdict = reply(
  v.union([
    v.looseObject({
      ok: v.literal(true),
      count: v.number(),
      sealed: v.number(),
      head: v.nullable(HeadPointSchema),
    }),
    v.looseObject({
      ok: v.literal(false),
      count: v.number(),
      badSeq: v.number(),
      reason: v.string(),
    }),
  ]),
  'audit verdict',
)
export const parseTangHostView: (x: unknown) => TangHostView = reply(
  v.looseObject({
    host: HostViewSchema,
    path: v.string(),
    keys: v.array(TangKeyViewSchema),
    purged: v.array(v.string()),
  }),
  'tang host',
)
export const parseRemovedOperator: (x: unknown) => OperatorView = reply(
  v.looseObject(OperatorViewSchema.entries),
  'operator',
)
