/**
 * Database rows ↔ store records, for both SQL stores. Values arrive as the drivers give them:
 * BIGINT and count(*) may be strings (PostgreSQL; every value we store is a Unix time, counter
 * or step, far below 2^53, so Number() is exact), blobs as Buffer (copied into Uint8Array).
 */
import { UnlockdError } from '../../shared/errors.ts'
import { parsePolicy } from '../../shared/protocol/policy.ts'
import type { AuditEntry } from '../../shared/protocol/messages.ts'
import type {
  ActionRow,
  ApprovalRow,
  EncryptionRow,
  HostRow,
  OperatorRow,
  OperatorEnrollmentRow,
  PasskeyEnrollmentRow,
  PasskeyRow,
  TokenRow,
  VolumeRow,
  WebauthnChallengeRow,
} from './store.ts'

export type Row = Record<string, unknown>

const num = (v: unknown): number => Number(v)
const numOrNull = (v: unknown): number | null => (v === null || v === undefined ? null : Number(v))
const strOrNull = (v: unknown): string | null => (v === null || v === undefined ? null : String(v))
const bytes = (v: unknown): Uint8Array => new Uint8Array(v as Buffer)
const bytesOrNull = (v: unknown): Uint8Array | null =>
  v === null || v === undefined ? null : new Uint8Array(v as Buffer)

function jsonCol<T>(v: unknown, what: string): T {
  try {
    return JSON.parse(String(v)) as T
  } catch (cause) {
    throw new UnlockdError('store_failed', `stored ${what} is not valid JSON`, { cause })
  }
}

export function hostFromRow(r: Row): HostRow {
  return {
    id: String(r['id']),
    name: String(r['name']),
    state: String(r['state']) as HostRow['state'],
    stateReason: strOrNull(r['state_reason']),
    signingJwk: String(r['signing_jwk']),
    sealingJwk: String(r['sealing_jwk']),
    policy: parsePolicy(jsonCol(r['policy'], 'policy'), 'store_failed'),
    createdAt: num(r['created_at']),
    lastSeenAt: numOrNull(r['last_seen_at']),
    lastUnlockAt: numOrNull(r['last_unlock_at']),
    lastBootId: strOrNull(r['last_boot_id']),
    lastSource: strOrNull(r['last_source']),
    tang: Boolean(num(r['tang'])),
  }
}
export function volumeFromRow(r: Row): VolumeRow {
  return {
    hostId: String(r['host_id']),
    name: String(r['name']),
    kind: String(r['kind']) as VolumeRow['kind'],
    ref: strOrNull(r['ref']),
    kekVersion: num(r['kek_version']),
    iv: bytes(r['iv']),
    ct: bytes(r['ct']),
    createdAt: num(r['created_at']),
  }
}
export function tokenFromRow(r: Row): TokenRow {
  return {
    id: String(r['id']),
    hash: String(r['hash']),
    hostName: String(r['host_name']),
    cidrs: jsonCol<string[]>(r['cidrs'], 'token cidrs'),
    createdAt: num(r['created_at']),
    expiresAt: num(r['expires_at']),
    usedAt: numOrNull(r['used_at']),
    usedByHost: strOrNull(r['used_by_host']),
    revokedAt: numOrNull(r['revoked_at']),
    createdBy: String(r['created_by']),
  }
}
export function operatorFromRow(r: Row): OperatorRow {
  return {
    id: String(r['id']),
    name: String(r['name']),
    tokenHash: String(r['token_hash']),
    totpKekVersion: numOrNull(r['totp_kek_version']),
    totpIv: bytesOrNull(r['totp_iv']),
    totpCt: bytesOrNull(r['totp_ct']),
    totpLastStep: numOrNull(r['totp_last_step']),
    createdAt: num(r['created_at']),
    removedAt: numOrNull(r['removed_at']),
  }
}
export function passkeyFromRow(r: Row): PasskeyRow {
  return {
    id: String(r['id']),
    operatorId: String(r['operator_id']),
    publicKey: bytes(r['public_key']),
    counter: num(r['counter']),
    transports: jsonCol<string[]>(r['transports'], 'passkey transports'),
    rpId: String(r['rp_id']),
    createdAt: num(r['created_at']),
    lastUsedAt: numOrNull(r['last_used_at']),
  }
}
export function operatorEnrollmentFromRow(r: Row): OperatorEnrollmentRow {
  return {
    codeHash: String(r['code_hash']),
    operatorId: String(r['operator_id']),
    kind: String(r['kind']) as OperatorEnrollmentRow['kind'],
    createdBy: String(r['created_by']),
    createdAt: num(r['created_at']),
    expiresAt: num(r['expires_at']),
    usedAt: numOrNull(r['used_at']),
  }
}
export function passkeyEnrollmentFromRow(r: Row): PasskeyEnrollmentRow {
  return {
    tokenHash: String(r['token_hash']),
    operatorId: String(r['operator_id']),
    createdAt: num(r['created_at']),
    expiresAt: num(r['expires_at']),
    usedAt: numOrNull(r['used_at']),
  }
}
export function webauthnChallengeFromRow(r: Row): WebauthnChallengeRow {
  return {
    challenge: String(r['challenge']),
    purpose: String(r['purpose']) as WebauthnChallengeRow['purpose'],
    binding: String(r['binding']),
    operatorId: strOrNull(r['operator_id']),
    expiresAt: num(r['expires_at']),
  }
}
export function approvalFromRow(r: Row): ApprovalRow {
  return {
    id: String(r['id']),
    hostId: String(r['host_id']),
    volumes: jsonCol<string[]>(r['volumes'], 'approval volumes'),
    bootId: String(r['boot_id']),
    source: String(r['source']),
    rule: String(r['rule']),
    required: num(r['required']),
    createdAt: num(r['created_at']),
    expiresAt: num(r['expires_at']),
    state: String(r['state']) as ApprovalRow['state'],
    decidedAt: numOrNull(r['decided_at']),
    reason: strOrNull(r['reason']),
    epk: strOrNull(r['epk']),
  }
}
export function actionFromRow(r: Row): ActionRow {
  return {
    id: String(r['id']),
    kind: String(r['kind']),
    host: strOrNull(r['host']),
    payload: jsonCol<Record<string, unknown>>(r['payload'], 'action payload'),
    requesterId: String(r['requester_id']),
    required: num(r['required']),
    eligible: jsonCol<string[]>(r['eligible'], 'action eligible operators'),
    createdAt: num(r['created_at']),
    expiresAt: num(r['expires_at']),
    state: String(r['state']) as ActionRow['state'],
    decidedAt: numOrNull(r['decided_at']),
    reason: strOrNull(r['reason']),
  }
}
export function auditFromRow(r: Row): AuditEntry {
  return {
    seq: num(r['seq']),
    at: num(r['at']),
    actor: String(r['actor']),
    action: String(r['action']),
    host: strOrNull(r['host']),
    detail: jsonCol<Record<string, unknown>>(r['detail'], 'audit detail'),
    mac: strOrNull(r['mac']),
    pos: numOrNull(r['pos']),
    prevHash: String(r['prev_hash']),
    hash: String(r['hash']),
  }
}

/** Column names for partial updates (camelCase field → column); only these can be patched. */
export const HOST_COLS: Readonly<Record<string, string>> = {
  name: 'name',
  state: 'state',
  stateReason: 'state_reason',
  signingJwk: 'signing_jwk',
  sealingJwk: 'sealing_jwk',
  policy: 'policy',
  createdAt: 'created_at',
  lastSeenAt: 'last_seen_at',
  lastUnlockAt: 'last_unlock_at',
  lastBootId: 'last_boot_id',
  lastSource: 'last_source',
  tang: 'tang',
}
export const OPERATOR_COLS: Readonly<Record<string, string>> = {
  name: 'name',
  tokenHash: 'token_hash',
  totpKekVersion: 'totp_kek_version',
  totpIv: 'totp_iv',
  totpCt: 'totp_ct',
  totpLastStep: 'totp_last_step',
  createdAt: 'created_at',
  removedAt: 'removed_at',
}
export const APPROVAL_COLS: Readonly<Record<string, string>> = {
  state: 'state',
  decidedAt: 'decided_at',
  reason: 'reason',
  expiresAt: 'expires_at',
  volumes: 'volumes',
}

/** A record field as a statement parameter (JSON columns, 0/1 booleans, Buffer blobs). */
export function toDbValue(key: string, v: unknown): unknown {
  if (v === undefined) return null
  if (key === 'policy' || key === 'volumes') return JSON.stringify(v)
  if (key === 'tang') return v ? 1 : 0
  if (v instanceof Uint8Array) return Buffer.from(v)
  return v
}

export function encryptionFromRow(r: Row): EncryptionRow {
  return {
    hostId: String(r['host_id']),
    volume: String(r['volume']),
    kind: String(r['kind']) as EncryptionRow['kind'],
    state: String(r['state']) as EncryptionRow['state'],
    phase: String(r['phase']),
    doneBytes: num(r['done_bytes']),
    totalBytes: num(r['total_bytes']),
    bytesPerSecond: numOrNull(r['bytes_per_second']),
    etaSeconds: numOrNull(r['eta_seconds']),
    message: strOrNull(r['message']),
    startedAt: num(r['started_at']),
    updatedAt: num(r['updated_at']),
  }
}
