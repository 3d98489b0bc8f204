/**
 * Tang peer baseline: Debian's tangd (one process per connection, as Debian's tangd.socket runs
 * it) answering blinded `/rec` exchanges, at concurrency 1, 16 and 64 for 5 s each.
 *
 *   node --import=tsx/esm bench/tang-only.ts
 *
 * Env: BENCH_DURATION_MS (default 5000), BENCH_CONCURRENCY (default "1,16,64").
 * Installs tang clevis jose socat with apt-get when a binary is missing (needs root then).
 * All traffic stays on 127.0.0.1.
 */
import os from 'node:os'
import { ensureDebianPackages } from './lib/apt.ts'
import { printReport } from './lib/report.ts'
import {
  benchTangRec,
  fetchAdv,
  startTangPeer,
  TANG_PACKAGES,
  type TangPeer,
} from './lib/tang-peer.ts'

function parseConcurrency(text: string | undefined): number[] {
  if (text === undefined || text === '') return [1, 16, 64]
  const list = text.split(',').map((s) => Number(s.trim()))
  if (list.some((n) => !Number.isInteger(n) || n < 1 || n > 1024))
    throw new RangeError('BENCH_CONCURRENCY must be integers in 1..1024')
  return list
}

const durationMs = Number(process.env['BENCH_DURATION_MS'] ?? 5000)
if (!(durationMs > 0 && durationMs <= 600_000))
  throw new RangeError('BENCH_DURATION_MS must be in (0, 600000]')
const concurrencies = parseConcurrency(process.env['BENCH_CONCURRENCY'])
const log = (line: string): void => {
  process.stderr.write(`${line}\n`)
}

await ensureDebianPackages(TANG_PACKAGES, { log })

let peer: TangPeer | undefined
const onSignal = (): void => {
  void (peer?.stop() ?? Promise.resolve()).finally(() => process.exit(130))
}
process.once('SIGINT', onSignal)
process.once('SIGTERM', onSignal)

try {
  peer = await startTangPeer()
  log(`tangd up at ${peer.url} via ${peer.launcher} (keys in ${peer.keyDir})`)
  const adv = await fetchAdv(peer.url)
  const results = await benchTangRec(peer.url, adv, { concurrencies, durationMs, log })
  printReport(
    results.map((r) => ({ name: `POST /rec c=${r.concurrency}`, peer: r.result })),
    {
      title: `tang /rec baseline: Debian tangd via ${peer.launcher} (one tangd process per connection), ${durationMs} ms per level`,
      peerLabel: 'tang',
      notes: [
        'Method: closed loop; every request is one blinded McCallum-Relyea exchange (X = C + E, reply unblinded and checked)',
        '  on a NEW TCP connection (node:http agent:false, Connection: close), as clevis does with one curl per request.',
        '  Keep-alive is deliberately not used: tangd writes each response in two write()s without TCP_NODELAY, so on a',
        '  reused connection Nagle + delayed ACK add ~40 ms per request; that artefact is not tang.',
        `Machine: ${os.cpus().length} vCPU (${os.cpus()[0]?.model ?? 'unknown'}), node ${process.version}; load generator and server share the CPUs.`,
      ],
    },
  )
} finally {
  await peer?.stop()
  process.removeListener('SIGINT', onSignal)
  process.removeListener('SIGTERM', onSignal)
}
