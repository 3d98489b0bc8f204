/**
 * Simulated agent hosts for benchmarks: enrolled through the real API (a few, with
 * shared/client/host-client.ts) or written straight into the store (thousands, for storms:
 * enrollment is not what a storm measures), and the full unlock exchange a booting agent does:
 * `GET /v1/nonce`, then `POST /v1/unlock` with an Ed25519-signed compact JWS, both on one
 * keep-alive TCP connection opened for the exchange and closed after it, exactly like the
 * agent's transport (platform/node-transport.ts).
 *
 * The load generator keeps its own CPU small: the signing key is imported once per host
 * (node:crypto KeyObject) and the released blob is checked for presence, not opened (the
 * agent's X25519 unsealing is client work, measured by the `agent` suite instead).
 */
import http from 'node:http'
import { createPrivateKey, generateKeyPairSync, sign, type KeyObject } from 'node:crypto'
import { JWS_TYP, SIGNING_ALG } from '../../shared/crypto/algorithms.ts'
import { randomBytes } from '../../shared/crypto/bytes.ts'
import { publicOf, thumbprint } from '../../shared/crypto/keys.ts'
import { enroll, generateHostKeys, sealVolumeKey } from '../../shared/client/host-client.ts'
import { fetchTransport } from '../../shared/client/transport.ts'
import { DEFAULT_POLICY } from '../../shared/protocol/policy.ts'
import { wrapVolume } from '../../server/escrow/enroll.ts'
import { silentLogger } from '../../server/log.ts'
import { closeDeps, openDeps } from '../../server/setup.ts'
import { adminCall, BENCH_PASSPHRASE, type DataDir } from './unlockd-server.ts'
import { freshRequest } from './tang-peer.ts'

export interface BenchHost {
  name: string
  hostId: string
  signingKey: KeyObject
  bootId: string
  /** base64url of the protected header, made once. */
  header: string
}

function b64u(data: string | Buffer): string {
  return Buffer.from(data).toString('base64url')
}

function benchHost(name: string, hostId: string, signingKey: KeyObject, i: number): BenchHost {
  return {
    name,
    hostId,
    signingKey,
    bootId: `bench-boot-${String(i).padStart(8, '0')}`,
    header: b64u(JSON.stringify({ alg: SIGNING_ALG, typ: JWS_TYP.unlock, kid: hostId })),
  }
}

/** Enroll `count` hosts through the real API (token + self-signed enrollment), one LUKS blob each. */
export async function enrollHosts(
  server: { url: string; data: DataDir },
  count: number,
  prefix = 'bench',
): Promise<BenchHost[]> {
  const t = fetchTransport(server.url)
  const out: BenchHost[] = []
  for (let i = 0; i < count; i++) {
    const name = `${prefix}-${i}`
    const { token } = (await adminCall(server, 'POST', '/tokens', {
      host: name,
      ttlSeconds: 600,
    })) as { token: string }
    const keys = await generateHostKeys()
    const blob = await sealVolumeKey(randomBytes(64), [publicOf(keys.sealing)])
    const r = await enroll(t, {
      token,
      name,
      keys,
      volumes: [{ name: 'root', kind: 'luks', blob }],
    })
    const key = createPrivateKey({
      key: { kty: 'OKP', crv: 'Ed25519', x: keys.signing.x, d: keys.signing.d },
      format: 'jwk',
    })
    out.push(benchHost(name, r.hostId, key, i))
  }
  return out
}

/**
 * Write `count` enrolled hosts straight into the store of `data` (the server must not be running
 * for SQLite). Each has its own Ed25519 identity and its own KEK-wrapped blob; the blobs share
 * one sealing key (the server never opens them, so this changes nothing it measures).
 */
export async function seedHosts(
  data: DataDir,
  count: number,
  prefix = 'storm',
): Promise<BenchHost[]> {
  const deps = await openDeps(data.dir, BENCH_PASSPHRASE, silentLogger)
  try {
    const sealing = await generateHostKeys()
    const blob = await sealVolumeKey(randomBytes(64), [publicOf(sealing.sealing)])
    const sealingJwk = JSON.stringify(publicOf(sealing.sealing))
    const now = deps.now()
    const hosts: BenchHost[] = []
    const BATCH = 500
    for (let start = 0; start < count; start += BATCH) {
      const batch: { host: BenchHost; pub: string }[] = []
      for (let i = start; i < Math.min(count, start + BATCH); i++) {
        const { privateKey, publicKey } = generateKeyPairSync('ed25519')
        const x = String(publicKey.export({ format: 'jwk' }).x)
        const pub = { kty: 'OKP' as const, crv: 'Ed25519', x }
        const id = await thumbprint(pub)
        batch.push({
          host: benchHost(`${prefix}-${i}`, id, privateKey, i),
          pub: JSON.stringify(pub),
        })
      }
      await deps.store.tx(async (t) => {
        for (const { host, pub } of batch) {
          await t.insertHost({
            id: host.hostId,
            name: host.name,
            state: 'active',
            stateReason: null,
            signingJwk: pub,
            sealingJwk,
            policy: { ...DEFAULT_POLICY },
            createdAt: now,
            lastSeenAt: now,
            lastUnlockAt: null,
            lastBootId: null,
            lastSource: null,
            tang: false,
          })
          await t.upsertVolume(
            wrapVolume(deps, host.hostId, { name: 'root', kind: 'luks', blob }, now),
          )
        }
      })
      hosts.push(...batch.map((b) => b.host))
    }
    return hosts
  } finally {
    await closeDeps(deps)
  }
}

/** Thrown for a response the storm may retry (429 rate limited, 503 unavailable). */
export class RetryableStatus extends Error {
  readonly status: number
  constructor(status: number, what: string) {
    super(`${what}: HTTP ${status}`)
    this.status = status
  }
}

/** One full unlock exchange (nonce + signed unlock) for `host` against `url`, on one connection. */
export async function unlockExchange(url: string, host: BenchHost): Promise<void> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 })
  try {
    await exchangeOn(agent, url, host)
  } finally {
    agent.destroy()
  }
}

async function exchangeOn(agent: http.Agent, url: string, host: BenchHost): Promise<void> {
  const n = await freshRequest(`${url}/v1/nonce`, 'GET', undefined, undefined, 10_000, agent)
  if (n.status === 429 || n.status === 503) throw new RetryableStatus(n.status, 'nonce')
  if (n.status !== 200) throw new Error(`nonce: HTTP ${n.status} ${n.body.slice(0, 200)}`)
  const { nonce } = JSON.parse(n.body) as { nonce: string }
  const payload = b64u(
    JSON.stringify({
      v: 1,
      host: host.hostId,
      volumes: [],
      nonce,
      bootId: host.bootId,
      iat: Math.floor(Date.now() / 1000),
    }),
  )
  const input = `${host.header}.${payload}`
  const jws = `${input}.${sign(null, Buffer.from(input), host.signingKey).toString('base64url')}`
  const r = await freshRequest(
    `${url}/v1/unlock`,
    'POST',
    Buffer.from(JSON.stringify({ jws })),
    'application/json',
    10_000,
    agent,
  )
  if (r.status === 429 || r.status === 503) throw new RetryableStatus(r.status, 'unlock')
  if (
    r.status !== 200 ||
    !r.body.includes('"status":"released"') ||
    !r.body.includes('"ciphertext"')
  ) {
    throw new Error(`unlock: HTTP ${r.status} ${r.body.slice(0, 200)}`)
  }
}

/** Round-robin exchange load over `hosts` (and over several server URLs, if given). */
export function exchangeLoad(
  urls: readonly string[],
  hosts: readonly BenchHost[],
): () => Promise<void> {
  if (hosts.length === 0 || urls.length === 0) throw new RangeError('need hosts and urls')
  let next = 0
  return () => {
    const i = next++
    return unlockExchange(urls[i % urls.length] as string, hosts[i % hosts.length] as BenchHost)
  }
}
