/**
 * `npm run bench [-- SUITE] [options]`: unlockd benchmarks against Debian's tang (and clevis) on
 * loopback, each printed as a table with ratios.
 *
 *   npm run bench                         # suite "exchange" (default)
 *   npm run bench -- agent                # agent start to key in hand vs clevis decrypt
 *   npm run bench -- storm --hosts 10000  # N hosts unlock at once (SQLite, then 2 instances on PostgreSQL)
 *   npm run bench -- encrypt              # in-place LUKS2 conversion vs openssl aes-256-xts and dd
 *   npm run bench -- all
 *
 * Options: --duration MS (exchange: per row, default 5000), --concurrency 1,16,64, --hosts N
 * (storm, default 10000), --inflight N (storm, default 256), --runs N (agent, default 20),
 * --size-mib N (encrypt, default 256).
 * Builds dist/ first. Installs tang, clevis, jose, socat (and cryptsetup-bin for `agent`) with
 * apt-get when missing (needs root then). All traffic stays on 127.0.0.1.
 */
import { spawnSync } from 'node:child_process'
import { parseArgs } from 'node:util'
import { ROOT } from './lib/unlockd-server.ts'
import { formatTargets } from './lib/targets.ts'
import type { SuiteContext } from './suites/context.ts'

const SUITES = ['exchange', 'agent', 'storm', 'encrypt'] as const
type Suite = (typeof SUITES)[number]

function fail(message: string): never {
  process.stderr.write(`[ERROR] bench: ${message}\n`)
  process.exit(2)
}

const { values, positionals } = parseArgs({
  args: process.argv.slice(2),
  allowPositionals: true,
  options: {
    duration: { type: 'string' },
    concurrency: { type: 'string' },
    hosts: { type: 'string' },
    inflight: { type: 'string' },
    runs: { type: 'string' },
    'size-mib': { type: 'string' },
    'no-build': { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  },
})
if (values.help) {
  process.stdout.write(
    'Usage: npm run bench -- [exchange|agent|storm|encrypt|all] [--duration MS] [--concurrency 1,16,64] [--hosts N] [--inflight N] [--runs N] [--size-mib N]\n',
  )
  process.exit(0)
}
const wanted = positionals[0] ?? 'exchange'
if (positionals.length > 1 || (wanted !== 'all' && !SUITES.includes(wanted as Suite)))
  fail(`unknown suite ${positionals.join(' ')} (choose ${SUITES.join(', ')} or all)`)

function intOpt(name: string, v: string | undefined, min: number, max: number): number | undefined {
  if (v === undefined) return undefined
  const n = Number(v)
  if (!Number.isInteger(n) || n < min || n > max)
    fail(`--${name} must be an integer in ${min}..${max}`)
  return n
}

const cleanups: (() => Promise<void>)[] = []
const started = performance.now()
const log = (line: string): void => {
  process.stderr.write(
    `[${((performance.now() - started) / 1000).toFixed(1).padStart(6)} s] ${line}\n`,
  )
}
const ctx: SuiteContext = { log, targets: [], onCleanup: (fn) => cleanups.push(fn) }
const duration = intOpt('duration', values.duration, 100, 600_000)
if (duration !== undefined) ctx.durationMs = duration
const hosts = intOpt('hosts', values.hosts, 1, 1_000_000)
if (hosts !== undefined) ctx.hosts = hosts
const inflight = intOpt('inflight', values.inflight, 1, 4096)
if (inflight !== undefined) ctx.inflight = inflight
const runs = intOpt('runs', values.runs, 1, 1000)
if (runs !== undefined) ctx.runs = runs
const sizeMiB = intOpt('size-mib', values['size-mib'], 64, 65536)
if (sizeMiB !== undefined) ctx.sizeMiB = sizeMiB - (sizeMiB % 4)
if (values.concurrency !== undefined) {
  const list = values.concurrency.split(',').map((s) => Number(s.trim()))
  if (list.some((n) => !Number.isInteger(n) || n < 1 || n > 1024))
    fail('--concurrency must be integers in 1..1024')
  ctx.concurrencies = list
}

async function cleanup(): Promise<void> {
  while (cleanups.length > 0) {
    const fn = cleanups.pop() as () => Promise<void>
    const t0 = performance.now()
    try {
      await fn()
      if (process.env['BENCH_DEBUG']) log(`cleanup took ${(performance.now() - t0).toFixed(0)} ms`)
    } catch (e) {
      log(`cleanup failed: ${e instanceof Error ? e.message : String(e)}`)
    }
  }
}

let interrupted = false
const onSignal = (sig: NodeJS.Signals): void => {
  if (interrupted) return
  interrupted = true
  log(`${sig}: stopping servers ...`)
  void cleanup().finally(() => process.exit(130))
}
process.once('SIGINT', onSignal)
process.once('SIGTERM', onSignal)

if (!values['no-build']) {
  const b = spawnSync(process.execPath, ['tools/build.mjs'], {
    cwd: ROOT,
    stdio: ['ignore', 'ignore', 'inherit'],
  })
  if (b.status !== 0) fail('npm run build failed')
}

const suites: Suite[] = wanted === 'all' ? [...SUITES] : [wanted as Suite]
let failed = false
for (const s of suites) {
  const t0 = performance.now()
  log(`== bench ${s} ==`)
  try {
    if (s === 'exchange') await (await import('./suites/exchange.ts')).exchangeSuite(ctx)
    else if (s === 'agent') await (await import('./suites/agent.ts')).agentSuite(ctx)
    else if (s === 'storm') await (await import('./suites/storm.ts')).stormSuite(ctx)
    else await (await import('./suites/encrypt.ts')).encryptSuite(ctx)
  } catch (e) {
    failed = true
    log(`[ERROR] bench ${s}: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}`)
  } finally {
    await cleanup()
  }
  log(`== bench ${s} done in ${((performance.now() - t0) / 1000).toFixed(1)} s ==`)
}
if (wanted === 'all') {
  for (const [suite, target] of [
    ['boot', 'time to real init above the plain-keyfile floor <= 0.5x clevis-initramfs'],
    ['tls', 'an HTTPS row for each exchange and storm figure'],
  ] as const)
    if (!ctx.targets.some((t) => t.suite === suite))
      ctx.targets.push({ suite, target, measured: 'no suite measures it yet', pass: undefined })
}
if (ctx.targets.length > 0) process.stdout.write(`\n${formatTargets(ctx.targets)}`)
process.removeListener('SIGINT', onSignal)
process.removeListener('SIGTERM', onSignal)
process.exitCode = failed ? 1 : 0
