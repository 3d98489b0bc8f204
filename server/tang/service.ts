/**
 * The Tang protocol for Tang hosts: `GET /tang/NAME/adv[/THP]` and
 * `POST /tang/NAME/rec/KID`, byte-compatible with tangd so stock clevis works, with unlockd's
 * per-host policy in front of every recovery.
 *
 * Each /rec is a release: the host's policy is evaluated (state, validity, source CIDRs,
 * maxUnlocks, approval rules) and the decision is recorded and audited in one transaction,
 * exactly as for an agent's unlock. Only then does the server do the McCallum-Relyea step. The
 * server never sees the clevis secret (the request is a blinded point), so "release" here means
 * "answered the exchange".
 *
 * Approval rules: clevis cannot wait for a 202, but its boot-time loops retry. So a /rec that
 * needs approval opens an approval request (one at a time per host and source address) and is
 * refused with `approval_pending`; once an operator approves it, the next /rec from the same
 * source address within `approvalTtl` spends it (the operator approved what it saw, including
 * the source). A /rec from elsewhere does not spend it. Tang hosts have no boot id; their events carry the fixed boot id `tang-clevis`.
 *
 * The ECMR step runs on the system libcrypto when it can (./ecmr-libcrypto.ts: one nistp521
 * multiplication, ~20x less CPU than Node's bundled OpenSSL), else on node:crypto
 * (./ecmr-node.ts: half the CPU of the WebCrypto path in shared/tang/mcr.ts).
 *
 * Key cache: unwrapping a pair and preparing it (P-521 imports, thumbprints, the signed
 * advertisement) costs tens of milliseconds, so prepared keys are kept per host. The cache
 * never decides anything: every request re-reads the host and its key rows inside its
 * transaction and uses the cached keys only if they were built from exactly those rows
 * (name, KEK version, IV, state). A shred (rows deleted), a rotation or purge (rows changed), a
 * KEK rotation (rows re-wrapped) therefore invalidate it deterministically, in this and in
 * every other server instance; suspension is a host-state check that runs before any key is
 * used. A local shred also evicts the entry at once, and idle entries are dropped after
 * {@link IDLE_EVICT_MS}, so private keys do not linger in memory.
 */
import { UnlockdError } from '../../shared/errors.ts'
import { b64uEncode } from '../../shared/crypto/bytes.ts'
import type { UnlockPayload } from '../../shared/protocol/messages.ts'
import {
  buildAdvertisement,
  serializeAdvertisement,
  THUMBPRINT_ALGS,
  type AdvertisementForm,
  type TangAdvertisement,
  jwkThumbprint,
  publicJwk,
} from '../../shared/tang/adv.ts'
import type { EcmrReplyJwk, EcmrServer, EcPrivateJwk } from '../../shared/tang/mcr.ts'
import type { ServerDeps } from '../context.ts'
import { suspendIdle } from '../approvals/liveness.ts'
import { openApproval } from '../escrow/approval-seam.ts'
import { decide, historyRow, PolicyDenied, recordDenial, recordRelease } from '../escrow/release.ts'
import { IDLE_SUSPEND_RULE } from '../policy/idle.ts'
import { audit } from '../escrow/audit-log.ts'
import { deny } from '../store/denial.ts'
import type { HostRow, StoreTx, VolumeRow } from '../store/store.ts'
import { createFastEcmrServer } from './ecmr-libcrypto.ts'
import { checkRecoveryRequest } from './ecmr-node.ts'
import { keyViewOf, tangRows, unwrapTangRow } from './keys.ts'

/** Boot id recorded for Tang releases and approvals (clevis sends none). */
export const TANG_BOOT_ID = 'tang-clevis'
/** Prepared hosts kept at most (least recently used dropped first). */
export const CACHE_MAX_HOSTS = 4096
/** A host's prepared keys are dropped after this long without a request. */
export const IDLE_EVICT_MS = 10 * 60 * 1000
const MAX_ATTEMPTS = 4

interface PreparedKey {
  row: string
  advertised: boolean
  exchangeThp: string
  ecmr: EcmrServer
}

interface PreparedHost {
  hostId: string
  digest: string
  /** Every exchange key (advertised and retired) under every thumbprint hash tang accepts. */
  byKid: Map<string, PreparedKey>
  /** Every signing key under every thumbprint hash, for /adv/{thp}. */
  signerByThp: Map<string, EcPrivateJwk>
  /** The default advertisement; undefined when no pair is advertised. */
  adv: TangAdvertisement | undefined
  advertisedSigning: EcPrivateJwk[]
  advertisedExchange: EcPrivateJwk[]
  /** Advertisements with an extra (possibly retired) signer, built on demand. */
  advByThp: Map<string, Promise<TangAdvertisement>>
  lastUsed: number
  onShred: () => void
}

/** What a row set looks like to the cache: anything that changes the keys changes this. */
function digestOf(rows: readonly VolumeRow[]): string {
  return rows
    .map((r) => `${r.name}|${r.kekVersion}|${b64uEncode(r.iv)}|${r.ref ?? ''}`)
    .sort()
    .join(',')
}

/**
 * Parse a /rec body and apply tangd's checks (src/tangd.c) before the policy decision, so a
 * malformed request never counts as a release. The ECMR step checks again.
 */
function checkRecBody(text: string): unknown {
  let body: unknown
  try {
    body = JSON.parse(text) as unknown
  } catch (cause) {
    throw new UnlockdError('bad_request', 'recovery request is not JSON', { cause })
  }
  checkRecoveryRequest(body)
  return body
}

const KID_RE = /^[A-Za-z0-9_-]{1,128}$/

function notFound(what: string): UnlockdError {
  return new UnlockdError('not_found', what)
}

type RecAttempt =
  { kind: 'rebuild'; hostId: string; rows: VolumeRow[] } | { kind: 'go'; key: PreparedKey }

export class TangService {
  readonly #deps: ServerDeps
  readonly #cache = new Map<string, PreparedHost>()
  readonly #building = new Map<string, Promise<PreparedHost>>()

  constructor(deps: ServerDeps) {
    this.#deps = deps
  }

  /** Number of hosts with prepared keys in memory (tests, diagnostics). */
  get cachedHosts(): number {
    return this.#cache.size
  }

  /** Drop every prepared key (server shutdown, tests). */
  clear(): void {
    for (const id of [...this.#cache.keys()]) this.#evict(id)
  }

  #evict(hostId: string): void {
    const e = this.#cache.get(hostId)
    if (e === undefined) return
    this.#cache.delete(hostId)
    this.#deps.events.off(`shred:${hostId}`, e.onShred)
  }

  /** The prepared entry if it was built from exactly `rows`; refreshes its LRU position. */
  #lookup(hostId: string, rows: readonly VolumeRow[]): PreparedHost | undefined {
    const e = this.#cache.get(hostId)
    if (e === undefined) return undefined
    if (e.digest !== digestOf(rows)) {
      this.#evict(hostId) // stale: rotated, purged, re-wrapped or shredded
      return undefined
    }
    const now = Date.now()
    e.lastUsed = now
    this.#cache.delete(hostId)
    this.#cache.set(hostId, e)
    this.#sweep(now)
    return e
  }

  #sweep(now: number): void {
    for (const [id, e] of this.#cache) {
      if (this.#cache.size <= CACHE_MAX_HOSTS && now - e.lastUsed < IDLE_EVICT_MS) break // oldest first
      this.#evict(id)
    }
  }

  /** Unwrap and prepare `rows` (a snapshot read in a transaction); coalesces concurrent builds. */
  #prepare(hostId: string, rows: VolumeRow[]): Promise<PreparedHost> {
    const digest = digestOf(rows)
    const key = `${hostId}\n${digest}`
    let p = this.#building.get(key)
    if (p === undefined) {
      p = this.#build(hostId, rows, digest).finally(() => this.#building.delete(key))
      this.#building.set(key, p)
    }
    return p
  }

  async #build(hostId: string, rows: VolumeRow[], digest: string): Promise<PreparedHost> {
    const byKid = new Map<string, PreparedKey>()
    const signerByThp = new Map<string, EcPrivateJwk>()
    const advertisedSigning: EcPrivateJwk[] = []
    const advertisedExchange: EcPrivateJwk[] = []
    // Newest first, so a (practically impossible) thumbprint collision resolves to the newest key.
    const ordered = [...rows].sort(
      (a, b) => b.createdAt - a.createdAt || a.name.localeCompare(b.name),
    )
    for (const row of ordered) {
      const view = keyViewOf(row)
      const pair = unwrapTangRow(this.#deps, row)
      const advertised = view.state === 'advertised'
      const prepared: PreparedKey = {
        row: row.name,
        advertised,
        exchangeThp: view.exchange,
        ecmr: await createFastEcmrServer(pair.exchange),
      }
      for (const alg of THUMBPRINT_ALGS) {
        const kid = await jwkThumbprint(publicJwk(pair.exchange), alg)
        if (!byKid.has(kid)) byKid.set(kid, prepared)
        const thp = await jwkThumbprint(publicJwk(pair.signing), alg)
        if (!signerByThp.has(thp)) signerByThp.set(thp, pair.signing)
      }
      if (advertised) {
        advertisedSigning.push(pair.signing)
        advertisedExchange.push(pair.exchange)
      }
    }
    const adv =
      advertisedSigning.length === 0
        ? undefined
        : await buildAdvertisement({ signing: advertisedSigning, exchange: advertisedExchange })
    const entry: PreparedHost = {
      hostId,
      digest,
      byKid,
      signerByThp,
      adv,
      advertisedSigning,
      advertisedExchange,
      advByThp: new Map(),
      lastUsed: Date.now(),
      onShred: () => this.#evict(hostId),
    }
    // Another build for newer rows may have finished first; the newest wins (both are validated per request).
    this.#evict(hostId)
    this.#cache.set(hostId, entry)
    this.#deps.events.on(`shred:${hostId}`, entry.onShred)
    this.#sweep(Date.now())
    return entry
  }

  /** A live Tang host by name, or undefined (unknown, agent host, or shredded). */
  async #liveHost(t: StoreTx, name: string): Promise<HostRow | undefined> {
    const h = await t.getHostByName(name)
    return h === undefined || !h.tang || h.state === 'shredded' ? undefined : h
  }

  /**
   * `GET /tang/NAME/adv` (and `/adv/THP`): the signed advertisement. Public like tangd's, but
   * 404 for unknown and shredded hosts, and for a THP that is not one of the host's signing keys.
   */
  async advertisement(
    hostName: string,
    thp?: string,
    form: AdvertisementForm = 'tangd',
  ): Promise<string> {
    if (thp !== undefined && !KID_RE.test(thp)) throw notFound('no such signing key')
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const snap = await this.#deps.store.tx(async (t) => {
        const h = await this.#liveHost(t, hostName)
        if (h === undefined) return undefined
        return { hostId: h.id, rows: tangRows(await t.listVolumes(h.id)) }
      })
      if (snap === undefined) throw notFound(`no Tang host named ${hostName}`)
      const e =
        this.#lookup(snap.hostId, snap.rows) ?? (await this.#prepare(snap.hostId, snap.rows))
      if (e.digest !== digestOf(snap.rows)) continue
      if (e.adv === undefined) throw notFound(`Tang host ${hostName} advertises no keys`)
      if (thp === undefined) return serializeAdvertisement(e.adv, form)
      const signer = e.signerByThp.get(thp)
      if (signer === undefined) throw notFound('no such signing key')
      let p = e.advByThp.get(thp)
      if (p === undefined) {
        p = buildAdvertisement({
          signing: e.advertisedSigning,
          exchange: e.advertisedExchange,
          extraSigning: [signer],
        })
        p.catch(() => e.advByThp.delete(thp))
        e.advByThp.set(thp, p)
      }
      return serializeAdvertisement(await p, form)
    }
    throw new UnlockdError('internal', 'tang keys kept changing while building the advertisement')
  }

  /**
   * `POST /tang/NAME/rec/KID`: policy, then the ECMR step. Throws `not_found` (unknown host or
   * key: tangd's 404), `bad_request` (malformed point), or the policy's denial code (403).
   */
  async recover(
    hostName: string,
    kid: string,
    bodyText: string,
    source: string,
  ): Promise<EcmrReplyJwk> {
    const body = checkRecBody(bodyText)
    if (!KID_RE.test(kid)) throw notFound('no such exchange key')
    for (let attempt = 0; attempt < MAX_ATTEMPTS; attempt++) {
      const r = await this.#deps.store.tx((t) => this.#decide(t, hostName, kid, source))
      if (r.kind === 'rebuild') {
        await this.#prepare(r.hostId, r.rows)
        continue
      }
      return r.key.ecmr.recover(body)
    }
    throw new UnlockdError('internal', 'tang keys kept changing while serving /rec')
  }

  /**
   * Inside the transaction: the host, its policy decision, and the key; records the outcome.
   * Refusals are denials, so the history row and the audit entry of a refusal commit.
   */
  async #decide(t: StoreTx, hostName: string, kid: string, source: string): Promise<RecAttempt> {
    const found = await t.getHostByName(hostName)
    if (found === undefined || !found.tang) throw deny(notFound(`no Tang host named ${hostName}`))
    const host = found
    const now = this.#deps.now()
    const decision = await decide(t, host, TANG_BOOT_ID, source, now)
    if (decision.kind === 'deny')
      throw await recordDenial(
        t,
        host,
        decision,
        { now, bootId: TANG_BOOT_ID, source },
        { via: 'tang' },
      )
    const rows = tangRows(await t.listVolumes(host.id))
    const prepared = this.#lookup(host.id, rows)
    if (prepared === undefined) return { kind: 'rebuild', hostId: host.id, rows }
    const key = prepared.byKid.get(kid)
    // tangd answers 404 for a key it does not hold; nothing was released, so nothing is recorded.
    if (key === undefined) throw deny(notFound('no such exchange key'))

    let rule = decision.rule
    if (decision.kind === 'approval')
      rule = await this.#approval(t, host, decision.rule, source, now)
    await recordRelease(
      t,
      host,
      { now, bootId: TANG_BOOT_ID, source },
      {
        rule,
        source,
        via: 'tang',
        kid: key.exchangeThp,
        ...(key.advertised ? {} : { retiredKey: true }),
      },
    )
    return { kind: 'go', key }
  }

  /**
   * The approval branch: spend an approved request of this host from this same source address
   * (returns the rule to audit), or refuse with `approval_pending` after opening one for this
   * source (unless one is already waiting). An approval for another source is neither spent nor
   * shown to this requester; the attempt is audited. The refusal is a denial, so the opened
   * request and the audit entries commit.
   */
  async #approval(
    t: StoreTx,
    host: HostRow,
    rule: string,
    source: string,
    now: number,
  ): Promise<string> {
    const ttl = this.#deps.settings.approvalTtl
    const approved = (await t.listApprovals('approved')).filter(
      (a) => a.hostId === host.id && a.bootId === TANG_BOOT_ID && (a.decidedAt ?? 0) + ttl > now,
    )
    // The operator approved a request from one source address: only a /rec from there spends it.
    const ready = approved.find((a) => a.source === source)
    if (ready !== undefined) {
      await t.updateApproval(ready.id, { state: 'used' })
      return `${ready.rule} (approval ${ready.id})`
    }
    for (const other of approved)
      await audit(t, now, 'anonymous', 'approval.source_mismatch', host.name, {
        approval: other.id,
        approvedSource: other.source,
        source,
      })
    const waiting = (await t.listApprovals('pending')).find(
      (a) =>
        a.hostId === host.id &&
        a.bootId === TANG_BOOT_ID &&
        a.source === source &&
        a.expiresAt > now,
    )
    if (waiting === undefined) {
      if (rule === IDLE_SUSPEND_RULE && host.state === 'active') await suspendIdle(t, host, now)
      const req: UnlockPayload = {
        v: 1,
        host: host.id,
        volumes: [],
        nonce: '',
        bootId: TANG_BOOT_ID,
        iat: now,
      }
      await openApproval(this.#deps, t, host, req, source, rule, now)
      await t.recordUnlock(historyRow(host, { now, bootId: TANG_BOOT_ID, source }, 'approval'))
    }
    throw deny(
      new PolicyDenied(
        'approval_pending',
        `an operator must approve this host's next unlock (rule ${rule}); clevis will succeed on a retry after that`,
        rule,
      ),
    )
  }
}

const services = new WeakMap<ServerDeps, TangService>()

/** The one TangService of a server (routes and admin use cases share its cache). */
export function tangService(deps: ServerDeps): TangService {
  let s = services.get(deps)
  if (s === undefined) {
    s = new TangService(deps)
    services.set(deps, s)
  }
  return s
}
