/**
 * Suite `agent`: from process start to volume key in hand, the way an initramfs gets it.
 *
 * - unlockd: `node dist/unlockd-agent.mjs unlock --config DIR --volume root --key-stdout`
 *   (the self-contained agent bundle) against a server on loopback, for a LUKS2 image enrolled
 *   with `unlockd enroll` (UNLOCKD_LUKS_PBKDF=fast: enrollment is not measured). One run = node
 *   start-up, config and key loading, nonce + signed unlock, opening the escrow blob, printing the
 *   passphrase. The key printed by the first run is checked with `cryptsetup open --test-passphrase`.
 * - clevis: `clevis decrypt` of a secret bound with `clevis encrypt tang`, against Debian's tangd
 *   and against unlockd's own Tang endpoint (`/tang/HOST`), on the same machine.
 * Medians of N runs each (default 20), interleaved; peak RSS from GNU time (`%M`, the largest
 * process of the run: for clevis, one of the ~20 jose/curl/bash processes it spawns).
 */
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs'
import { rm } from 'node:fs/promises'
import os from 'node:os'
import path from 'node:path'
import { ensureDebianPackages, hasBinary } from '../lib/apt.ts'
import { median } from '../lib/proc.ts'
import { fmtNum, formatTable, ratio } from '../lib/report.ts'
import { startTangPeer, TANG_PACKAGES, type TangPeer } from '../lib/tang-peer.ts'
import {
  adminCall,
  AGENT_CLI,
  initDataDir,
  startUnlockdServer,
  type DataDir,
  type UnlockdServer,
} from '../lib/unlockd-server.ts'
import type { SuiteContext } from './context.ts'

interface Run {
  code: number | null
  stdout: Buffer
  stderr: string
  ms: number
}

function run(
  cmd: string,
  args: readonly string[],
  opts: { input?: string | Buffer; env?: Record<string, string>; timeoutMs?: number } = {},
): Promise<Run> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now()
    const child = spawn(cmd, args, {
      stdio: ['pipe', 'pipe', 'pipe'],
      env: { ...process.env, ...opts.env },
    })
    const out: Buffer[] = []
    let err = ''
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000)
    child.stdout.on('data', (b: Buffer) => out.push(b))
    child.stderr.on('data', (b: Buffer) => {
      if (err.length < 16_384) err += b.toString()
    })
    child.on('error', (e) => {
      clearTimeout(timer)
      reject(e)
    })
    child.on('close', (code) => {
      const ms = performance.now() - t0
      clearTimeout(timer)
      resolve({ code, stdout: Buffer.concat(out), stderr: err, ms })
    })
    child.stdin.on('error', () => {})
    child.stdin.end(opts.input ?? '')
  })
}

async function mustRun(
  cmd: string,
  args: readonly string[],
  opts: Parameters<typeof run>[2] = {},
): Promise<Run> {
  const r = await run(cmd, args, opts)
  if (r.code !== 0)
    throw new Error(
      `${cmd} ${args.join(' ')} exited ${String(r.code)}: ${r.stderr.trim().slice(-800)}`,
    )
  return r
}

/** Peak RSS (MiB) of one run under GNU time. */
async function peakRss(
  cmd: string,
  args: readonly string[],
  input: string | Buffer | undefined,
): Promise<number | undefined> {
  if (!hasBinary('/usr/bin/time')) return undefined
  const r = await run(
    '/usr/bin/time',
    ['-f', 'UNLOCKD_MAXRSS_KB=%M', cmd, ...args],
    input === undefined ? {} : { input },
  )
  const m = /UNLOCKD_MAXRSS_KB=(\d+)/.exec(r.stderr)
  return r.code === 0 && m ? Number(m[1]) / 1024 : undefined
}

interface Series {
  name: string
  times: number[]
  rss?: number | undefined
}

function row(s: Series, base: Series | undefined): string[] {
  const sorted = [...s.times].sort((a, b) => a - b)
  const p90 = sorted[Math.min(sorted.length - 1, Math.ceil(0.9 * sorted.length) - 1)]
  const med = median(s.times)
  return [
    s.name,
    String(s.times.length),
    fmtNum(med, 1),
    fmtNum(p90, 1),
    fmtNum(sorted[0], 1),
    fmtNum(sorted[sorted.length - 1], 1),
    base === undefined || base === s ? '1.00x' : ratio(med, median(base.times)),
    fmtNum(s.rss, 1),
  ]
}

export async function agentSuite(ctx: SuiteContext): Promise<void> {
  const { log } = ctx
  const runs = ctx.runs ?? 20
  await ensureDebianPackages(
    [
      ...TANG_PACKAGES,
      { name: 'clevis-luks', binaries: ['clevis-luks-bind'] },
      { name: 'cryptsetup-bin', binaries: ['cryptsetup'] },
      { name: 'time', binaries: ['/usr/bin/time'] },
    ],
    { log },
  )

  let data: DataDir | undefined
  let server: UnlockdServer | undefined
  let tang: TangPeer | undefined
  const work = mkdtempSync(path.join(os.tmpdir(), 'unlockd-bench-agent-'))
  ctx.onCleanup(async () => {
    await server?.stop()
    await tang?.stop()
    await data?.remove()
    await rm(work, { recursive: true, force: true })
  })
  data = await initDataDir()
  server = await startUnlockdServer(data)
  tang = await startTangPeer()
  log(`unlockd at ${server.url}, tangd at ${tang.url}`)

  // A LUKS2 image enrolled by the real agent.
  const img = path.join(work, 'root.img')
  const keyFile = path.join(work, 'initial.key')
  const cfg = path.join(work, 'etc-unlockd')
  writeFileSync(img, Buffer.alloc(0))
  await mustRun('truncate', ['-s', '32M', img])
  writeFileSync(keyFile, 'bench-initial-passphrase', { mode: 0o600 })
  await mustRun('cryptsetup', [
    'luksFormat',
    '--type',
    'luks2',
    '--batch-mode',
    '--pbkdf',
    'pbkdf2',
    '--pbkdf-force-iterations',
    '1000',
    '--key-file',
    keyFile,
    img,
  ])
  const { token } = (await adminCall(server, 'POST', '/tokens', {
    host: 'bench-agent',
    ttlSeconds: 600,
  })) as { token: string }
  const tokenFile = path.join(work, 'token')
  writeFileSync(tokenFile, token, { mode: 0o600 })
  await mustRun(
    process.execPath,
    [
      AGENT_CLI,
      'enroll',
      '--server',
      server.url,
      '--token-file',
      tokenFile,
      '--name',
      'bench-agent',
      '--config',
      cfg,
      '--luks',
      `${img}:root`,
      '--existing-key-file',
      keyFile,
      '--json',
    ],
    {
      env: { UNLOCKD_LUKS_PBKDF: 'fast' },
      timeoutMs: 120_000,
    },
  )
  const agentArgs = [AGENT_CLI, 'unlock', '--config', cfg, '--volume', 'root', '--key-stdout']
  const first = await mustRun(process.execPath, agentArgs)
  const keyPath = path.join(work, 'released.key')
  writeFileSync(keyPath, first.stdout, { mode: 0o600 })
  await mustRun('cryptsetup', ['open', '--test-passphrase', '--key-file', keyPath, img])
  log(`agent enrolled ${img}; the released passphrase opens it (cryptsetup --test-passphrase)`)

  // clevis bindings: to tangd and to an unlockd Tang host.
  await adminCall(server, 'POST', '/hosts', { name: 'bench-clevis', tang: true }, { totp: true })
  const secret = readFileSync(keyPath, 'utf8')
  const jweTangd = (
    await mustRun('clevis', ['encrypt', 'tang', JSON.stringify({ url: tang.url }), '-y'], {
      input: secret,
    })
  ).stdout.toString()
  const jweOurs = (
    await mustRun(
      'clevis',
      ['encrypt', 'tang', JSON.stringify({ url: `${server.url}/tang/bench-clevis` }), '-y'],
      { input: secret },
    )
  ).stdout.toString()
  for (const jwe of [jweTangd, jweOurs]) {
    const r = await mustRun('clevis', ['decrypt'], { input: jwe })
    if (r.stdout.toString() !== secret) throw new Error('clevis decrypt returned the wrong secret')
  }

  const agent: Series = { name: 'unlockd agent unlock --key-stdout', times: [] }
  const clevisTangd: Series = { name: 'clevis decrypt (tangd)', times: [] }
  const clevisOurs: Series = { name: 'clevis decrypt (unlockd /tang)', times: [] }
  const nodeFloor: Series = { name: '(node -e 0: Node start-up alone)', times: [] }
  log(`  ${runs} runs each, interleaved ...`)
  for (let i = 0; i < runs; i++) {
    const a = await mustRun(process.execPath, agentArgs)
    if (!a.stdout.equals(first.stdout)) throw new Error('the agent printed a different key')
    agent.times.push(a.ms)
    const b = await mustRun('clevis', ['decrypt'], { input: jweTangd })
    clevisTangd.times.push(b.ms)
    const c = await mustRun('clevis', ['decrypt'], { input: jweOurs })
    clevisOurs.times.push(c.ms)
    nodeFloor.times.push((await mustRun(process.execPath, ['-e', '0'])).ms)
  }
  agent.rss = await peakRss(process.execPath, agentArgs, undefined)
  clevisTangd.rss = await peakRss('clevis', ['decrypt'], jweTangd)
  clevisOurs.rss = await peakRss('clevis', ['decrypt'], jweOurs)
  nodeFloor.rss = await peakRss(process.execPath, ['-e', '0'], undefined)
  const ours = median(agent.times)
  const theirs = median(clevisTangd.times)
  ctx.targets.push(
    {
      suite: 'agent',
      target: `start to key <= clevis decrypt's median (node ${process.version})`,
      measured: `${ours.toFixed(0)} vs ${theirs.toFixed(0)} ms (${(ours / theirs).toFixed(2)}x)`,
      pass: ours <= theirs,
    },
    {
      suite: 'agent',
      target: 'agent peak RSS <= 60 MiB',
      measured: agent.rss === undefined ? 'not measured' : `${agent.rss.toFixed(1)} MiB`,
      pass: agent.rss === undefined ? undefined : agent.rss <= 60,
    },
  )

  const title = `agent: process start to volume key in hand, median of ${runs} (ms), loopback`
  process.stdout.write(
    `${title}\n\n${formatTable(
      ['client', 'runs', 'median', 'p90', 'min', 'max', 'x clevis/tangd', 'peak RSS MiB'],
      [agent, clevisTangd, clevisOurs, nodeFloor].map((s) => row(s, clevisTangd)),
    )}\n\n`,
  )
  process.stdout.write(
    [
      'x = median / median of clevis decrypt against tangd (<1 is faster).',
      `unlockd agent: node ${process.version} running dist/unlockd-agent.mjs (one process: start-up, config, nonce + signed unlock,`,
      '  X25519 unsealing of the escrow blob); clevis: bash + ~16 jose and 1 curl processes per decrypt.',
      'Peak RSS: GNU time %M of one run (the largest single process of the run). The last row is the floor any Node client pays.',
      `Both servers on this machine; ${os.cpus().length} vCPUs shared with the clients.`,
      '',
    ].join('\n'),
  )
}
