/**
 * Suite `exchange` (default): throughput and latency of one unlock on loopback, against a real
 * unlockd server (child process, SQLite) and Debian's tangd, measured in the same run,
 * interleaved per concurrency level so machine noise hits every target alike.
 *
 * Rows:
 * - `unlock exchange`: an agent's full exchange, `GET /v1/nonce` + signed `POST /v1/unlock`
 *   (2 HTTP requests, 2 transactions, Ed25519 verify, KEK unwrap, audit) vs tangd `/rec`;
 * - `tang /rec`: unlockd's own Tang endpoint (`/tang/HOST/rec`, policy + audit + ECMR) vs tangd
 *   `/rec`, with the very same client (bench/lib/tang-peer.ts tangRecExchange).
 * Every request uses a fresh TCP connection, like the agent and like clevis (curl per request);
 * tangd forks one process per connection, as Debian runs it.
 */
import os from 'node:os'
import { ensureDebianPackages } from '../lib/apt.ts'
import { enrollHosts, exchangeLoad } from '../lib/hosts.ts'
import { runLoad, type LoadResult } from '../lib/load.ts'
import { cpuMs, memMiB } from '../lib/proc.ts'
import { fmtNum, formatTable, printReport, ratio, type ReportRow } from '../lib/report.ts'
import {
  fetchAdv,
  startTangPeer,
  tangRecExchange,
  TANG_PACKAGES,
  type TangPeer,
} from '../lib/tang-peer.ts'
import {
  adminCall,
  initDataDir,
  startUnlockdServer,
  type DataDir,
  type UnlockdServer,
} from '../lib/unlockd-server.ts'
import { ecmrBackend } from '../../server/tang/ecmr-libcrypto.ts'
import type { SuiteContext } from './context.ts'

interface Measured {
  result: LoadResult
  /** Server CPU per successful request (ms): unlockd process, or tangd launcher + its reaped tangd children. */
  serverCpuMs: number | undefined
  /** Load generator CPU per successful request (ms). */
  clientCpuMs: number
}

async function measure(
  fn: () => Promise<void>,
  concurrency: number,
  durationMs: number,
  pid: number,
  children: boolean,
): Promise<Measured> {
  const c0 = cpuMs(pid, children)
  const u0 = process.cpuUsage()
  const result = await runLoad({ concurrency, durationMs, fn, timeoutMs: 30_000 })
  // Let the launcher reap the last per-connection processes before reading their CPU.
  if (children) await new Promise((r) => setTimeout(r, 300))
  const c1 = cpuMs(pid, children)
  const u = process.cpuUsage(u0)
  const ok = Math.max(1, result.requests - result.errors)
  return {
    result,
    serverCpuMs: c0 === undefined || c1 === undefined ? undefined : (c1 - c0) / ok,
    clientCpuMs: (u.user + u.system) / 1000 / ok,
  }
}

export async function exchangeSuite(ctx: SuiteContext): Promise<void> {
  const { log } = ctx
  const durationMs = ctx.durationMs ?? 5000
  const concurrencies = ctx.concurrencies ?? [1, 16, 64]
  await ensureDebianPackages(TANG_PACKAGES, { log })

  let data: DataDir | undefined
  let server: UnlockdServer | undefined
  let tang: TangPeer | undefined
  ctx.onCleanup(async () => {
    await server?.stop()
    await tang?.stop()
    await data?.remove()
  })
  data = await initDataDir()
  server = await startUnlockdServer(data)
  log(`unlockd up at ${server.url} (pid ${server.pid}, SQLite ${data.db})`)
  const hosts = await enrollHosts(server, 8)
  log(`enrolled ${hosts.length} agent hosts through the API`)
  await adminCall(server, 'POST', '/hosts', { name: 'bench-tang', tang: true }, { totp: true })
  const oursTangUrl = `${server.url}/tang/bench-tang`
  const oursRec = tangRecExchange(oursTangUrl, await fetchAdv(oursTangUrl))
  tang = await startTangPeer()
  log(`tangd up at ${tang.url} via ${tang.launcher} (pid ${tang.pid})`)
  const tangRec = tangRecExchange(tang.url, await fetchAdv(tang.url))
  const exchange = exchangeLoad([server.url], hosts)

  // Warm-up (also a correctness check: every answer is verified by the load functions).
  for (const [name, fn] of [
    ['unlock exchange', exchange],
    ['unlockd /tang rec', oursRec],
    ['tangd /rec', tangRec],
  ] as const) {
    const w = await runLoad({ concurrency: 4, requests: 100, fn })
    if (w.errors > 0) throw new Error(`warm-up of ${name} failed: ${w.firstError ?? 'unknown'}`)
  }

  const rows: ReportRow[] = []
  const cpuRows: string[][] = []
  for (const c of concurrencies) {
    log(`  c=${c}: unlock exchange, unlockd /tang rec, tangd /rec, ${durationMs} ms each ...`)
    const ex = await measure(exchange, c, durationMs, server.pid, false)
    const tr = await measure(oursRec, c, durationMs, server.pid, false)
    const td = await measure(tangRec, c, durationMs, tang.pid, true)
    rows.push({ name: `unlock exchange c=${c}`, ours: ex.result, peer: td.result })
    if (c >= 16) {
      const x = td.result.rps > 0 ? ex.result.rps / td.result.rps : 0
      const p = td.result.p99Ms > 0 ? ex.result.p99Ms / td.result.p99Ms : Infinity
      ctx.targets.push(
        {
          suite: 'exchange',
          target: `c=${c}: unlock exchange req/s >= 4x tangd's`,
          measured: `${x.toFixed(2)}x (${ex.result.rps.toFixed(0)} vs ${td.result.rps.toFixed(0)} req/s)`,
          pass: x >= 4,
        },
        {
          suite: 'exchange',
          target: `c=${c}: unlock exchange p99 <= 0.5x tangd's`,
          measured: `${p.toFixed(2)}x (${ex.result.p99Ms.toFixed(0)} vs ${td.result.p99Ms.toFixed(0)} ms)`,
          pass: p <= 0.5,
        },
      )
    }
    rows.push({ name: `tang /rec c=${c}`, ours: tr.result, peer: td.result })
    cpuRows.push(
      [
        `unlock exchange c=${c}`,
        fmtNum(ex.serverCpuMs, 2),
        fmtNum(td.serverCpuMs, 2),
        ratio(ex.serverCpuMs, td.serverCpuMs),
        fmtNum(ex.clientCpuMs, 2),
        fmtNum(td.clientCpuMs, 2),
      ],
      [
        `tang /rec c=${c}`,
        fmtNum(tr.serverCpuMs, 2),
        fmtNum(td.serverCpuMs, 2),
        ratio(tr.serverCpuMs, td.serverCpuMs),
        fmtNum(tr.clientCpuMs, 2),
        fmtNum(td.clientCpuMs, 2),
      ],
    )
  }
  const rss = memMiB(server.pid)
  const backend = await ecmrBackend() // the server child inherits this process's environment
  printReport(rows, {
    title: `exchange: unlockd (child process, SQLite) vs Debian tangd, loopback, ${durationMs} ms per row`,
    oursLabel: 'unlockd',
    peerLabel: 'tangd',
    notes: [
      'unlock exchange = GET /v1/nonce + signed POST /v1/unlock (2 HTTP requests on one keep-alive connection, as the agent does; group commit: at most 1 fsync); tang /rec = unlockd /tang/HOST/rec',
      '  (policy, audit, McCallum-Relyea on P-521). Peer column: tangd /rec (one blinded exchange) in both row kinds.',
      'Fairness: closed loop; every exchange on a NEW TCP connection for all targets (the agent opens one per exchange,',
      '  clevis one curl per request; tang /rec is one request). tangd runs as Debian runs it: one tangd',
      '  process per connection (systemd-socket-activate --inetd -a). unlockd keeps its defaults (SQLite WAL,',
      '  synchronous=FULL, access log) except hostRateLimit "off" (one source address) and no scheduled KEK rotation.',
      `Client and servers share ${os.cpus().length} vCPUs (${os.cpus()[0]?.model ?? 'unknown'}); node ${process.version}.`,
      `unlockd server peak RSS: ${fmtNum(rss, 1)} MiB; its /rec runs on ${backend === 'libcrypto' ? 'the system libcrypto (OpenSSL nistp521)' : `${backend} (no usable system libcrypto.so.3)`}.`,
    ],
  })
  process.stdout.write(
    `\n${formatTable(['CPU ms per request', 'unlockd srv', 'tangd srv', 'srv x', 'client (ours)', 'client (tangd)'], cpuRows)}\n`,
  )
  process.stdout.write(
    'Server CPU: unlockd process (all threads) / tangd launcher + the per-connection tangd processes it reaped (/proc stat).\n',
  )
  process.stdout.write(
    'Client CPU: the load generator in this process (signing, HTTP, unblinding).\n\n',
  )
}
