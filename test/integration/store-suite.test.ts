/**
 * One store suite, run against every Store implementation: SQLite (a temp file) and PostgreSQL
 * (a fresh database per test on `UNLOCKD_TEST_PG_URL`; skipped loudly when unset, failed under CI).
 *
 * Races use two Store instances on one database (`peer()`), the way two server instances
 * share PostgreSQL. SQLite's deployment is one process per file, so its peer is the same store.
 */
import test, { type ExecutionContext } from 'ava'
import { EventEmitter } from 'node:events'
import { join } from 'node:path'
import Database from 'better-sqlite3'
import pg from 'pg'
import { randomBytes } from 'node:crypto'
import { verifyAuditChain } from '../../shared/audit.ts'
import { auditHead, verifyAudit } from '../../server/escrow/audit-chain.ts'
import { generateHostKeys, hostIdOf, publicOf } from '../../shared/client/host-client.ts'
import { signHostRequest } from '../../shared/crypto/jws.ts'
import { generateRecoveryKey, type HostKeys } from '../../shared/crypto/keys.ts'
import { UnlockdError } from '../../shared/errors.ts'
import { DEFAULT_POLICY, type Policy } from '../../shared/protocol/policy.ts'
import { approveRequest, denyRequest } from '../../server/approvals/decide.ts'
import { addOperator } from '../../server/approvals/operators.ts'
import { newTotpSecret, totpCodeAt, TOTP_STEP } from '../../server/approvals/totp.ts'
import { DEFAULT_SETTINGS, type ServerDeps } from '../../server/context.ts'
import { hostRequest, issueNonce } from '../../server/escrow/host-auth.ts'
import { pollApproval } from '../../server/escrow/poll.ts'
import { PolicyDenied, unlock } from '../../server/escrow/release.ts'
import { newId } from '../../server/escrow/secrets.ts'
import { shred } from '../../server/escrow/shred.ts'
import { Keystore } from '../../server/keys/keystore.ts'
import { memoryLogger } from '../../server/log.ts'
import { deny } from '../../server/store/denial.ts'
import { openStore } from '../../server/store/open.ts'
import { SqliteStore } from '../../server/store/sqlite.ts'
import { MIGRATIONS } from '../../server/store/schema.ts'
import type {
  ActionRow,
  ApprovalRow,
  HostRow,
  OperatorRow,
  Store,
  TokenRow,
  VolumeRow,
} from '../../server/store/store.ts'
import { freshPgDatabase, inCi, pgSkipBanner, pgUnavailable } from '../helpers/pg.ts'
import { tempDir } from '../helpers/tmp.ts'

/** The unlock and poll routes: the host request step, then the escrow call. */
async function hostUnlock(deps: ServerDeps, jws: string, source: string) {
  return unlock(deps, await hostRequest(deps, jws, 'unlock'), source)
}
async function hostPoll(deps: ServerDeps, jws: string, source: string) {
  return pollApproval(deps, await hostRequest(deps, jws, 'poll'), source)
}

interface Db {
  /** The first store on this test's database. */
  store: Store
  /** Another instance on the same database (PostgreSQL: its own pool; SQLite: the same store). */
  peer(): Promise<Store>
  /** Close `store` and open the database again (state must survive). */
  reopen(): Promise<Store>
  /** One statement straight on the database, past the store (what an attacker with it can do). */
  raw(sql: string): Promise<void>
}

interface Backend {
  name: 'sqlite' | 'postgres'
  fresh(t: ExecutionContext): Promise<Db>
}

function closeAtTeardown(t: ExecutionContext, s: Store): Store {
  t.teardown(() => s.close())
  return s
}

const sqlite: Backend = {
  name: 'sqlite',
  async fresh(t) {
    const path = join(await tempDir(t), 'unlockd.db')
    const db: Db = {
      store: closeAtTeardown(t, new SqliteStore(path)),
      peer: async () => db.store,
      reopen: async () => {
        await db.store.close()
        db.store = closeAtTeardown(t, new SqliteStore(path))
        return db.store
      },
      raw: async (sql) => {
        const conn = new Database(path)
        try {
          conn.exec(sql)
        } finally {
          conn.close()
        }
      },
    }
    return db
  },
}

const postgres: Backend = {
  name: 'postgres',
  async fresh(t) {
    const url = await freshPgDatabase(t)
    const db: Db = {
      store: closeAtTeardown(t, await openStore(url)),
      peer: async () => closeAtTeardown(t, await openStore(url)),
      reopen: async () => {
        await db.store.close()
        db.store = closeAtTeardown(t, await openStore(url))
        return db.store
      },
      raw: async (sql) => {
        const c = new pg.Client({ connectionString: url })
        await c.connect()
        try {
          await c.query(sql)
        } finally {
          await c.end()
        }
      },
    }
    return db
  },
}

// --- fixtures ----------------------------------------------------------------------------------

let seq = 0
const uid = (p: string): string =>
  `${p}_${(++seq).toString(36)}_${Math.random().toString(36).slice(2, 8)}`
// Constraint violations: better-sqlite3's SqliteError is not a native Error, so ava needs `any`.
const ANY = { any: true } as const
const BIG = 2 ** 41 // past 32 bits: BIGINT columns must come back as numbers, not strings

function hostRow(o: Partial<HostRow> = {}): HostRow {
  return {
    id: uid('h'),
    name: uid('web'),
    state: 'active',
    stateReason: null,
    signingJwk: '{"kty":"OKP"}',
    sealingJwk: '{"kty":"OKP","crv":"X25519"}',
    policy: { ...DEFAULT_POLICY, cidrs: ['10.0.0.0/8'] },
    createdAt: 1_700_000_000,
    lastSeenAt: null,
    lastUnlockAt: null,
    lastBootId: null,
    lastSource: null,
    tang: false,
    ...o,
  }
}
function volumeRow(hostId: string, o: Partial<VolumeRow> = {}): VolumeRow {
  return {
    hostId,
    name: 'data',
    kind: 'luks',
    ref: null,
    kekVersion: 1,
    iv: new Uint8Array([1, 2, 3]),
    ct: new Uint8Array([0, 255, 7, 8]),
    createdAt: 1_700_000_000,
    ...o,
  }
}
function tokenRow(o: Partial<TokenRow> = {}): TokenRow {
  return {
    id: uid('tk'),
    hash: uid('hash'),
    hostName: 'web-1',
    cidrs: ['10.0.0.0/8'],
    createdAt: 100,
    expiresAt: 1000,
    usedAt: null,
    usedByHost: null,
    revokedAt: null,
    createdBy: 'operator:admin',
    ...o,
  }
}
function operatorRow(o: Partial<OperatorRow> = {}): OperatorRow {
  return {
    id: uid('op'),
    name: uid('alice'),
    tokenHash: uid('oth'),
    totpKekVersion: null,
    totpIv: null,
    totpCt: null,
    totpLastStep: null,
    createdAt: 100,
    removedAt: null,
    ...o,
  }
}
function approvalRow(hostId: string, o: Partial<ApprovalRow> = {}): ApprovalRow {
  return {
    id: uid('ap'),
    hostId,
    volumes: ['data'],
    bootId: 'boot-1',
    source: '10.0.0.5',
    rule: 'always',
    required: 2,
    createdAt: 100,
    expiresAt: 700,
    state: 'pending',
    decidedAt: null,
    reason: null,
    epk: null,
    ...o,
  }
}

// --- use cases on a store (what commits when a request is denied) ------------------------------

const NOW = 1_800_000_000

/** Server dependencies on `store`: a real keystore, a frozen clock, default settings. */
async function depsOn(t: ExecutionContext, store: Store): Promise<ServerDeps> {
  const keystore = Keystore.create(join(await tempDir(t), 'keystore.json'), 'test pass', NOW)
  return {
    store,
    keystore,
    log: memoryLogger(),
    now: () => NOW,
    settings: { ...DEFAULT_SETTINGS, pollHold: 0 },
    events: new EventEmitter(),
  }
}

/** A host with real signing keys (requests it signs verify), inserted into the store. */
async function signingHost(
  deps: ServerDeps,
  policy: Policy,
): Promise<{ keys: HostKeys; host: HostRow }> {
  const keys = await generateHostKeys()
  const host = hostRow({
    id: await hostIdOf(keys),
    signingJwk: JSON.stringify(publicOf(keys.signing)),
    sealingJwk: JSON.stringify(publicOf(keys.sealing)),
    policy,
  })
  await deps.store.tx((tx) => tx.insertHost(host))
  return { keys, host }
}

async function signedUnlock(
  deps: ServerDeps,
  keys: HostKeys,
  hostId: string,
  volumes: string[] = [],
): Promise<{ jws: string; nonce: string }> {
  const { nonce } = await issueNonce(deps)
  const payload = { v: 1, host: hostId, volumes, nonce, bootId: 'boot-aaaa', iat: NOW }
  return { jws: await signHostRequest('unlock', payload, keys.signing, hostId), nonce }
}

/** An operator with TOTP enrolled, and a code that is valid now and one that is not. */
async function totpOperator(
  deps: ServerDeps,
  o: Partial<OperatorRow> = {},
): Promise<{ op: OperatorRow; good: string; bad: string }> {
  const id = uid('op')
  const { secret, stored } = newTotpSecret(deps, id)
  const op = operatorRow({ id, ...stored, ...o })
  await deps.store.tx((tx) => tx.insertOperator(op))
  const near = [-1, 0, 1].map((d) => totpCodeAt(secret, NOW + d * TOTP_STEP))
  let n = Number(near[1])
  let bad = ''
  do {
    n = (n + 1) % 1_000_000
    bad = String(n).padStart(6, '0')
  } while (near.includes(bad))
  return { op, good: near[1] as string, bad }
}

const actions = async (store: Store): Promise<string[]> =>
  (await store.tx((tx) => tx.listAudit(0, 1000))).map((e) => e.action)

const code = (err: unknown): string | undefined => (err as UnlockdError | undefined)?.code

// --- the suite ---------------------------------------------------------------------------------

/** Declare a test for backend `b`: PostgreSQL tests skip loudly without a database, and fail under CI. */
function declare(b: Backend, title: string, impl: (t: ExecutionContext) => Promise<void>): void {
  const full = `[${b.name}] ${title}`
  const why = b.name === 'postgres' ? pgUnavailable() : undefined
  if (why === undefined) {
    test(full, impl)
  } else if (inCi()) {
    test(full, (t) => {
      t.fail(`${why}; CI must run the PostgreSQL store suite (.ci/run sources .ci/pg.sh)`)
    })
  } else {
    pgSkipBanner(full)
    test.skip(`${full} [SKIPPED: ${why}]`, () => {})
  }
}

function suite(b: Backend): void {
  const it = (title: string, impl: (t: ExecutionContext, db: Db) => Promise<void>): void => {
    declare(b, title, async (t) => impl(t, await b.fresh(t)))
  }

  it('encryption progress: upsert replaces per host and volume; lists are ordered', async (t, {
    store,
  }) => {
    const a = hostRow({ name: 'enc-a' })
    const b = hostRow({ name: 'enc-b' })
    await store.tx(async (tx) => {
      await tx.insertHost(a)
      await tx.insertHost(b)
    })
    const row = {
      hostId: a.id,
      volume: 'data',
      kind: 'luks' as const,
      state: 'running' as const,
      phase: 'encrypting',
      doneBytes: BIG,
      totalBytes: BIG * 2,
      bytesPerSecond: 1234.5,
      etaSeconds: 60.25,
      message: null,
      startedAt: NOW,
      updatedAt: NOW,
    }
    await store.tx((tx) => tx.upsertEncryption(row))
    t.deepEqual(await store.tx((tx) => tx.getEncryption(a.id, 'data')), row)
    const done = {
      ...row,
      state: 'done' as const,
      doneBytes: BIG * 2,
      bytesPerSecond: null,
      etaSeconds: null,
      updatedAt: NOW + 5,
    }
    await store.tx((tx) => tx.upsertEncryption(done))
    const other = {
      ...row,
      hostId: b.id,
      volume: 'aaa',
      kind: 'fscrypt' as const,
      state: 'failed' as const,
      message: 'it broke',
    }
    const second = { ...row, volume: 'alpha' }
    await store.tx(async (tx) => {
      await tx.upsertEncryption(other)
      await tx.upsertEncryption(second)
    })
    t.deepEqual(await store.tx((tx) => tx.listEncryption(a.id)), [second, done])
    const all = await store.tx((tx) => tx.listEncryption())
    t.is(all.length, 3)
    t.deepEqual(
      all.map((e) => `${e.hostId}/${e.volume}`),
      [a.id, b.id]
        .sort()
        .flatMap((id) => (id === a.id ? [`${a.id}/alpha`, `${a.id}/data`] : [`${b.id}/aaa`])),
    )
    t.is(await store.tx((tx) => tx.getEncryption(b.id, 'data')), undefined)
  })

  it('hosts: insert, get, by name, list and partial update round-trip every field', async (t, {
    store,
  }) => {
    const h = hostRow({
      name: 'web-1',
      createdAt: BIG,
      tang: true,
      policy: {
        ...DEFAULT_POLICY,
        maxUnlocks: { count: 3, periodSeconds: 3600 },
        approval: 'always',
        approvers: 2,
      },
    })
    await store.tx((tx) => tx.insertHost(h))
    t.deepEqual(await store.tx((tx) => tx.getHost(h.id)), h)
    t.deepEqual(await store.tx((tx) => tx.getHostByName('web-1')), h)
    t.is(await store.tx((tx) => tx.getHost('nope')), undefined)
    t.is(await store.tx((tx) => tx.getHostByName('nope')), undefined)

    await store.tx((tx) =>
      tx.updateHost(h.id, {
        state: 'suspended',
        stateReason: 'stolen?',
        lastSeenAt: BIG + 1,
        lastBootId: 'b1',
        lastSource: '10.1.2.3',
        tang: false,
        policy: { ...h.policy, cidrs: [] },
      }),
    )
    const got = await store.tx((tx) => tx.getHost(h.id))
    t.deepEqual(got, {
      ...h,
      state: 'suspended',
      stateReason: 'stolen?',
      lastSeenAt: BIG + 1,
      lastBootId: 'b1',
      lastSource: '10.1.2.3',
      tang: false,
      policy: { ...h.policy, cidrs: [] },
    })
    t.is(typeof got?.createdAt, 'number')
    await store.tx((tx) => tx.updateHost(h.id, { stateReason: null }))
    t.is((await store.tx((tx) => tx.getHost(h.id)))?.stateReason, null)
    await store.tx((tx) => tx.updateHost(h.id, {})) // empty patch: no-op
    const other = hostRow({ name: 'a-first' })
    await store.tx((tx) => tx.insertHost(other))
    t.deepEqual(
      (await store.tx((tx) => tx.listHosts())).map((x) => x.name),
      ['a-first', 'web-1'],
    )
  })

  it('hosts: one live host per name; a shredded tombstone does not block a new host of that name', async (t, {
    store,
  }) => {
    const old = hostRow({ name: 'db-1', createdAt: 100 })
    await store.tx((tx) => tx.insertHost(old))
    await t.throwsAsync(
      store.tx((tx) => tx.insertHost(hostRow({ name: 'db-1' }))),
      ANY,
    )
    await store.tx((tx) => tx.updateHost(old.id, { state: 'shredded' }))
    const fresh = hostRow({ name: 'db-1', createdAt: 50 }) // older timestamp: the live one must still win
    await store.tx((tx) => tx.insertHost(fresh))
    t.is((await store.tx((tx) => tx.getHostByName('db-1')))?.id, fresh.id)
    t.is((await store.tx((tx) => tx.listHosts())).length, 2)
    await t.throwsAsync(
      store.tx((tx) => tx.insertHost(hostRow({ name: 'db-1' }))),
      ANY,
    )
  })

  it('volumes: upsert inserts then replaces, bytes round-trip, delete by name or all, KEK listing', async (t, {
    store,
  }) => {
    const h = hostRow()
    const h2 = hostRow()
    await store.tx(async (tx) => {
      await tx.insertHost(h)
      await tx.insertHost(h2)
    })
    const v1 = volumeRow(h.id, { name: 'data' })
    const v2 = volumeRow(h.id, { name: 'home', kind: 'fscrypt', ref: '/home', kekVersion: 2 })
    const v3 = volumeRow(h2.id, { name: 'tang', kind: 'tang', kekVersion: 0 })
    await store.tx(async (tx) => {
      await tx.upsertVolume(v2)
      await tx.upsertVolume(v1)
      await tx.upsertVolume(v3)
    })
    const list = await store.tx((tx) => tx.listVolumes(h.id))
    t.deepEqual(list, [v1, v2])
    t.true(list[0]?.iv instanceof Uint8Array)
    t.true(list[0]?.ct instanceof Uint8Array)

    const replaced = {
      ...v1,
      kind: 'fscrypt' as const,
      ref: '/srv',
      kekVersion: 3,
      iv: new Uint8Array(12).fill(9),
      ct: new Uint8Array(300).fill(200),
      createdAt: 999,
    }
    await store.tx((tx) => tx.upsertVolume(replaced))
    t.deepEqual((await store.tx((tx) => tx.listVolumes(h.id)))[0], {
      ...replaced,
      createdAt: v1.createdAt,
    })

    t.is(await store.tx((tx) => tx.countVolumesWithKekBelow(3)), 2) // v2 (2) and v3 (0)
    t.deepEqual(
      (await store.tx((tx) => tx.listVolumesWithKekBelow(3, 10))).map((v) => v.name).sort(),
      ['home', 'tang'],
    )
    t.is((await store.tx((tx) => tx.listVolumesWithKekBelow(3, 1))).length, 1)
    t.is(await store.tx((tx) => tx.countVolumesWithKekBelow(0)), 0)

    t.is(await store.tx((tx) => tx.deleteVolumes(h.id, ['home', 'missing'])), 1)
    t.deepEqual(
      (await store.tx((tx) => tx.listVolumes(h.id))).map((v) => v.name),
      ['data'],
    )
    t.is(await store.tx((tx) => tx.deleteVolumes(h.id, [])), 0)
    t.is(await store.tx((tx) => tx.deleteVolumes(h.id)), 1)
    t.deepEqual(await store.tx((tx) => tx.listVolumes(h.id)), [])
    t.is((await store.tx((tx) => tx.listVolumes(h2.id))).length, 1)
    await store.scrub() // after deleting secrets; the remaining rows survive it
    t.is((await store.tx((tx) => tx.listVolumes(h2.id))).length, 1)
  })

  it('tokens: lookup, single use, revoke only while unused', async (t, { store }) => {
    const a = tokenRow({ expiresAt: BIG })
    const b = tokenRow({ createdAt: 200 })
    await store.tx(async (tx) => {
      await tx.insertToken(a)
      await tx.insertToken(b)
    })
    t.deepEqual(await store.tx((tx) => tx.getToken(a.id)), a)
    t.deepEqual(await store.tx((tx) => tx.getTokenByHash(a.hash)), a)
    t.is(await store.tx((tx) => tx.getTokenByHash('nope')), undefined)
    t.deepEqual(
      (await store.tx((tx) => tx.listTokens())).map((x) => x.id),
      [b.id, a.id],
    ) // newest first

    t.true(await store.tx((tx) => tx.useToken(a.id, 300, 'host-a')))
    t.false(await store.tx((tx) => tx.useToken(a.id, 301, 'host-b')))
    t.like(await store.tx((tx) => tx.getToken(a.id)), {
      usedAt: 300,
      usedByHost: 'host-a',
      revokedAt: null,
    })
    t.false(await store.tx((tx) => tx.revokeToken(a.id, 302)))

    t.true(await store.tx((tx) => tx.revokeToken(b.id, 303)))
    t.false(await store.tx((tx) => tx.revokeToken(b.id, 304)))
    t.false(await store.tx((tx) => tx.useToken(b.id, 305, 'host-c')))
    t.like(await store.tx((tx) => tx.getToken(b.id)), { usedAt: null, revokedAt: 303 })
    t.false(await store.tx((tx) => tx.useToken('missing', 306, 'h')))
  })

  it('tokens: two instances racing to use the same token: exactly one wins', async (t, {
    store,
    peer,
  }) => {
    const other = await peer()
    const tokens = Array.from({ length: 20 }, () => tokenRow())
    await store.tx(async (tx) => {
      for (const tk of tokens) await tx.insertToken(tk)
    })
    const results = await Promise.all(
      tokens.flatMap((tk) => [
        store.tx(async (tx) => {
          await tx.getToken(tk.id)
          return tx.useToken(tk.id, 400, 'via-a')
        }),
        other.tx(async (tx) => {
          await tx.getToken(tk.id)
          return tx.useToken(tk.id, 400, 'via-b')
        }),
      ]),
    )
    for (let i = 0; i < tokens.length; i++)
      t.is([results[2 * i], results[2 * i + 1]].filter(Boolean).length, 1, `token ${i}`)
    for (const tk of tokens) t.not((await store.tx((tx) => tx.getToken(tk.id)))?.usedAt, null)
  })

  it('nonces: ok once, then reused; expired; unknown; purge', async (t, { store }) => {
    await store.tx(async (tx) => {
      await tx.insertNonce('n1', 1000)
      await tx.insertNonce('n2', 1000)
      await tx.insertNonce('n3', BIG)
    })
    t.is(await store.tx((tx) => tx.consumeNonce('n1', 999)), 'ok')
    t.is(await store.tx((tx) => tx.consumeNonce('n1', 999)), 'reused')
    t.is(await store.tx((tx) => tx.consumeNonce('n2', 1000)), 'expired') // expires_at is exclusive
    t.is(await store.tx((tx) => tx.consumeNonce('n2', 999)), 'ok')
    t.is(await store.tx((tx) => tx.consumeNonce('zz', 1)), 'unknown')
    t.is(await store.tx((tx) => tx.consumeNonce('n3', BIG - 1)), 'ok')
    t.is(await store.tx((tx) => tx.purgeNonces(1001)), 2)
    t.is(await store.tx((tx) => tx.consumeNonce('n1', 1)), 'unknown')
    t.is(await store.tx((tx) => tx.consumeNonce('n3', 1)), 'reused')
  })

  it('nonces: a concurrent double consume from two instances gives exactly one ok', async (t, {
    store,
    peer,
  }) => {
    const other = await peer()
    const nonces = Array.from({ length: 20 }, (_, i) => `race-${i}`)
    await store.tx(async (tx) => {
      for (const n of nonces) await tx.insertNonce(n, 5000)
    })
    const results = await Promise.all(
      nonces.flatMap((n) => [
        store.tx((tx) => tx.consumeNonce(n, 10)),
        other.tx((tx) => tx.consumeNonce(n, 10)),
      ]),
    )
    for (let i = 0; i < nonces.length; i++)
      t.deepEqual([results[2 * i], results[2 * i + 1]].sort(), ['ok', 'reused'], nonces[i])
  })

  it('unlock events: counts by outcome and window; boot ids of releases only', async (t, {
    store,
  }) => {
    const h = hostRow()
    await store.tx(async (tx) => {
      await tx.recordUnlock({
        hostId: h.id,
        at: 100,
        bootId: 'b1',
        source: 's',
        outcome: 'released',
        code: null,
      })
      await tx.recordUnlock({
        hostId: h.id,
        at: 200,
        bootId: 'b1',
        source: 's',
        outcome: 'released',
        code: null,
      })
      await tx.recordUnlock({
        hostId: h.id,
        at: 300,
        bootId: 'b2',
        source: 's',
        outcome: 'released',
        code: null,
      })
      await tx.recordUnlock({
        hostId: h.id,
        at: 300,
        bootId: 'b3',
        source: 's',
        outcome: 'denied',
        code: 'cidr_denied',
      })
      await tx.recordUnlock({
        hostId: h.id,
        at: 300,
        bootId: 'b4',
        source: 's',
        outcome: 'approval',
        code: null,
      })
      await tx.recordUnlock({
        hostId: 'other',
        at: 300,
        bootId: 'b9',
        source: 's',
        outcome: 'released',
        code: null,
      })
    })
    t.is(await store.tx((tx) => tx.countUnlocks(h.id, 0, 'released')), 3)
    t.is(await store.tx((tx) => tx.countUnlocks(h.id, 200, 'released')), 2)
    t.is(await store.tx((tx) => tx.countUnlocks(h.id, 301, 'released')), 0)
    t.is(await store.tx((tx) => tx.countUnlocks(h.id, 0, 'denied')), 1)
    t.is(await store.tx((tx) => tx.countUnlocks(h.id, 0, 'approval')), 1)
    t.deepEqual((await store.tx((tx) => tx.recentBootIds(h.id, 0))).sort(), ['b1', 'b2'])
    t.deepEqual(await store.tx((tx) => tx.recentBootIds(h.id, 250)), ['b2'])
  })

  it('operators: lookups, removal, TOTP fields, failures, KEK listing', async (t, { store }) => {
    const o = operatorRow({ name: 'alice', createdAt: BIG })
    const bob = operatorRow({
      name: 'bob',
      totpKekVersion: 1,
      totpIv: new Uint8Array([1, 2]),
      totpCt: new Uint8Array([3, 4, 5]),
    })
    await store.tx(async (tx) => {
      await tx.insertOperator(o)
      await tx.insertOperator(bob)
    })
    t.deepEqual(await store.tx((tx) => tx.getOperator(o.id)), o)
    t.deepEqual(await store.tx((tx) => tx.getOperatorByName('alice')), o)
    t.deepEqual(await store.tx((tx) => tx.getOperatorByTokenHash(bob.tokenHash)), bob)
    t.deepEqual(
      (await store.tx((tx) => tx.listOperators())).map((x) => x.name),
      ['alice', 'bob'],
    )

    await store.tx((tx) =>
      tx.updateOperator(o.id, {
        totpKekVersion: 2,
        totpIv: new Uint8Array(12).fill(1),
        totpCt: new Uint8Array(40).fill(2),
      }),
    )
    const got = await store.tx((tx) => tx.getOperator(o.id))
    t.deepEqual(got?.totpCt, new Uint8Array(40).fill(2))
    t.true(got?.totpIv instanceof Uint8Array)
    t.deepEqual(
      (await store.tx((tx) => tx.listOperatorsWithTotpKekBelow(2))).map((x) => x.name),
      ['bob'],
    )
    t.deepEqual(
      (await store.tx((tx) => tx.listOperatorsWithTotpKekBelow(3))).map((x) => x.name),
      ['alice', 'bob'],
    )

    await store.tx(async (tx) => {
      await tx.recordTotpFailure(o.id, 10)
      await tx.recordTotpFailure(o.id, 20)
      await tx.recordTotpFailure(bob.id, 20)
    })
    t.is(await store.tx((tx) => tx.countTotpFailures(o.id, 0)), 2)
    t.is(await store.tx((tx) => tx.countTotpFailures(o.id, 15)), 1)

    // Removal: gone from name/token lookups and the list, still readable by id; the name is free again.
    await store.tx((tx) =>
      tx.updateOperator(bob.id, {
        removedAt: 500,
        totpIv: null,
        totpCt: null,
        totpKekVersion: null,
      }),
    )
    t.is(await store.tx((tx) => tx.getOperatorByName('bob')), undefined)
    t.is(await store.tx((tx) => tx.getOperatorByTokenHash(bob.tokenHash)), undefined)
    t.like(await store.tx((tx) => tx.getOperator(bob.id)), { removedAt: 500, totpCt: null })
    t.deepEqual(
      (await store.tx((tx) => tx.listOperators())).map((x) => x.name),
      ['alice'],
    )
    await store.tx((tx) => tx.insertOperator(operatorRow({ name: 'bob' })))
    await t.throwsAsync(
      store.tx((tx) => tx.insertOperator(operatorRow({ name: 'alice' }))),
      ANY,
    )
    await store.scrub()
  })

  it('operators: claimTotpStep only moves forward, and one of two racing claims wins', async (t, {
    store,
    peer,
  }) => {
    const o = operatorRow()
    await store.tx((tx) => tx.insertOperator(o))
    t.true(await store.tx((tx) => tx.claimTotpStep(o.id, 5)))
    t.false(await store.tx((tx) => tx.claimTotpStep(o.id, 5)))
    t.false(await store.tx((tx) => tx.claimTotpStep(o.id, 4)))
    t.true(await store.tx((tx) => tx.claimTotpStep(o.id, BIG)))
    t.is((await store.tx((tx) => tx.getOperator(o.id)))?.totpLastStep, BIG)
    t.false(await store.tx((tx) => tx.claimTotpStep('missing', 1)))

    const other = await peer()
    for (let step = BIG + 1; step <= BIG + 10; step++) {
      const r = await Promise.all([
        store.tx((tx) => tx.claimTotpStep(o.id, step)),
        other.tx((tx) => tx.claimTotpStep(o.id, step)),
      ])
      t.is(r.filter(Boolean).length, 1, `step ${step}`)
    }
  })

  it('approvals: insert, list by state, update; one vote per operator, also when racing', async (t, {
    store,
    peer,
  }) => {
    const h = hostRow()
    const a = approvalRow(h.id, { expiresAt: BIG })
    const b = approvalRow(h.id, { createdAt: 200, state: 'denied', decidedAt: 201, reason: 'no' })
    const ops = [operatorRow({ name: 'op-a' }), operatorRow({ name: 'op-b' })] as const
    await store.tx(async (tx) => {
      await tx.insertHost(h)
      await tx.insertApproval(a)
      await tx.insertApproval(b)
      for (const o of ops) await tx.insertOperator(o)
    })
    t.deepEqual(await store.tx((tx) => tx.getApproval(a.id)), a)
    t.is(await store.tx((tx) => tx.getApproval('nope')), undefined)
    t.deepEqual(
      (await store.tx((tx) => tx.listApprovals())).map((x) => x.id),
      [a.id, b.id],
    )
    t.deepEqual(
      (await store.tx((tx) => tx.listApprovals('pending'))).map((x) => x.id),
      [a.id],
    )
    t.deepEqual(await store.tx((tx) => tx.listApprovals('used')), [])

    t.true(await store.tx((tx) => tx.addApprovalVote(a.id, ops[0].id, 300)))
    t.false(await store.tx((tx) => tx.addApprovalVote(a.id, ops[0].id, 301)))
    t.true(await store.tx((tx) => tx.addApprovalVote(a.id, ops[1].id, 302)))
    t.is(await store.tx((tx) => tx.countApprovalVotes(a.id)), 2)
    t.deepEqual(await store.tx((tx) => tx.approvalVoters(a.id)), ['op-a', 'op-b'])
    t.is(await store.tx((tx) => tx.countApprovalVotes(b.id)), 0)

    await store.tx((tx) =>
      tx.updateApproval(a.id, { state: 'approved', decidedAt: 303, volumes: ['data', 'home'] }),
    )
    t.like(await store.tx((tx) => tx.getApproval(a.id)), {
      state: 'approved',
      decidedAt: 303,
      volumes: ['data', 'home'],
      reason: null,
    })

    const other = await peer()
    const racing = approvalRow(h.id)
    await store.tx((tx) => tx.insertApproval(racing))
    const r = await Promise.all([
      store.tx((tx) => tx.addApprovalVote(racing.id, ops[0].id, 400)),
      other.tx((tx) => tx.addApprovalVote(racing.id, ops[0].id, 400)),
    ])
    t.is(r.filter(Boolean).length, 1)
    t.is(await store.tx((tx) => tx.countApprovalVotes(racing.id)), 1)
  })

  it("approvals: a removed operator's vote no longer counts", async (t, { store }) => {
    const h = hostRow()
    const a = approvalRow(h.id, { expiresAt: BIG })
    const ops = [operatorRow({ name: 'op-a' }), operatorRow({ name: 'op-b' })] as const
    await store.tx(async (tx) => {
      await tx.insertHost(h)
      await tx.insertApproval(a)
      for (const o of ops) await tx.insertOperator(o)
      await tx.addApprovalVote(a.id, ops[0].id, 300)
      await tx.addApprovalVote(a.id, ops[1].id, 301)
    })
    t.is(await store.tx((tx) => tx.countApprovalVotes(a.id)), 2)
    await store.tx((tx) => tx.updateOperator(ops[0].id, { removedAt: 302 }))
    t.is(await store.tx((tx) => tx.countApprovalVotes(a.id)), 1)
    t.deepEqual(await store.tx((tx) => tx.approvalVoters(a.id)), ['op-b'])
  })

  it('quorum actions: insert, list by state, move only from the expected state, one vote per operator', async (t, {
    store,
    peer,
  }) => {
    const ops = [operatorRow({ name: 'op-a' }), operatorRow({ name: 'op-b' })] as const
    const act: ActionRow = {
      id: uid('qa'),
      kind: 'host.policy',
      host: 'web-1',
      payload: { patch: { approval: 'never', cidrs: [] } },
      requesterId: ops[0].id,
      required: 2,
      eligible: ops.map((o) => o.id),
      createdAt: 100,
      expiresAt: BIG,
      state: 'pending',
      decidedAt: null,
      reason: null,
    }
    const fleet: ActionRow = {
      ...act,
      id: uid('qa'),
      kind: 'kek.rotate',
      host: null,
      payload: {},
      createdAt: 200,
      state: 'denied',
      decidedAt: 201,
      reason: 'no',
    }
    await store.tx(async (tx) => {
      for (const o of ops) await tx.insertOperator(o)
      await tx.insertAction(act)
      await tx.insertAction(fleet)
    })
    t.deepEqual(await store.tx((tx) => tx.getAction(act.id)), act)
    t.deepEqual(await store.tx((tx) => tx.getAction(fleet.id)), fleet)
    t.is(await store.tx((tx) => tx.getAction('nope')), undefined)
    t.deepEqual(
      (await store.tx((tx) => tx.listActions())).map((x) => x.id),
      [act.id, fleet.id],
    )
    t.deepEqual(
      (await store.tx((tx) => tx.listActions('pending'))).map((x) => x.id),
      [act.id],
    )

    t.true(await store.tx((tx) => tx.addActionVote(act.id, ops[0].id, 300)))
    t.false(await store.tx((tx) => tx.addActionVote(act.id, ops[0].id, 301)))
    t.true(await store.tx((tx) => tx.addActionVote(act.id, ops[1].id, 302)))
    await store.tx((tx) => tx.updateOperator(ops[1].id, { removedAt: 303 }))
    t.deepEqual(await store.tx((tx) => tx.actionVotes(act.id)), [
      { operatorId: ops[0].id, name: 'op-a', at: 300, removedAt: null },
      { operatorId: ops[1].id, name: 'op-b', at: 302, removedAt: 303 },
    ])
    t.deepEqual(await store.tx((tx) => tx.actionVotes(fleet.id)), [])

    // Two instances deciding at once: exactly one moves it.
    const other = await peer()
    const r = await Promise.all([
      store.tx((tx) => tx.moveAction(act.id, 'pending', { state: 'approved', decidedAt: 400 })),
      other.tx((tx) => tx.moveAction(act.id, 'pending', { state: 'approved', decidedAt: 401 })),
    ])
    t.is(r.filter(Boolean).length, 1)
    t.false(
      await store.tx((tx) =>
        tx.moveAction(act.id, 'pending', { state: 'denied', decidedAt: 402, reason: 'late' }),
      ),
    )
    t.true(
      await store.tx((tx) =>
        tx.moveAction(act.id, 'approved', { state: 'failed', decidedAt: 403, reason: 'boom' }),
      ),
    )
    t.like(await store.tx((tx) => tx.getAction(act.id)), {
      state: 'failed',
      decidedAt: 403,
      reason: 'boom',
    })
    const racing = { ...act, id: uid('qa'), state: 'pending' as const }
    await store.tx((tx) => tx.insertAction(racing))
    const v = await Promise.all([
      store.tx((tx) => tx.addActionVote(racing.id, ops[0].id, 500)),
      other.tx((tx) => tx.addActionVote(racing.id, ops[0].id, 500)),
    ])
    t.is(v.filter(Boolean).length, 1)
  })

  it('operator enrollments: single use, open lookup, drop; voiding pending votes; passkey removal', async (t, {
    store,
  }) => {
    const h = hostRow()
    const op = operatorRow({ name: 'op-e' })
    const other = operatorRow({ name: 'op-f' })
    const pending = approvalRow(h.id, { expiresAt: BIG })
    const decided = approvalRow(h.id, { createdAt: 200, state: 'approved', decidedAt: 250 })
    const e = {
      codeHash: uid('ch'),
      operatorId: op.id,
      kind: 'add' as const,
      createdBy: 'root',
      createdAt: 100,
      expiresAt: BIG,
      usedAt: null,
    }
    await store.tx(async (tx) => {
      await tx.insertHost(h)
      await tx.insertOperator(op)
      await tx.insertOperator(other)
      await tx.insertApproval(pending)
      await tx.insertApproval(decided)
      for (const a of [pending, decided])
        for (const o of [op, other]) await tx.addApprovalVote(a.id, o.id, 300)
      await tx.insertOperatorEnrollment(e)
    })
    t.deepEqual(await store.tx((tx) => tx.getOperatorEnrollment(e.codeHash)), e)
    t.deepEqual(await store.tx((tx) => tx.openOperatorEnrollment(op.id, 500)), e)
    t.is(await store.tx((tx) => tx.openOperatorEnrollment(op.id, BIG)), undefined, 'expired')
    t.is(await store.tx((tx) => tx.openOperatorEnrollment(other.id, 500)), undefined)
    t.true(await store.tx((tx) => tx.useOperatorEnrollment(e.codeHash, 600)))
    t.false(await store.tx((tx) => tx.useOperatorEnrollment(e.codeHash, 601)))
    t.like(await store.tx((tx) => tx.getOperatorEnrollment(e.codeHash)), { usedAt: 600 })
    t.is(await store.tx((tx) => tx.openOperatorEnrollment(op.id, 500)), undefined, 'used')
    const e2 = { ...e, codeHash: uid('ch'), kind: 'reset' as const, usedAt: null }
    await store.tx((tx) => tx.insertOperatorEnrollment(e2))
    t.is(await store.tx((tx) => tx.dropOperatorEnrollments(op.id)), 1, 'only the unused one')
    t.is(await store.tx((tx) => tx.getOperatorEnrollment(e2.codeHash)), undefined)
    t.truthy(await store.tx((tx) => tx.getOperatorEnrollment(e.codeHash)))

    t.deepEqual(await store.tx((tx) => tx.deletePendingApprovalVotes(op.id)), [pending.id])
    t.deepEqual(await store.tx((tx) => tx.approvalVoters(pending.id)), ['op-f'])
    t.deepEqual(await store.tx((tx) => tx.approvalVoters(decided.id)), ['op-e', 'op-f'])
    t.deepEqual(await store.tx((tx) => tx.deletePendingApprovalVotes(op.id)), [])

    const pk = {
      id: uid('cred'),
      operatorId: op.id,
      publicKey: new Uint8Array([1, 2, 3]),
      counter: 0,
      transports: [],
      rpId: 'localhost',
      createdAt: 100,
      lastUsedAt: null,
    }
    await store.tx(async (tx) => {
      await tx.insertPasskey(pk)
      await tx.insertPasskey({ ...pk, id: uid('cred'), operatorId: other.id })
      await tx.insertPasskeyEnrollment({
        tokenHash: uid('pth'),
        operatorId: op.id,
        createdAt: 100,
        expiresAt: BIG,
        usedAt: null,
      })
    })
    t.is(await store.tx((tx) => tx.deleteOperatorPasskeys(op.id)), 1)
    t.deepEqual(await store.tx((tx) => tx.listPasskeys(op.id)), [])
    t.is((await store.tx((tx) => tx.listPasskeys(other.id))).length, 1)
  })

  it('approvals: the asking attempt key round-trips; the migration adds it as null to older rows', async (t, db) => {
    const h = hostRow()
    const a = approvalRow(h.id, { epk: 'k'.repeat(43) })
    await db.store.tx(async (tx) => {
      await tx.insertHost(h)
      await tx.insertApproval(a)
    })
    t.deepEqual(await db.store.tx((tx) => tx.getApproval(a.id)), a)
    // The database as the release before the column left it, with a row of its own.
    const before = MIGRATIONS.findIndex((m) => /ADD COLUMN epk/.test(m.sqlite))
    t.true(before > 0)
    await db.raw(
      `DELETE FROM approvals; ALTER TABLE approvals DROP COLUMN epk; UPDATE schema_version SET version = ${before}`,
    )
    await db.raw(
      `INSERT INTO approvals (id, host_id, volumes, boot_id, source, rule, required, created_at, expires_at, state) VALUES ('ap-old', '${h.id}', '[]', 'boot-1', '10.0.0.5', 'always', 1, 100, 700, 'pending')`,
    )
    const store = await db.reopen()
    t.like(await store.tx((tx) => tx.getApproval('ap-old')), { id: 'ap-old', epk: null })
    await store.tx((tx) => tx.insertApproval(a))
    t.deepEqual(await store.tx((tx) => tx.getApproval(a.id)), a)
  })

  it('approvals: only a poll signed with the asking attempt key collects a v2 approval', async (t, {
    store,
  }) => {
    const deps = await depsOn(t, store)
    const { keys, host } = await signingHost(deps, DEFAULT_POLICY)
    const asking = publicOf(await generateRecoveryKey())
    const other = publicOf(await generateRecoveryKey())
    const a = approvalRow(host.id, {
      id: newId('ap'),
      bootId: 'boot-aaaa',
      volumes: [],
      state: 'approved',
      expiresAt: BIG,
      epk: asking.x,
    })
    await store.tx((tx) => tx.insertApproval(a))
    const poll = async (epk: typeof asking | undefined) => {
      const { nonce } = await issueNonce(deps)
      const v2 = epk ? { v: 2, challenge: nonce, epk } : { v: 1 }
      const payload = { host: host.id, approval: a.id, nonce, bootId: 'boot-aaaa', iat: NOW, ...v2 }
      return hostPoll(
        deps,
        await signHostRequest('poll', payload, keys.signing, host.id),
        '10.0.0.5',
      )
    }
    t.is(code(await t.throwsAsync(poll(other))), 'approval_key_mismatch')
    t.is(code(await t.throwsAsync(poll(undefined))), 'approval_key_mismatch')
    // The refusals committed their audit entries and left the approval as it was.
    t.deepEqual(await actions(store), ['approval.key_mismatch', 'approval.key_mismatch'])
    t.like(await store.tx((tx) => tx.getApproval(a.id)), { state: 'approved' })
    const r = await poll(asking)
    t.is(r.status, 'released')
    t.like(await store.tx((tx) => tx.getApproval(a.id)), { state: 'used' })
  })

  it('audit: appends from two instances at once keep one verifiable chain', async (t, {
    store,
    peer,
  }) => {
    const other = await peer()
    const key = new Uint8Array(randomBytes(32))
    store.useAuditKey(() => key)
    other.useAuditKey(() => key)
    const n = 25
    const appended = await Promise.all(
      Array.from({ length: n }, (_, i) => [
        store.tx((tx) =>
          tx.appendAudit({
            at: 1000 + i,
            actor: 'system',
            action: 'test.a',
            host: null,
            detail: { i },
          }),
        ),
        other.tx((tx) =>
          tx.appendAudit({
            at: 2000 + i,
            actor: `host:web-${i}`,
            action: 'test.b',
            host: `web-${i}`,
            detail: { i, nested: { z: 1, a: [1, 'x'] } },
          }),
        ),
      ]).flat(),
    )
    const unsealed = await store.tx((tx) => tx.listAudit(0, 1000))
    t.deepEqual(
      [...appended].sort((x, y) => x.seq - y.seq),
      unsealed,
    ) // what appendAudit returned is what was stored
    t.true(unsealed.every((e) => e.pos === null && e.mac !== null))
    // Two sealers at once: one chain, every entry once.
    const seals = await Promise.all([
      store.tx((tx) => tx.sealAudit(key, 1000)),
      other.tx((tx) => tx.sealAudit(key, 1000)),
    ])
    t.is(seals[0].sealed + seals[1].sealed, 2 * n)
    const all = await store.tx((tx) => tx.listAudit(0, 1000))
    t.is(all.length, 2 * n)
    t.deepEqual(
      all.map((e) => e.seq),
      Array.from({ length: 2 * n }, (_, i) => i + 1),
    )
    t.deepEqual(
      all.map((e) => e.pos).sort((x, y) => (x as number) - (y as number)),
      Array.from({ length: 2 * n }, (_, i) => i + 1),
    )
    const v = verifyAuditChain(all, key)
    t.true(v.ok, JSON.stringify(v))
    if (v.ok) t.is(v.head?.pos, 2 * n)

    t.deepEqual(
      (await store.tx((tx) => tx.listAudit(10, 5))).map((e) => e.seq),
      [11, 12, 13, 14, 15],
    )
    t.deepEqual(await store.tx((tx) => tx.listAudit(2 * n, 5)), [])
  })

  it('audit: verify --head names a truncated tail; a rewritten entry with a re-hashed tail is named', async (t, db) => {
    const deps = await depsOn(t, db.store)
    db.store.useAuditKey(() => deps.keystore.auditKey)
    const add = (i: number) =>
      db.store.tx((tx) =>
        tx.appendAudit({
          at: NOW + i,
          actor: 'system',
          action: 'test.e',
          host: null,
          detail: { i },
        }),
      )
    for (let i = 1; i <= 6; i++) await add(i)
    const head = await auditHead(deps)
    t.truthy(head)
    if (!head) return
    t.is(head.pos, 6)
    for (let i = 7; i <= 8; i++) await add(i)
    const clean = await verifyAudit(deps, head)
    t.true(clean.ok, JSON.stringify(clean))

    // A head the server did not MAC is refused.
    t.false((await verifyAudit(deps, { ...head, seq: head.seq + 1 })).ok)

    // Truncation: the newest entries deleted, the head among them. What is left still links,
    // so only the exported head reveals it.
    await db.raw('DELETE FROM audit WHERE seq >= 5')
    t.true((await verifyAudit(deps)).ok, 'without the head a truncated chain still links')
    const cut = await verifyAudit(deps, head)
    t.false(cut.ok)
    if (!cut.ok) {
      t.is(cut.badSeq, 6)
      t.regex(cut.reason, /truncated/)
    }
    // The finding is audited once, however often verify runs.
    await verifyAudit(deps, head)
    const failures = (await db.store.tx((tx) => tx.listAudit(0, 100))).filter(
      (e) => e.action === 'audit.integrity_failure' && /truncated/.test(String(e.detail['reason'])),
    )
    t.is(failures.length, 1)
    t.is(failures[0]?.detail['badSeq'], 6)

    // Rewrite entry 2 and re-hash the tail after it the only way one can without the key (any
    // hash, with the next entry pointing at it): entry 2 is named.
    await db.raw(`UPDATE audit SET detail = '{"i":99}', hash = '${'a'.repeat(64)}' WHERE seq = 2`)
    await db.raw(`UPDATE audit SET prev_hash = '${'a'.repeat(64)}' WHERE seq = 3`)
    const rewritten = await verifyAudit(deps)
    t.false(rewritten.ok)
    if (!rewritten.ok) {
      t.is(rewritten.badSeq, 2)
      t.regex(rewritten.reason, /MAC/)
    }
    // Restoring the detail but keeping the forged link: the link MAC names it.
    await db.raw(`UPDATE audit SET detail = '{"i":2}' WHERE seq = 2`)
    const relinked = await verifyAudit(deps)
    t.false(relinked.ok)
    if (!relinked.ok) {
      t.is(relinked.badSeq, 2)
      t.regex(relinked.reason, /link MAC/)
    }
  })

  it('audit: rows from before keyed audit are adopted by the first seal, a later unkeyed row is named', async (t, db) => {
    await db.raw(
      "INSERT INTO audit (seq, at, actor, action, host, detail, prev_hash, hash) VALUES (1, 5, 'system', 'old.entry', NULL, '{}', '', '')",
    )
    await db.raw("UPDATE meta SET value = '1' WHERE key = 'audit_legacy_max_seq'")
    // What the migration does to the sequence when it finds rows.
    if (db.store.kind === 'postgres') await db.raw("SELECT setval('audit_seq', 2, false)")
    const deps = await depsOn(t, db.store)
    t.true((await verifyAudit(deps)).ok, 'the legacy row is adopted')
    // A row written without the key (a store opened without a keystore, or forged).
    await db.store.tx((tx) =>
      tx.appendAudit({ at: NOW, actor: 'system', action: 'test.unkeyed', host: null, detail: {} }),
    )
    const v = await verifyAudit(deps)
    t.false(v.ok)
    if (!v.ok) t.regex(v.reason, /no MAC/)
  })

  it('meta: get, set, overwrite, delete', async (t, { store }) => {
    t.is(await store.tx((tx) => tx.getMeta('k')), undefined)
    await store.tx((tx) => tx.setMeta('k', 'v1'))
    await store.tx((tx) => tx.setMeta('k', 'v2'))
    t.is(await store.tx((tx) => tx.getMeta('k')), 'v2')
    await store.tx((tx) => tx.setMeta('k', undefined))
    t.is(await store.tx((tx) => tx.getMeta('k')), undefined)
    await store.tx((tx) => tx.setMeta('k', undefined)) // deleting a missing key is fine
  })

  it('tx: a throw rolls everything back and rethrows; a return value passes through', async (t, {
    store,
  }) => {
    const h = hostRow()
    const boom = new Error('boom')
    const err = await t.throwsAsync(
      store.tx(async (tx) => {
        await tx.insertHost(h)
        await tx.upsertVolume(volumeRow(h.id))
        await tx.insertToken(tokenRow({ id: 'tk-rb' }))
        await tx.insertNonce('n-rb', 1000)
        await tx.setMeta('rb', 'x')
        await tx.appendAudit({ at: 1, actor: 'system', action: 'rb', host: null, detail: {} })
        throw boom
      }),
    )
    t.is(err, boom)
    t.is(await store.tx((tx) => tx.getHost(h.id)), undefined)
    t.deepEqual(await store.tx((tx) => tx.listVolumes(h.id)), [])
    t.is(await store.tx((tx) => tx.getToken('tk-rb')), undefined)
    t.is(await store.tx((tx) => tx.consumeNonce('n-rb', 1)), 'unknown')
    t.is(await store.tx((tx) => tx.getMeta('rb')), undefined)
    t.deepEqual(await store.tx((tx) => tx.listAudit(0, 10)), [])
    // A failed statement inside fn also rolls back the statements before it.
    await t.throwsAsync(
      store.tx(async (tx) => {
        await tx.setMeta('rb2', 'x')
        await tx.insertHost(h)
        await tx.insertHost(h) // duplicate primary key
      }),
      ANY,
    )
    t.is(await store.tx((tx) => tx.getMeta('rb2')), undefined)
    t.is(
      await store.tx(async (tx) => {
        await tx.setMeta('ok', '1')
        return 42
      }),
      42,
    )
  })

  it('tx: a refusal thrown as deny(err) commits first, then err itself is thrown', async (t, {
    store,
  }) => {
    await store.tx((tx) => tx.insertNonce('n-deny', 1000))
    const refusal = new UnlockdError('forbidden', 'refused after the nonce was spent')
    const err = await t.throwsAsync(
      store.tx(async (tx) => {
        t.is(await tx.consumeNonce('n-deny', 10), 'ok')
        await tx.appendAudit({ at: 1, actor: 'system', action: 'x.deny', host: null, detail: {} })
        throw deny(refusal)
      }),
    )
    t.is(err, refusal)
    t.is(await store.tx((tx) => tx.consumeNonce('n-deny', 10)), 'reused')
    t.deepEqual(await actions(store), ['x.deny'])
    // The same refusal thrown unmarked rolls back like any other error.
    await store.tx((tx) => tx.insertNonce('n-plain', 1000))
    const plain = new UnlockdError('forbidden', 'refused')
    t.is(
      await t.throwsAsync(
        store.tx(async (tx) => {
          await tx.consumeNonce('n-plain', 10)
          throw plain
        }),
      ),
      plain,
    )
    t.is(await store.tx((tx) => tx.consumeNonce('n-plain', 10)), 'ok')
  })

  it('tx: a StoreTx kept past its transaction refuses every call', async (t, { store }) => {
    const kept = await store.tx(async (tx) => tx)
    await t.throwsAsync(kept.getMeta('k'), { instanceOf: TypeError })
    await t.throwsAsync(kept.setMeta('k', 'v'), { instanceOf: TypeError })
    await t.throwsAsync(
      kept.appendAudit({ at: 1, actor: 'system', action: 'x', host: null, detail: {} }),
      { instanceOf: TypeError },
    )
    t.is(await store.tx((tx) => tx.getMeta('k')), undefined)
    t.deepEqual(await store.tx((tx) => tx.listAudit(0, 10)), [])
  })

  it('state survives closing and reopening; migrations are not reapplied', async (t, db) => {
    const h = hostRow()
    await db.store.tx(async (tx) => {
      await tx.insertHost(h)
      await tx.appendAudit({ at: 1, actor: 'system', action: 'x', host: null, detail: {} })
    })
    const again = await db.reopen()
    t.deepEqual(await again.tx((tx) => tx.getHost(h.id)), h)
    t.is((await again.tx((tx) => tx.listAudit(0, 10))).length, 1)
  })

  it('lists: every list method has one order, ties included', async (t, { store }) => {
    // Rows are inserted against the expected order, so insertion order cannot pass for it.
    const hb = hostRow({ id: 'h-b', name: 'same', state: 'shredded', createdAt: 100 })
    const ha = hostRow({ id: 'h-a', name: 'same', createdAt: 100 })
    const first = hostRow({ id: 'h-z', name: 'alpha', createdAt: 900 })
    const ops = [
      operatorRow({ id: 'op-z', name: 'zed', totpKekVersion: 1 }),
      operatorRow({ id: 'op-a', name: 'amy', totpKekVersion: 1 }),
      operatorRow({ id: 'op-b', name: 'bob', totpKekVersion: 1 }),
    ]
    await store.tx(async (tx) => {
      for (const h of [hb, ha, first]) await tx.insertHost(h)
      await tx.upsertVolume(volumeRow('h-b', { name: 'z' }))
      await tx.upsertVolume(volumeRow('h-a', { name: 'y' }))
      await tx.upsertVolume(volumeRow('h-a', { name: 'x' }))
      await tx.insertToken(tokenRow({ id: 'tk-b', createdAt: 100 }))
      await tx.insertToken(tokenRow({ id: 'tk-c', createdAt: 200 }))
      await tx.insertToken(tokenRow({ id: 'tk-a', createdAt: 100 }))
      for (const o of ops) await tx.insertOperator(o)
      await tx.insertApproval(approvalRow('h-a', { id: 'ap-b', createdAt: 100 }))
      await tx.insertApproval(approvalRow('h-a', { id: 'ap-a', createdAt: 100 }))
      await tx.insertApproval(approvalRow('h-a', { id: 'ap-c', createdAt: 50, state: 'used' }))
      await tx.addApprovalVote('ap-a', 'op-z', 300)
      await tx.addApprovalVote('ap-a', 'op-a', 300)
      await tx.addApprovalVote('ap-a', 'op-b', 200)
      for (const bootId of ['b3', 'b1', 'b2', 'b1'])
        await tx.recordUnlock({
          hostId: 'h-a',
          at: 500,
          bootId,
          source: 's',
          outcome: 'released',
          code: null,
        })
    })
    const ids = (xs: { id: string }[]): string[] => xs.map((x) => x.id)
    const vols = (xs: VolumeRow[]): string[] => xs.map((v) => `${v.hostId}/${v.name}`)
    t.deepEqual(ids(await store.tx((tx) => tx.listHosts())), ['h-z', 'h-a', 'h-b'])
    t.deepEqual(vols(await store.tx((tx) => tx.listVolumes('h-a'))), ['h-a/x', 'h-a/y'])
    t.deepEqual(vols(await store.tx((tx) => tx.listVolumesWithKekBelow(2, 10))), [
      'h-a/x',
      'h-a/y',
      'h-b/z',
    ])
    t.deepEqual(vols(await store.tx((tx) => tx.listVolumesWithKekBelow(2, 2))), ['h-a/x', 'h-a/y'])
    t.deepEqual(ids(await store.tx((tx) => tx.listTokens())), ['tk-c', 'tk-a', 'tk-b'])
    t.deepEqual(ids(await store.tx((tx) => tx.listOperators())), ['op-a', 'op-b', 'op-z'])
    t.deepEqual(ids(await store.tx((tx) => tx.listOperatorsWithTotpKekBelow(2))), [
      'op-a',
      'op-b',
      'op-z',
    ])
    t.deepEqual(ids(await store.tx((tx) => tx.listApprovals())), ['ap-c', 'ap-a', 'ap-b'])
    t.deepEqual(ids(await store.tx((tx) => tx.listApprovals('pending'))), ['ap-a', 'ap-b'])
    t.deepEqual(await store.tx((tx) => tx.approvalVoters('ap-a')), ['bob', 'amy', 'zed'])
    t.deepEqual(await store.tx((tx) => tx.recentBootIds('h-a', 0)), ['b1', 'b2', 'b3'])
  })

  it('denials commit: a refused unlock keeps the nonce spent, the history row and the audit entry', async (t, {
    store,
  }) => {
    const deps = await depsOn(t, store)
    const { keys, host } = await signingHost(deps, { ...DEFAULT_POLICY, cidrs: ['10.0.0.0/8'] })
    const { jws, nonce } = await signedUnlock(deps, keys, host.id)
    const err = await t.throwsAsync(hostUnlock(deps, jws, '192.168.7.7'))
    t.true(err instanceof PolicyDenied)
    t.is(code(err), 'cidr_denied')
    t.is((err as PolicyDenied).rule, 'cidrs')
    t.is(await store.tx((tx) => tx.consumeNonce(nonce, NOW)), 'reused')
    t.is(await store.tx((tx) => tx.countUnlocks(host.id, 0, 'denied')), 1)
    t.deepEqual(await actions(store), ['unlock.deny'])
    // The replay is refused by the spent nonce, before any policy runs.
    t.is(code(await t.throwsAsync(hostUnlock(deps, jws, '192.168.7.7'))), 'nonce_reused')
    t.is(await store.tx((tx) => tx.countUnlocks(host.id, 0, 'denied')), 1)
  })

  it('denials commit, other errors roll back: an unknown volume leaves the nonce unspent', async (t, {
    store,
  }) => {
    const deps = await depsOn(t, store)
    const { keys, host } = await signingHost(deps, DEFAULT_POLICY)
    const { jws, nonce } = await signedUnlock(deps, keys, host.id, ['missing'])
    t.is(code(await t.throwsAsync(hostUnlock(deps, jws, '10.1.1.1'))), 'volume_unknown')
    t.is(await store.tx((tx) => tx.countUnlocks(host.id, 0, 'released')), 0)
    t.deepEqual(await actions(store), [])
    t.is(await store.tx((tx) => tx.consumeNonce(nonce, NOW)), 'ok')
  })

  it('denials commit: wrong and replayed TOTP codes on approve/deny are counted and audited', async (t, {
    store,
  }) => {
    const deps = await depsOn(t, store)
    const host = hostRow()
    const open = (o: Partial<ApprovalRow> = {}): ApprovalRow =>
      approvalRow(host.id, {
        id: newId('ap'),
        required: 1,
        createdAt: NOW - 10,
        expiresAt: NOW + 600,
        ...o,
      })
    const [a1, a2, a3] = [open(), open(), open({ expiresAt: NOW - 1 })] as const
    await store.tx(async (tx) => {
      await tx.insertHost(host)
      for (const a of [a1, a2, a3]) await tx.insertApproval(a)
    })
    const { op, good, bad } = await totpOperator(deps)

    t.is(code(await t.throwsAsync(approveRequest(deps, op, a1.id, bad, 'api'))), 'totp_invalid')
    t.is(await store.tx((tx) => tx.countTotpFailures(op.id, 0)), 1)
    t.like(await store.tx((tx) => tx.getApproval(a1.id)), { state: 'pending' })
    t.is(await store.tx((tx) => tx.countApprovalVotes(a1.id)), 0)
    t.deepEqual(await actions(store), ['totp.fail'])

    t.is((await approveRequest(deps, op, a1.id, good, 'api')).state, 'approved')
    // The same code again (on another request) is a replay: refused, counted, audited.
    t.is(
      code(await t.throwsAsync(denyRequest(deps, op, a2.id, 'no', good, 'api'))),
      'totp_replayed',
    )
    t.is(await store.tx((tx) => tx.countTotpFailures(op.id, 0)), 2)
    t.like(await store.tx((tx) => tx.getApproval(a2.id)), { state: 'pending' })

    // A request past its expiry is marked expired (and audited) although the call fails.
    t.is(code(await t.throwsAsync(approveRequest(deps, op, a3.id, bad, 'api'))), 'approval_expired')
    t.like(await store.tx((tx) => tx.getApproval(a3.id)), { state: 'expired', decidedAt: NOW })
    t.is(await store.tx((tx) => tx.countTotpFailures(op.id, 0)), 2)
    t.deepEqual(await actions(store), [
      'totp.fail',
      'approval.approve',
      'totp.fail',
      'approval.expire',
    ])

    // Past the limit the operator is locked out; the refusal is audited too.
    await store.tx(async (tx) => {
      for (let i = 0; i < deps.settings.totpMaxFailures; i++) await tx.recordTotpFailure(op.id, NOW)
    })
    t.is(code(await t.throwsAsync(approveRequest(deps, op, a2.id, bad, 'api'))), 'totp_locked')
    t.is((await actions(store)).at(-1), 'totp.locked')
  })

  it('denials commit: operator changes refused after the caller code was checked keep its effects', async (t, {
    store,
  }) => {
    const deps = await depsOn(t, store)
    const { op: caller, good, bad } = await totpOperator(deps, { name: 'root' })
    t.is(code(await t.throwsAsync(addOperator(deps, caller, 'eve', bad))), 'totp_invalid')
    t.is(await store.tx((tx) => tx.countTotpFailures(caller.id, 0)), 1)
    t.deepEqual(await actions(store), ['totp.fail'])
    // A valid code, then a refusal: the spent step stays spent, so the code cannot be reused.
    t.is(code(await t.throwsAsync(addOperator(deps, caller, 'root', good))), 'operator_exists')
    t.is(
      (await store.tx((tx) => tx.getOperator(caller.id)))?.totpLastStep,
      Math.floor(NOW / TOTP_STEP),
    )
    t.is(code(await t.throwsAsync(addOperator(deps, caller, 'eve', good))), 'totp_replayed')
    t.is(await store.tx((tx) => tx.getOperatorByName('eve')), undefined)
    t.is(await store.tx((tx) => tx.countTotpFailures(caller.id, 0)), 2)
  })

  it('denials commit: a shred refused for a wrong code counts the failure and deletes nothing', async (t, {
    store,
  }) => {
    const deps = await depsOn(t, store)
    const host = hostRow({ name: 'web-9' })
    await store.tx(async (tx) => {
      await tx.insertHost(host)
      await tx.upsertVolume(volumeRow(host.id))
    })
    const { op, bad } = await totpOperator(deps)
    const err = await t.throwsAsync(shred(deps, op, { host: 'web-9', dryRun: false, code: bad }))
    t.is(code(err), 'totp_invalid')
    t.is(await store.tx((tx) => tx.countTotpFailures(op.id, 0)), 1)
    t.is((await store.tx((tx) => tx.listVolumes(host.id))).length, 1)
    t.like(await store.tx((tx) => tx.getHost(host.id)), { state: 'active' })
    t.deepEqual(await actions(store), ['totp.fail'])
  })

  it('denials commit: an approval poll that finds its request expired marks it so', async (t, {
    store,
  }) => {
    const deps = await depsOn(t, store)
    const { keys, host } = await signingHost(deps, DEFAULT_POLICY)
    const a = approvalRow(host.id, { id: newId('ap'), bootId: 'boot-aaaa', expiresAt: NOW - 1 })
    await store.tx((tx) => tx.insertApproval(a))
    const { nonce } = await issueNonce(deps)
    const payload = { v: 1, host: host.id, approval: a.id, nonce, bootId: 'boot-aaaa', iat: NOW }
    const jws = await signHostRequest('poll', payload, keys.signing, host.id)
    const err = await t.throwsAsync(hostPoll(deps, jws, '10.0.0.5'))
    t.true(err instanceof PolicyDenied)
    t.is(code(err), 'approval_expired')
    t.like(await store.tx((tx) => tx.getApproval(a.id)), { state: 'expired', decidedAt: NOW })
    t.deepEqual(await actions(store), ['approval.expire'])
    t.is(await store.tx((tx) => tx.consumeNonce(nonce, NOW)), 'reused')
  })
}

suite(sqlite)
suite(postgres)

declare(
  postgres,
  'three instances starting at once on an empty database all migrate cleanly',
  async (t) => {
    const url = await freshPgDatabase(t)
    const stores = await Promise.all([openStore(url), openStore(url), openStore(url)])
    for (const s of stores) t.teardown(() => s.close())
    await stores[0]?.tx((tx) => tx.setMeta('k', 'v'))
    for (const s of stores) t.is(await s.tx((tx) => tx.getMeta('k')), 'v')
  },
)
