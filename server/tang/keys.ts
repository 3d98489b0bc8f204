/**
 * Tang hosts: a host that stock clevis reaches through `/tang/NAME/{adv,rec}` instead of
 * an agent. Its Tang key pairs (ES512 signing + ECMR exchange, P-521, made here like
 * tangd-keygen does) are stored as `volumes` rows of kind `tang`, each wrapped with the current
 * KEK under the same AAD as escrow blobs. So KEK rotation re-wraps them, `unlockd shred --host`
 * deletes them with the host's other rows, and a database copy alone opens nothing.
 *
 * Row layout: name `tang-<24 hex>` (from the exchange key's thumbprint; lowercase so it passes
 * the volume-name rules of `shred --volume`), `ref` = `<state>:<exchange S256 thp>:<signing S256
 * thp>` (public, so keys can be listed without unwrapping), `ct` = wrapped
 * `{"v":1,"signing":JWK,"exchange":JWK}`.
 *
 * Rotation follows tangd-rotate-keys: a new pair is advertised and the old ones are retired (not
 * advertised, still answering `/rec` so existing bindings keep working until clients rebind);
 * a later purge deletes the retired pairs.
 */
import { UnlockdError } from '../../shared/errors.ts'
import {
  b64uDecode,
  b64uEncode,
  fromUtf8,
  randomBytes,
  utf8,
  zeroize,
} from '../../shared/crypto/bytes.ts'
import { DEFAULT_POLICY } from '../../shared/protocol/policy.ts'
import type {
  AddHostRequest,
  TangHostView,
  TangKeyState,
  TangKeyView,
} from '../../shared/protocol/tang.ts'
import {
  generateTangKeys,
  jwkThumbprint,
  publicJwk,
  type TangKeyPair,
} from '../../shared/tang/adv.ts'
import { parseEcPrivateJwk } from '../../shared/tang/mcr.ts'
import type { ServerDeps } from '../context.ts'
import { hostView, requireHost } from '../escrow/admin.ts'
import { audit, type Actor } from '../escrow/audit-log.ts'
import { blobAad, unwrap, wrap } from '../keys/kek-wrap.ts'
import type { HostRow, StoreTx, VolumeRow } from '../store/store.ts'

export const TANG_KIND = 'tang' as const
const REF_RE = /^(advertised|retired):([A-Za-z0-9_-]{43}):([A-Za-z0-9_-]{43})$/

/** The URL path of a host's Tang base URL (clevis config `{"url":"https://server<path>"}`). */
export function tangPath(hostName: string): string {
  return `/tang/${hostName}`
}

/** A pair with the public facts needed to index it. */
export interface TangKeyMaterial {
  pair: TangKeyPair
  exchangeThp: string
  signingThp: string
}

export async function makeTangKeys(): Promise<TangKeyMaterial> {
  const pair = generateTangKeys()
  return {
    pair,
    exchangeThp: await jwkThumbprint(publicJwk(pair.exchange), 'S256'),
    signingThp: await jwkThumbprint(publicJwk(pair.signing), 'S256'),
  }
}

export function rowNameFor(exchangeThp: string): string {
  const bytes = b64uDecode(exchangeThp)
  if (bytes === undefined) throw new RangeError('thumbprint must be base64url')
  return `tang-${Buffer.from(bytes.subarray(0, 12)).toString('hex')}`
}

function refOf(state: TangKeyState, exchangeThp: string, signingThp: string): string {
  return `${state}:${exchangeThp}:${signingThp}`
}

/** Public facts of a stored pair, from its row alone (no unwrapping). */
export function keyViewOf(row: VolumeRow): TangKeyView {
  const m = REF_RE.exec(row.ref ?? '')
  if (row.kind !== TANG_KIND || !m)
    throw new UnlockdError(
      'store_failed',
      `tang key row ${row.name} of host ${row.hostId} is malformed`,
    )
  return {
    row: row.name,
    state: m[1] as TangKeyState,
    exchange: m[2] as string,
    signing: m[3] as string,
    createdAt: row.createdAt,
  }
}

export function tangRows(rows: readonly VolumeRow[]): VolumeRow[] {
  return rows.filter((r) => r.kind === TANG_KIND)
}

function sortKeys(keys: TangKeyView[]): TangKeyView[] {
  return keys.sort(
    (a, b) =>
      b.createdAt - a.createdAt ||
      (a.state === b.state ? a.row.localeCompare(b.row) : a.state === 'advertised' ? -1 : 1),
  )
}

/** Wrap a pair with the current KEK, exactly like an escrow blob (server/escrow/enroll.ts). */
export function wrapTangRow(
  deps: ServerDeps,
  hostId: string,
  keys: TangKeyMaterial,
  state: TangKeyState,
  createdAt: number,
): VolumeRow {
  const version = deps.keystore.currentVersion
  const name = rowNameFor(keys.exchangeThp)
  const plain = utf8(
    JSON.stringify({ v: 1, signing: keys.pair.signing, exchange: keys.pair.exchange }),
  )
  try {
    const { iv, ct } = wrap(deps.keystore.kek(version), plain, blobAad(hostId, name, version))
    return {
      hostId,
      name,
      kind: TANG_KIND,
      ref: refOf(state, keys.exchangeThp, keys.signingThp),
      kekVersion: version,
      iv,
      ct,
      createdAt,
    }
  } finally {
    zeroize(plain)
  }
}

/** Unwrap and validate a stored pair (private keys: keep it in memory only as long as needed). */
export function unwrapTangRow(deps: ServerDeps, row: VolumeRow): TangKeyPair {
  const plain = unwrap(
    deps.keystore.kek(row.kekVersion),
    row.iv,
    row.ct,
    blobAad(row.hostId, row.name, row.kekVersion),
  )
  try {
    const o = JSON.parse(fromUtf8(plain)) as { v?: unknown; signing?: unknown; exchange?: unknown }
    if (o.v !== 1) throw new Error('unknown version')
    return {
      signing: parseEcPrivateJwk(o.signing, 'store_failed'),
      exchange: parseEcPrivateJwk(o.exchange, 'store_failed'),
    }
  } catch (cause) {
    if (cause instanceof UnlockdError) throw cause
    throw new UnlockdError('store_failed', `tang key row ${row.name} does not hold a key pair`, {
      cause,
    })
  } finally {
    zeroize(plain)
  }
}

async function requireTangHost(t: StoreTx, name: string): Promise<HostRow> {
  const h = await requireHost(t, name)
  if (!h.tang)
    throw new UnlockdError(
      'conflict',
      `host ${name} is an agent host, not a Tang host (add one with \`unlockd host add NAME --tang\`)`,
    )
  if (h.state === 'shredded') throw new UnlockdError('host_shredded', `host ${name} was shredded`)
  return h
}

async function tangView(t: StoreTx, h: HostRow, purged: string[] = []): Promise<TangHostView> {
  const rows = tangRows(await t.listVolumes(h.id))
  return {
    host: await hostView(t, h),
    path: tangPath(h.name),
    keys: sortKeys(rows.map(keyViewOf)),
    purged,
  }
}

/**
 * `unlockd host add NAME --tang`: a host with a fresh Tang key pair, the default policy and the
 * given unlock networks. Its id is random (there is no host key to take a thumbprint of).
 */
export async function addTangHost(
  deps: ServerDeps,
  actor: Actor,
  req: AddHostRequest,
): Promise<TangHostView> {
  const keys = await makeTangKeys() // P-521 key generation stays outside the write transaction
  return deps.store.tx(async (t) => {
    const live = await t.getHostByName(req.name)
    if (live && live.state !== 'shredded')
      throw new UnlockdError(
        'host_exists',
        `host ${req.name} already exists; shred it first or choose another name`,
      )
    const now = deps.now()
    const id = b64uEncode(randomBytes(32))
    const host: HostRow = {
      id,
      name: req.name,
      state: 'active',
      stateReason: null,
      // No agent keys: requests signed "as" this host can never verify (parsing '{}' fails).
      signingJwk: '{}',
      sealingJwk: '{}',
      policy: { ...DEFAULT_POLICY, cidrs: req.cidrs },
      createdAt: now,
      // Added counts as seen, like an enrollment, so idle rules start from now.
      lastSeenAt: now,
      lastUnlockAt: null,
      lastBootId: null,
      lastSource: null,
      tang: true,
    }
    await t.insertHost(host)
    await t.upsertVolume(wrapTangRow(deps, id, keys, 'advertised', now))
    await audit(t, now, actor, 'host.add', req.name, {
      hostId: id,
      tang: true,
      cidrs: req.cidrs,
      exchange: keys.exchangeThp,
      signing: keys.signingThp,
    })
    return tangView(t, host)
  })
}

export function showTangHost(deps: ServerDeps, name: string): Promise<TangHostView> {
  return deps.store.tx(async (t) => tangView(t, await requireTangHost(t, name)))
}

/**
 * `unlockd host rotate-tang NAME`: advertise a new pair and retire the advertised ones (they
 * still answer /rec, so existing bindings keep working until `clevis luks regen`).
 */
export async function rotateTangKeys(
  deps: ServerDeps,
  actor: Actor,
  name: string,
): Promise<TangHostView> {
  const keys = await makeTangKeys()
  return deps.store.tx(async (t) => {
    const h = await requireTangHost(t, name)
    const now = deps.now()
    const retired: string[] = []
    for (const row of tangRows(await t.listVolumes(h.id))) {
      const k = keyViewOf(row)
      if (k.state !== 'advertised') continue
      // Only `ref` changes: the wrapped pair (and its AAD) stays as it is.
      await t.upsertVolume({ ...row, ref: refOf('retired', k.exchange, k.signing) })
      retired.push(k.exchange)
    }
    await t.upsertVolume(wrapTangRow(deps, h.id, keys, 'advertised', now))
    await audit(t, now, actor, 'tang.rotate', h.name, {
      exchange: keys.exchangeThp,
      signing: keys.signingThp,
      retired,
    })
    return tangView(t, h)
  })
}

/**
 * `unlockd host rotate-tang NAME --purge`: delete the retired pairs. Bindings made to them can
 * no longer be decrypted. The database is scrubbed afterwards so the deleted cells and WAL
 * frames go too (for a crypto-shred with KEK destruction use `unlockd shred`).
 */
export async function purgeTangKeys(
  deps: ServerDeps,
  actor: Actor,
  name: string,
): Promise<TangHostView> {
  const view = await deps.store.tx(async (t) => {
    const h = await requireTangHost(t, name)
    const now = deps.now()
    const retired = tangRows(await t.listVolumes(h.id))
      .map(keyViewOf)
      .filter((k) => k.state === 'retired')
    if (retired.length > 0) {
      await t.deleteVolumes(
        h.id,
        retired.map((k) => k.row),
      )
      await audit(t, now, actor, 'tang.purge', h.name, {
        rows: retired.map((k) => k.row),
        exchange: retired.map((k) => k.exchange),
      })
    }
    return tangView(
      t,
      h,
      retired.map((k) => k.row),
    )
  })
  if (view.purged.length > 0) await deps.store.scrub()
  return view
}
