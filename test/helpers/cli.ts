/**
 * Run the real `unlockd` bundle (dist/, built by `npm test`'s pretest) as a child process, with
 * a controlled environment. Secrets are passed through env or files, never argv.
 */
import { fileURLToPath } from 'node:url'
import { run } from './spawn.ts'

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

export async function runCli(
  args: string[],
  env: Record<string, string> = {},
  opts: { bundle?: string; stdin?: string | Uint8Array; timeoutMs?: number } = {},
): Promise<CliResult> {
  const r = await run(process.execPath, [opts.bundle ?? UNLOCKD, ...args], {
    cleanEnv: true,
    env: {
      PATH: process.env['PATH'] ?? '/usr/bin:/bin',
      HOME: process.env['HOME'] ?? '/root',
      ...env,
    },
    input: opts.stdin ?? '',
    timeoutMs: opts.timeoutMs,
  })
  let json: unknown
  try {
    json = JSON.parse(r.stdout)
  } catch {
    json = undefined
  }
  return { code: r.code, stdout: r.stdout, stderr: r.stderr, json, raw: r.raw }
}
