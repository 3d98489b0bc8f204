/**
 * Helpers for the provisioning tests: run programs with bounded time, run the built CLI, start
 * `unlockd server start` as a real process, and render the cloud-init template the way
 * Terraform's templatefile() does for the plain placeholders it uses.
 */
import type { ExecutionContext } from 'ava'
import { spawn } from 'node:child_process'
import { run as spawnRun, type RunOptions, type RunResult } from '../helpers/spawn.ts'
import { existsSync } from 'node:fs'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..')
export const DIST_CLI = join(REPO, 'dist/unlockd.mjs')

export type { RunOptions, RunResult }

/** `run` of spawn.ts, in the repository by default. */
export function run(cmd: string, args: readonly string[], o: RunOptions = {}): Promise<RunResult> {
  return spawnRun(cmd, args, { cwd: REPO, ...o })
}

/** Run the built `unlockd` (dist/unlockd.mjs). */
export function cli(args: readonly string[], o: RunOptions = {}): Promise<RunResult> {
  return run(process.execPath, [DIST_CLI, ...args], o)
}

/** Fail early with the fix when the bundles were not built. */
export function requireBuild(t: ExecutionContext): boolean {
  if (existsSync(DIST_CLI)) return true
  t.fail('dist/unlockd.mjs is missing: run `npm run build` (npm run test:provisioning does)')
  return false
}

export interface CliServer {
  url: string
  stderr(): string
}

/**
 * Start `node BUNDLE server start ... --listen 127.0.0.1:0` and wait (bounded) for the line that
 * names its URL. The process is stopped with SIGTERM (then SIGKILL) in teardown.
 */
export async function startCliServer(t: ExecutionContext, bundle: string, args: readonly string[], env: Record<string, string> = {}): Promise<CliServer> {
  const child = spawn(process.execPath, [bundle, 'server', 'start', ...args, '--listen', '127.0.0.1:0'], {
    cwd: REPO,
    env: { ...process.env, ...env },
    stdio: ['ignore', 'ignore', 'pipe'],
  })
  let err = ''
  const exited = new Promise<void>((r) => child.once('exit', () => r()))
  t.teardown(async () => {
    if (child.exitCode !== null || child.signalCode !== null) return
    child.kill('SIGTERM')
    const killer = setTimeout(() => child.kill('SIGKILL'), 10_000)
    await exited
    clearTimeout(killer)
  })
  const url = await new Promise<string>((resolveUrl, reject) => {
    const timer = setTimeout(() => reject(new Error(`server did not start within 120 s: ${err}`)), 120_000)
    child.stderr?.on('data', (c: Buffer) => {
      err += c.toString('utf8')
      const m = /listening on (https?:\/\/\S+)/.exec(err)
      if (m?.[1]) {
        clearTimeout(timer)
        resolveUrl(m[1])
      }
    })
    child.once('exit', (code) => {
      clearTimeout(timer)
      reject(new Error(`server exited with ${code}: ${err}`))
    })
  })
  return { url, stderr: () => err }
}

/**
 * Terraform templatefile() for the subset our template allows: plain `${name}` placeholders.
 * Anything else Terraform would treat specially (`%{` directives, `$${` / `%%{` escapes,
 * expressions inside `${...}`) is refused, so rendering here is exactly what Terraform renders.
 * Like templatefile(), a placeholder without a value is an error; booleans render as true/false.
 */
export function renderTemplate(text: string, vars: Record<string, string | boolean | number>): string {
  if (/%\{|\$\$\{|%%\{/.test(text)) throw new Error('template uses Terraform directives or escapes; keep it to plain ${name} placeholders')
  for (const m of text.matchAll(/\$\{([^}]*)\}/g)) {
    if (!/^[a-z_][a-z0-9_]*$/.test(m[1] as string)) throw new Error(`template placeholder \${${m[1]}} is not a plain variable name`)
  }
  return text.replace(/\$\{([a-z_][a-z0-9_]*)\}/g, (_, name: string) => {
    const v = vars[name]
    if (v === undefined) throw new Error(`vars map does not contain key "${name}"`)
    return String(v)
  })
}

/** Placeholder names used by a template (for checking the module passes exactly these). */
export function templateVariables(text: string): string[] {
  return [...new Set([...text.matchAll(/\$\{([a-z_][a-z0-9_]*)\}/g)].map((m) => m[1] as string))].sort()
}
