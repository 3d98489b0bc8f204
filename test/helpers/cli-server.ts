/**
 * The real server as a child process (`node dist/unlockd.mjs server start`), so a test can kill
 * it with a real SIGKILL (crash tests) or start it with a given passphrase file. Listens on
 * 127.0.0.1 port 0; the URL is read from its "listening on" line. Killed in teardown.
 */
import type { ExecutionContext } from 'ava'
import { spawn, type ChildProcess } from 'node:child_process'
import { readFileSync, statSync, writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { UNLOCKD, runCli } from './cli.ts'
import { secretOfUri } from './server.ts'

export interface CliServer {
  url: string
  child: ChildProcess
  /** Resolves when the process is gone, with how it ended. */
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>
  output(): string
  stop(): Promise<void>
}

export interface DataDir {
  dir: string
  passFile: string
  token: string
  /** The init operator's TOTP secret (base32), read from the 0600 file of `--totp-file`. */
  secret: string
}

/**
 * `unlockd server init` into `dir` with a passphrase file and `--totp-file`, the unattended way;
 * returns the init operator's token and TOTP secret.
 */
export async function initDataDirCli(
  dir: string,
  passphrase = 'crash test passphrase',
): Promise<DataDir> {
  const base = join(dir, '..', `${dir.split('/').pop()}`)
  const passFile = `${base}.pass`
  const totpFile = `${base}.totp`
  writeFileSync(passFile, `${passphrase}\n`, { mode: 0o600 })
  const r = await runCli([
    'server',
    'init',
    '--data',
    dir,
    '--passphrase-file',
    passFile,
    '--totp-file',
    totpFile,
    '--json',
  ])
  if (r.code !== 0) throw new Error(`server init failed (${r.code}): ${r.stderr}`)
  if ((statSync(totpFile).mode & 0o777) !== 0o600) throw new Error(`${totpFile} is not 0600`)
  const secret = secretOfUri(readFileSync(totpFile, 'utf8').trim())
  return { dir, passFile, token: r.json.token as string, secret }
}

/**
 * Start the server. With `expectDeath`, resolve once the process has died (a fault point fired
 * before it listened) instead of failing.
 */
export function startCliServer(
  t: ExecutionContext,
  d: { dir: string; passFile: string },
  env: Record<string, string> = {},
  opts: { expectDeath?: boolean; timeoutMs?: number } = {},
): Promise<CliServer> {
  const child = spawn(
    process.execPath,
    [
      UNLOCKD,
      'server',
      'start',
      '--data',
      d.dir,
      '--listen',
      '127.0.0.1:0',
      '--passphrase-file',
      d.passFile,
    ],
    {
      env: {
        PATH: process.env['PATH'] ?? '/usr/bin:/bin',
        HOME: process.env['HOME'] ?? '/root',
        ...env,
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  )
  let out = ''
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.on('exit', (code, signal) => resolve({ code, signal })),
  )
  let alive = true
  void exited.then(() => {
    alive = false
  })
  t.teardown(async () => {
    if (alive) {
      child.kill('SIGKILL')
      await exited
    }
  })
  const server = (url: string): CliServer => ({
    url,
    child,
    exited,
    output: () => out,
    async stop() {
      if (!alive) return
      child.kill('SIGTERM')
      const timer = setTimeout(() => child.kill('SIGKILL'), 10_000)
      await exited
      clearTimeout(timer)
    },
  })
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      child.kill('SIGKILL')
      reject(new Error(`server did not start within ${opts.timeoutMs ?? 120_000} ms:\n${out}`))
    }, opts.timeoutMs ?? 120_000)
    const onData = (d: Buffer): void => {
      out += d.toString()
      const m = /listening on (http:\/\/\S+)/.exec(out)
      if (m) {
        clearTimeout(timer)
        resolve(server(m[1] as string))
      }
    }
    child.stdout?.on('data', onData)
    child.stderr?.on('data', onData)
    void exited.then((how) => {
      clearTimeout(timer)
      if (opts.expectDeath) resolve(server(''))
      else reject(new Error(`server exited before listening (${how.signal ?? how.code}):\n${out}`))
    })
  })
}
