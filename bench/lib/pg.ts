/**
 * PostgreSQL for the storm benchmark: the throwaway cluster of `.ci/pg.sh` (127.0.0.1:55432,
 * test settings: fsync and synchronous_commit off), and a fresh database per run, dropped after.
 * `UNLOCKD_TEST_PG_URL` wins when set; otherwise `.ci/pg.sh` is run (it installs PostgreSQL with
 * apt-get when missing, creates the cluster once and starts it). A cluster this module started
 * is stopped again by `release()`.
 */
import { adminQuery } from '../../test/helpers/pg.ts'
import { spawn } from 'node:child_process'
import { existsSync } from 'node:fs'
import { randomBytes } from 'node:crypto'
import net from 'node:net'
import path from 'node:path'
import { ROOT } from './unlockd-server.ts'

const PG_SH = path.join(ROOT, '.ci/pg.sh')

function sh(args: readonly string[]): Promise<{ code: number | null; out: string; err: string }> {
  return new Promise((resolve, reject) => {
    const child = spawn('bash', [PG_SH, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
    let out = ''
    let err = ''
    child.stdout.on('data', (b: Buffer) => (out += b.toString()))
    child.stderr.on('data', (b: Buffer) => (err += b.toString()))
    const timer = setTimeout(() => child.kill('SIGKILL'), 15 * 60_000)
    child.on('error', reject)
    child.on('close', (code) => {
      clearTimeout(timer)
      resolve({ code, out, err })
    })
  })
}

async function reachable(url: string): Promise<boolean> {
  try {
    await adminQuery(url, 'SELECT 1')
    return true
  } catch {
    return false
  }
}

export interface BenchPg {
  /** URL of a fresh, empty database for this run. */
  url: string
  /** Where the base URL came from (for the report). */
  source: string
  release(): Promise<void>
}

/** A fresh database, or the reason PostgreSQL cannot be used here. */
export async function benchPostgres(
  log: (line: string) => void,
): Promise<BenchPg | { unavailable: string }> {
  let base = process.env['UNLOCKD_TEST_PG_URL'] ?? ''
  let source = 'UNLOCKD_TEST_PG_URL'
  let started = false
  if (base === '') {
    if (!existsSync(PG_SH))
      return { unavailable: '.ci/pg.sh is missing and UNLOCKD_TEST_PG_URL is not set' }
    source = '.ci/pg.sh'
    // A bare TCP probe: a half-done PostgreSQL login would hold a backend (and block DROP DATABASE) for a minute.
    const port = Number(process.env['UNLOCKD_PG_PORT'] ?? 55432)
    const wasUp = await new Promise<boolean>((resolve) => {
      const sock = net.connect({ host: '127.0.0.1', port })
      const done = (up: boolean): void => {
        sock.destroy()
        resolve(up)
      }
      sock.setTimeout(3000, () => done(false))
      sock.once('connect', () => done(true))
      sock.once('error', () => done(false))
    })
    log(`starting the test PostgreSQL with .ci/pg.sh${wasUp ? ' (already running)' : ''} ...`)
    const r = await sh([])
    if (r.code !== 0)
      return { unavailable: `.ci/pg.sh failed: ${r.err.trim().split('\n').slice(-3).join(' ')}` }
    base = r.out.trim().split('\n').pop() ?? ''
    started = !wasUp
  }
  if (!(await reachable(base))) return { unavailable: `PostgreSQL at ${source} is not reachable` }
  const name = `unlockd_bench_${randomBytes(6).toString('hex')}`
  await adminQuery(base, `CREATE DATABASE ${name}`)
  const u = new URL(base)
  u.pathname = `/${name}`
  return {
    url: u.toString(),
    source,
    async release() {
      await adminQuery(base, `DROP DATABASE IF EXISTS ${name} WITH (FORCE)`).catch((e: unknown) =>
        log(`drop ${name}: ${String(e)}`),
      )
      if (started) await sh(['stop'])
    },
  }
}
