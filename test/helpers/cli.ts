/**
 * Run the real `unlockd` bundle (dist/, built by `npm test`'s pretest) as a child process, with
 * a controlled environment. Secrets are passed through env or files, never argv.
 */
import { spawn } from 'node:child_process'
import { fileURLToPath } from 'node:url'

export const UNLOCKD = fileURLToPath(new URL('../../dist/unlockd.mjs', import.meta.url))
export const UNLOCKD_AGENT = fileURLToPath(new URL('../../dist/unlockd-agent.mjs', import.meta.url))

export interface CliResult {
  code: number
  stdout: string
  stderr: string
  json: any
  /** stdout bytes as received (keys are binary-safe here). */
  raw: Buffer
}

export function runCli(
  args: string[],
  env: Record<string, string> = {},
  opts: { bundle?: string; stdin?: string | Uint8Array; timeoutMs?: number } = {},
): Promise<CliResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [opts.bundle ?? UNLOCKD, ...args], {
      env: {
        PATH: process.env['PATH'] ?? '/usr/bin:/bin',
        HOME: process.env['HOME'] ?? '/root',
        ...env,
      },
      stdio: ['pipe', 'pipe', 'pipe'],
    })
    let stdout = ''
    const chunks: Buffer[] = []
    let stderr = ''
    child.stdout.on('data', (d: Buffer) => {
      chunks.push(d)
      stdout += d.toString()
    })
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 60_000)
    child.on('error', reject)
    child.on('close', (code) => {
      clearTimeout(timer)
      let json: unknown
      try {
        json = JSON.parse(stdout)
      } catch {
        json = undefined
      }
      resolve({ code: code ?? -1, stdout, stderr, json, raw: Buffer.concat(chunks) })
    })
    child.stdin.end(opts.stdin)
  })
}
