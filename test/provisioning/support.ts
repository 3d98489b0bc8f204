/**
 * Helpers for the provisioning tests: run programs with bounded time, run the built CLI, start
 * `unlockd server start` as a real process, and render the Terraform module's cloud-init
 * user-data with the real terraform binary.
 */
import type { ExecutionContext } from 'ava'
import { spawn } from 'node:child_process'
import { run as spawnRun, type RunOptions, type RunResult } from '../helpers/spawn.ts'
import { existsSync } from 'node:fs'
import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
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
  /** The server's process (after the wrappers exec'd it). */
  pid: number
  stderr(): string
}

/**
 * Start `node BUNDLE server start ... --listen 127.0.0.1:0` and wait (bounded) for the line that
 * names its URL. The process is stopped with SIGTERM (then SIGKILL) in teardown.
 */
export function startCliServer(
  t: ExecutionContext,
  bundle: string,
  args: readonly string[],
  env: Record<string, string> = {},
): Promise<CliServer> {
  return startServerProcess(
    t,
    process.execPath,
    [bundle, 'server', 'start', ...args, '--listen', '127.0.0.1:0'],
    env,
  )
}

/**
 * Start a program that runs `unlockd server start` (directly, or through a wrapper that execs
 * it) and wait (bounded) for the line that names its URL. Stopped with SIGTERM (then SIGKILL)
 * in teardown.
 */
export async function startServerProcess(
  t: ExecutionContext,
  cmd: string,
  args: readonly string[],
  env: Record<string, string> = {},
): Promise<CliServer> {
  const child = spawn(cmd, [...args], {
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
    const timer = setTimeout(
      () => reject(new Error(`server did not start within 120 s: ${err}`)),
      120_000,
    )
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
  return { url, pid: child.pid ?? 0, stderr: () => err }
}

/** Inputs of provisioning/terraform/modules/unlockd-enrollment/user-data (its variables). */
export interface UserDataInputs {
  server_url: string
  host_name: string
  enroll_token: string
  ca_pem?: string
  agent_package_url: string
  agent_package_sha256: string
  luks_volumes?: { device: string; name: string }[]
  luks_existing_key_file?: string
  fscrypt_dirs?: { path: string; name: string }[]
  fscrypt_enable_ext4_encrypt?: boolean
  manage_service?: boolean
}

export const USER_DATA_MODULE = join(
  REPO,
  'provisioning/terraform/modules/unlockd-enrollment/user-data',
)

/**
 * Renders the cloud-init user-data with the real terraform binary: the module's provider-free
 * user-data sub-module is applied in a scratch copy (no provider, no network) and its output
 * read back. Throws with terraform's own message when it refuses the inputs.
 */
export async function renderUserData(t: ExecutionContext, inputs: UserDataInputs): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'unlockd-tf-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  await cp(USER_DATA_MODULE, dir, { recursive: true })
  await writeFile(join(dir, 'terraform.tfvars.json'), JSON.stringify(inputs), { mode: 0o600 })
  await writeFile(join(dir, 'terraformrc'), '')
  const env = {
    TF_CLI_CONFIG_FILE: join(dir, 'terraformrc'),
    TF_IN_AUTOMATION: '1',
    CHECKPOINT_DISABLE: '1',
  }
  for (const args of [
    ['init', '-input=false', '-no-color', '-backend=false'],
    ['apply', '-auto-approve', '-input=false', '-no-color'],
  ]) {
    const r = await run('terraform', args, { cwd: dir, env })
    if (r.code !== 0) throw new Error(`terraform ${args[0]} failed: ${r.stdout}${r.stderr}`)
  }
  const out = await run('terraform', ['output', '-raw', '-no-color', 'user_data'], {
    cwd: dir,
    env,
  })
  if (out.code !== 0) throw new Error(`terraform output failed: ${out.stderr}`)
  return out.stdout
}
