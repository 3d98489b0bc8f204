/**
 * The escrow side of the boot tests, driven only through the real `unlockd` CLI (dist/unlockd.mjs):
 * `server init` and `server start` with TLS on 127.0.0.1 (a throwaway self-signed certificate
 * whose names include 10.0.2.100, the address the guest uses), enrollment tokens, policy, TOTP
 * approvals and shred, exactly as an operator would type them.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { readFile, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import type { ExecutionContext } from 'ava'
import { authenticator } from 'otplib'
import { mustRun } from '../helpers/root.ts'
import { run, type RunResult } from '../helpers/spawn.ts'
import { REPO } from './env.ts'

export const CLI = join(REPO, 'dist/unlockd.mjs')
/** The address and port the guest reaches the server at (guestfwd). */
export const GUEST_HOST = '10.0.2.100'
export const GUEST_PORT = 8443

export type CliResult = RunResult

export function cli(
  args: readonly string[],
  env: NodeJS.ProcessEnv,
  stdin?: string,
): Promise<CliResult> {
  return run(process.execPath, [CLI, ...args], { env, input: stdin ?? '' })
}

async function mustCli(
  args: readonly string[],
  env: NodeJS.ProcessEnv,
  stdin?: string,
): Promise<string> {
  const r = await cli(args, env, stdin)
  if (r.code !== 0)
    throw new Error(`unlockd ${args.join(' ')} exited ${r.code}: ${r.stderr.trim()}`)
  return r.stdout
}

export interface Escrow {
  port: number
  url: string
  caFile: string
  /** Environment for operator commands (URL, token, CA). */
  env: NodeJS.ProcessEnv
  log(): Promise<string>
  /** Run an operator command (with `stdin`, e.g. a TOTP code); it must succeed. */
  op(args: readonly string[], stdin?: string): Promise<string>
  /** A TOTP code of the admin operator that was not used before (codes work once). */
  freshCode(): Promise<string>
}

export async function startEscrow(
  t: Pick<ExecutionContext, 'teardown'>,
  dir: string,
): Promise<Escrow> {
  const caFile = join(dir, 'tls.crt')
  const keyFile = join(dir, 'tls.key')
  await mustRun('openssl', [
    'req',
    '-x509',
    '-newkey',
    'ec',
    '-pkeyopt',
    'ec_paramgen_curve:P-256',
    '-nodes',
    '-keyout',
    keyFile,
    '-out',
    caFile,
    '-days',
    '2',
    '-subj',
    '/CN=unlockd-boot-test',
    '-addext',
    `subjectAltName=IP:${GUEST_HOST},IP:127.0.0.1`,
  ])
  const passFile = join(dir, 'keystore.pass')
  await writeFile(passFile, 'boot-test keystore passphrase\n', { mode: 0o600 })
  const data = join(dir, 'server')
  // Unattended init: the first operator's TOTP secret goes to a 0600 file, not the terminal.
  const totpFile = join(dir, 'admin.totp')
  const init = JSON.parse(
    await mustCli(
      [
        'server',
        'init',
        '--data',
        data,
        '--passphrase-file',
        passFile,
        '--totp-file',
        totpFile,
        '--json',
      ],
      {},
    ),
  ) as { token: string }
  const logFile = join(dir, 'server.log')
  const child: ChildProcess = spawn(
    process.execPath,
    [
      CLI,
      'server',
      'start',
      '--data',
      data,
      '--passphrase-file',
      passFile,
      '--listen',
      '127.0.0.1:0',
      '--tls-cert',
      caFile,
      '--tls-key',
      keyFile,
    ],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  )
  let log = ''
  child.stdout?.on('data', (c: Buffer) => (log += c.toString('utf8')))
  child.stderr?.on('data', (c: Buffer) => (log += c.toString('utf8')))
  t.teardown(async () => {
    if (child.exitCode === null) {
      child.kill('SIGTERM')
      await new Promise((r) => setTimeout(r, 200))
      if (child.exitCode === null) child.kill('SIGKILL')
    }
    await writeFile(logFile, log)
  })
  const port = await new Promise<number>((resolve, reject) => {
    const deadline = setTimeout(
      () => reject(new Error(`the escrow server did not start within 120 s:\n${log}`)),
      120_000,
    )
    const poll = setInterval(() => {
      const m = /listening on https:\/\/127\.0\.0\.1:(\d+)/.exec(log)
      if (m) {
        clearInterval(poll)
        clearTimeout(deadline)
        resolve(Number(m[1]))
      } else if (child.exitCode !== null) {
        clearInterval(poll)
        clearTimeout(deadline)
        reject(new Error(`the escrow server exited ${child.exitCode}:\n${log}`))
      }
    }, 50)
  })
  const url = `https://127.0.0.1:${port}`
  const env = {
    UNLOCKD_URL: url,
    UNLOCKD_TOKEN: init.token,
    UNLOCKD_CA: caFile,
    UNLOCKD_CONFIG: join(dir, 'no-cli.json'),
  }
  const secret = new URL((await readFile(totpFile, 'utf8')).trim()).searchParams.get('secret') ?? ''
  let lastStep = -1
  return {
    port,
    url,
    caFile,
    env,
    log: async () => log || (await readFile(logFile, 'utf8').catch(() => '')),
    op: (args, stdin) => mustCli(args, env, stdin),
    async freshCode() {
      // A code is accepted once per 30 s step: wait for the next step if this one was used.
      let step = Math.floor(Date.now() / 30_000)
      if (step <= lastStep) {
        await new Promise((r) => setTimeout(r, (lastStep + 1) * 30_000 - Date.now() + 200))
        step = Math.floor(Date.now() / 30_000)
      }
      lastStep = step
      return authenticator.generate(secret)
    },
  }
}
