/**
 * Suite `storm`: N simulated hosts (default 10,000) all unlock at once, e.g. after a
 * data-centre power cut. Each host does the agent's full exchange once (nonce + signed unlock,
 * fresh TCP connection per request). The hosts are written into the store beforehand
 * (bench/lib/hosts.ts seedHosts; enrollment time is not part of the figure).
 *
 * Targets, in one run: one unlockd on SQLite; two unlockd instances on one PostgreSQL database
 * (hosts split round-robin between them); Debian's tangd answering N blinded /rec exchanges.
 * The client keeps at most `--inflight` (default 256) exchanges in flight, so "all at once"
 * means a queue of N drained by 256 workers, for every target alike. 429/503 answers are retried
 * with exponential backoff and counted separately; any other failure is an error (must be 0).
 * Latency is per host, from its first attempt to its key (retries included).
 */
import os from 'node:os'
import { ensureDebianPackages } from '../lib/apt.ts'
import { RetryableStatus, seedHosts, unlockExchange, type BenchHost } from '../lib/hosts.ts'
import { runLoad, type LoadResult } from '../lib/load.ts'
import { SCRAPE_TOKEN, scrape, sum } from '../lib/metrics-scrape.ts'
import { benchPostgres, type BenchPg } from '../lib/pg.ts'
import { cpuMs, memMiB, sampleRss } from '../lib/proc.ts'
import { fmtNum, formatTable, ratio } from '../lib/report.ts'
import {
  fetchAdv,
  startTangPeer,
  tangRecExchange,
  TANG_PACKAGES,
  type TangPeer,
} from '../lib/tang-peer.ts'
import {
  initDataDir,
  startUnlockdServer,
  type DataDir,
  type UnlockdServer,
} from '../lib/unlockd-server.ts'
import { closeDeps, openDeps } from '../../server/setup.ts'
import { silentLogger } from '../../server/log.ts'
import { BENCH_PASSPHRASE } from '../lib/unlockd-server.ts'
import type { SuiteContext } from './context.ts'

const MAX_ATTEMPTS = 8

interface StormResult {
  name: string
  result: LoadResult
  retries: number
  /** Peak RSS (MiB) of the server process(es): sampled VmRSS max, and VmHWM. */
  rssPeak: number | undefined
  serverCpuMsPerUnlock: number | undefined
  note?: string
  /** From /metrics: synced commits (fsyncs on SQLite) and PostgreSQL round trips per unlock. */
  fsyncsPerUnlock?: number
  roundTripsPerUnlock?: number
}

/** Drain `count` one-shot exchanges with `inflight` workers; `attempt(i)` throws RetryableStatus to retry. */
async function storm(
  count: number,
  inflight: number,
  attempt: (i: number) => Promise<void>,
): Promise<{ result: LoadResult; retries: number }> {
  let next = 0
  let retries = 0
  const fn = async (): Promise<void> => {
    const i = next++
    for (let a = 1; ; a++) {
      try {
        await attempt(i)
        return
      } catch (e) {
        if (!(e instanceof RetryableStatus) || a >= MAX_ATTEMPTS) throw e
        retries++
        await new Promise((r) => setTimeout(r, 20 * 2 ** a + Math.random() * 20))
      }
    }
  }
  const result = await runLoad({
    concurrency: Math.min(inflight, count),
    requests: count,
    fn,
    timeoutMs: 120_000,
  })
  return { result, retries }
}

function cpuOf(pids: readonly number[], children: boolean): number | undefined {
  let sum = 0
  for (const p of pids) {
    const v = cpuMs(p, children)
    if (v === undefined) return undefined
    sum += v
  }
  return sum
}

async function stormUnlockd(
  name: string,
  servers: readonly UnlockdServer[],
  hosts: readonly BenchHost[],
  inflight: number,
): Promise<StormResult> {
  const pids = servers.map((s) => s.pid)
  const samplers = pids.map((p) => sampleRss(p))
  const before = await Promise.all(servers.map((s) => scrape(s.url)))
  // Scrapes during the storm, as Prometheus would: each must parse.
  let scrapes = 0
  let scrapeError: unknown
  let scraping = true
  const scraper = (async () => {
    while (scraping) {
      await new Promise((r) => setTimeout(r, 1000))
      if (!scraping) break
      try {
        await Promise.all(servers.map((s) => scrape(s.url)))
        scrapes++
      } catch (e) {
        scrapeError ??= e
      }
    }
  })()
  const c0 = cpuOf(pids, false)
  const { result, retries } = await storm(hosts.length, inflight, (i) =>
    unlockExchange((servers[i % servers.length] as UnlockdServer).url, hosts[i] as BenchHost),
  )
  const c1 = cpuOf(pids, false)
  scraping = false
  await scraper
  if (scrapeError !== undefined) throw scrapeError
  const after = await Promise.all(servers.map((s) => scrape(s.url)))
  const delta = (key: string): number => sum(after, key) - sum(before, key)
  const released = delta('unlockd_releases_total{route="unlock"}')
  const acked = result.requests - result.errors
  const metricsNote = `/metrics: ${scrapes} scrapes during the storm parsed (prometheus_client); releases counted ${released} ${released === acked ? '=' : 'DIFFER FROM'} the bench's ${acked}`
  const peaks = samplers.map((s, k) => Math.max(s.stop() ?? 0, memMiB(pids[k] as number) ?? 0))
  const ok = Math.max(1, result.requests - result.errors)
  return {
    name,
    result,
    retries,
    rssPeak: peaks.reduce((a, b) => a + b, 0),
    serverCpuMsPerUnlock: c0 === undefined || c1 === undefined ? undefined : (c1 - c0) / ok,
    fsyncsPerUnlock: delta('unlockd_store_commits_total{synced="true"}') / ok,
    roundTripsPerUnlock: delta('unlockd_store_round_trips_total{}') / ok,
    note:
      servers.length > 1
        ? `RSS is the sum of ${servers.length} instances (${peaks.map((p) => fmtNum(p, 0)).join(' + ')} MiB); ${metricsNote}`
        : metricsNote,
  }
}

/** Every seeded host has had a release recorded (checked in the store after the servers stop). */
async function checkAllReleased(data: DataDir, count: number): Promise<string | undefined> {
  const deps = await openDeps(data.dir, BENCH_PASSPHRASE, silentLogger)
  try {
    const hosts = await deps.store.tx((t) => t.listHosts())
    const released = hosts.filter((h) => h.lastUnlockAt !== null).length
    return released === count
      ? undefined
      : `only ${released} of ${count} hosts have a recorded release`
  } finally {
    await closeDeps(deps)
  }
}

export async function stormSuite(ctx: SuiteContext): Promise<void> {
  const { log } = ctx
  const n = ctx.hosts ?? 10_000
  const inflight = ctx.inflight ?? 256
  await ensureDebianPackages(TANG_PACKAGES, { log })
  const results: StormResult[] = []
  const notRun: string[] = []
  const problems: string[] = []

  // 1. One unlockd on SQLite.
  {
    const data = await initDataDir({ metricsToken: SCRAPE_TOKEN })
    let server: UnlockdServer | undefined
    ctx.onCleanup(async () => {
      await server?.stop()
      await data.remove()
    })
    let t0 = performance.now()
    const hosts = await seedHosts(data, n)
    log(
      `SQLite: seeded ${n} hosts in ${((performance.now() - t0) / 1000).toFixed(1)} s (not measured)`,
    )
    server = await startUnlockdServer(data)
    t0 = performance.now()
    results.push(await stormUnlockd('unlockd, 1 instance, SQLite', [server], hosts, inflight))
    log(`SQLite storm done in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
    await server.stop()
    const missing = await checkAllReleased(data, n)
    if (missing) problems.push(`SQLite: ${missing}`)
  }

  // 2. Two unlockd instances on one PostgreSQL database.
  {
    const pgdb = await benchPostgres(log)
    if ('unavailable' in pgdb) {
      notRun.push(`2 instances on PostgreSQL: not run (${pgdb.unavailable})`)
    } else {
      const db: BenchPg = pgdb
      const data = await initDataDir({ db: db.url, metricsToken: SCRAPE_TOKEN })
      const servers: UnlockdServer[] = []
      ctx.onCleanup(async () => {
        for (const s of servers) await s.stop()
        await data.remove()
        await db.release()
      })
      let t0 = performance.now()
      const hosts = await seedHosts(data, n)
      log(
        `PostgreSQL: seeded ${n} hosts in ${((performance.now() - t0) / 1000).toFixed(1)} s (not measured)`,
      )
      // Two instances share the data directory's keystore (as instances behind a load balancer share the KEK).
      servers.push(await startUnlockdServer(data), await startUnlockdServer(data))
      t0 = performance.now()
      results.push(await stormUnlockd('unlockd, 2 instances, PostgreSQL', servers, hosts, inflight))
      log(`PostgreSQL storm done in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
      for (const s of servers) await s.stop()
      const missing = await checkAllReleased(data, n)
      if (missing) problems.push(`PostgreSQL: ${missing}`)
    }
  }

  // 3. tangd: N blinded /rec exchanges, same client bound.
  {
    let tang: TangPeer | undefined
    ctx.onCleanup(async () => {
      await tang?.stop()
    })
    tang = await startTangPeer()
    const rec = tangRecExchange(tang.url, await fetchAdv(tang.url), { pool: 64 })
    const sampler = sampleRss(tang.pid)
    const c0 = cpuMs(tang.pid, true)
    const t0 = performance.now()
    const { result, retries } = await storm(n, inflight, () => rec())
    await new Promise((r) => setTimeout(r, 300)) // let the launcher reap the last tangd processes
    const c1 = cpuMs(tang.pid, true)
    sampler.stop()
    log(`tangd storm done in ${((performance.now() - t0) / 1000).toFixed(1)} s`)
    const ok = Math.max(1, result.requests - result.errors)
    results.push({
      name: 'tangd (Debian, fork per connection)',
      result,
      retries,
      rssPeak: undefined,
      serverCpuMsPerUnlock: c0 === undefined || c1 === undefined ? undefined : (c1 - c0) / ok,
      note: 'tangd RSS: one short-lived process per connection (~3-4 MiB each); not comparable, not shown',
    })
    await tang.stop()
  }

  const peer = results.find((r) => r.name.startsWith('tangd'))
  const table = formatTable(
    [
      'target',
      'hosts',
      'all unlocked s',
      'x tangd',
      'unlocks/s',
      'p50 ms',
      'p99 ms',
      'max ms',
      'errors',
      'retries',
      'srv CPU ms/unlock',
      'synced commits/unlock',
      'PG round trips/unlock',
      'server RSS MiB',
    ],
    results.map((r) => [
      r.name,
      String(r.result.requests),
      fmtNum(r.result.elapsedMs / 1000, 1),
      r === peer ? '1.00x' : ratio(r.result.elapsedMs, peer?.result.elapsedMs),
      fmtNum(r.result.rps, 0),
      fmtNum(r.result.p50Ms, 1),
      fmtNum(r.result.p99Ms, 1),
      fmtNum(r.result.maxMs, 0),
      String(r.result.errors),
      String(r.retries),
      fmtNum(r.serverCpuMsPerUnlock, 2),
      fmtNum(r.fsyncsPerUnlock, 3),
      r.name.includes('PostgreSQL') ? fmtNum(r.roundTripsPerUnlock, 1) : '-',
      fmtNum(r.rssPeak, 0),
    ]),
  )
  process.stdout.write(
    `storm: ${n} hosts unlock at once, at most ${inflight} exchanges in flight, loopback\n\n${table}\n\n`,
  )
  process.stdout.write(
    [
      "x tangd = time to all unlocked / tangd's (<1 is faster). Latency per host from its first attempt (retries included).",
      'unlockd: full agent exchange per host (GET /v1/nonce + signed POST /v1/unlock, 2 HTTP requests on one new keep-alive connection);',
      '  tangd: one blinded /rec per host (fresh connection). Servers run with hostRateLimit "off": every request comes from',
      '  127.0.0.1, and the default per-address limiter (200/s, burst 400) would otherwise throttle the storm on purpose.',
      'SQLite: WAL, synchronous=FULL, group commit (synced commits/unlock = WAL fsyncs per unlock, from /metrics).',
      '  PostgreSQL: the .ci/pg.sh test cluster (fsync=off, synchronous_commit=off), both instances sharing one keystore;',
      '  no global lock on the unlock path; round trips = statements or statement batches sent, per unlock.',
      `Client and servers share ${os.cpus().length} vCPUs (${os.cpus()[0]?.model ?? 'unknown'}); node ${process.version}.`,
      ...results.filter((r) => r.note).map((r) => `${r.name}: ${r.note ?? ''}`),
      ...results
        .filter((r) => r.result.firstError)
        .map((r) => `${r.name}: first error: ${r.result.firstError ?? ''}`),
      ...notRun,
      '',
    ].join('\n'),
  )
  const sq = results.find((r) => r.name.includes('SQLite'))
  const pgr = results.find((r) => r.name.includes('PostgreSQL'))
  const tangS = peer ? peer.result.elapsedMs / 1000 : undefined
  if (sq) {
    const s = sq.result.elapsedMs / 1000
    ctx.targets.push({
      suite: 'storm',
      target: `${n} hosts on one SQLite instance <= 8 s and >= 8x faster than tangd`,
      measured: `${s.toFixed(1)} s, ${tangS ? (tangS / s).toFixed(2) : '?'}x faster (tangd ${tangS?.toFixed(1) ?? '?'} s)`,
      pass: tangS === undefined ? undefined : s <= 8 && tangS / s >= 8,
    })
  }
  ctx.targets.push({
    suite: 'storm',
    target: 'two PostgreSQL instances >= 2x faster than tangd',
    measured: pgr
      ? `${(pgr.result.elapsedMs / 1000).toFixed(1)} s, ${tangS ? (tangS / (pgr.result.elapsedMs / 1000)).toFixed(2) : '?'}x faster`
      : 'not run',
    pass: pgr && tangS ? tangS / (pgr.result.elapsedMs / 1000) >= 2 : undefined,
  })
  const cpuRatio =
    pgr?.serverCpuMsPerUnlock !== undefined && sq?.serverCpuMsPerUnlock
      ? pgr.serverCpuMsPerUnlock / sq.serverCpuMsPerUnlock
      : undefined
  ctx.targets.push({
    suite: 'storm',
    target: 'server CPU per unlock on PostgreSQL <= 1.3x SQLite',
    measured:
      cpuRatio === undefined
        ? 'not measured'
        : `${cpuRatio.toFixed(2)}x (${fmtNum(pgr?.serverCpuMsPerUnlock, 2)} vs ${fmtNum(sq?.serverCpuMsPerUnlock, 2)} ms)`,
    pass: cpuRatio === undefined ? undefined : cpuRatio <= 1.3,
  })
  const errors = results.reduce((a, r) => a + r.result.errors, 0)
  if (errors > 0) problems.push(`${errors} failed exchanges`)
  if (problems.length > 0) throw new Error(`storm: ${problems.join('; ')}`)
}
