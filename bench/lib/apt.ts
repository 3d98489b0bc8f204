/**
 * Install Debian packages for benchmark peers, but only when one of their binaries is missing.
 * Needs root when it has to install; never runs apt-get when everything is present.
 */
import { spawn } from 'node:child_process'
import { accessSync, constants as fsConstants } from 'node:fs'
import path from 'node:path'

export interface DebianPackage {
  /** Debian package name. */
  name: string
  /** Absolute paths, or bare names looked up on PATH, that the package provides. */
  binaries: readonly string[]
}

export interface EnsureResult {
  installed: string[]
  alreadyPresent: string[]
}

const PKG_NAME = /^[a-z0-9][a-z0-9+.-]+$/
const APT_TIMEOUT_MS = 15 * 60 * 1000

function isExecutable(file: string): boolean {
  try {
    accessSync(file, fsConstants.X_OK)
    return true
  } catch {
    return false
  }
}

/** True when `bin` (absolute path or bare name on PATH) is an executable file. */
export function hasBinary(bin: string): boolean {
  if (bin.includes('/')) return isExecutable(bin)
  return (process.env['PATH'] ?? '')
    .split(path.delimiter)
    .some((dir) => dir !== '' && isExecutable(path.join(dir, bin)))
}

/** Binaries of `pkg` that are not present. */
export function missingBinaries(pkg: DebianPackage): string[] {
  return pkg.binaries.filter((b) => !hasBinary(b))
}

function aptGet(args: readonly string[], log: (line: string) => void): Promise<void> {
  log(`+ apt-get ${args.join(' ')}`)
  return new Promise((resolve, reject) => {
    const child = spawn('apt-get', ['-o', 'DPkg::Lock::Timeout=600', ...args], {
      stdio: ['ignore', 'inherit', 'inherit'],
      env: { ...process.env, DEBIAN_FRONTEND: 'noninteractive' },
    })
    const timer = setTimeout(() => child.kill('SIGKILL'), APT_TIMEOUT_MS)
    child.on('error', (e) => {
      clearTimeout(timer)
      reject(e)
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      if (code === 0) resolve()
      else
        reject(new Error(`apt-get ${args[0] ?? ''} failed (${signal ?? `exit ${String(code)}`})`))
    })
  })
}

/**
 * Make sure every package's binaries exist; runs `apt-get update` + `apt-get install -y
 * --no-install-recommends` for the packages with a missing binary, and nothing otherwise.
 * Throws when installation is needed but impossible (not root, apt-get failure) or did not
 * provide the binaries.
 */
export async function ensureDebianPackages(
  pkgs: readonly DebianPackage[],
  opts: { log?: (line: string) => void } = {},
): Promise<EnsureResult> {
  const log = opts.log ?? ((line: string) => process.stderr.write(`${line}\n`))
  for (const p of pkgs) {
    if (!PKG_NAME.test(p.name))
      throw new RangeError(`invalid Debian package name ${JSON.stringify(p.name)}`)
  }
  const need = pkgs.filter((p) => missingBinaries(p).length > 0)
  const alreadyPresent = pkgs.filter((p) => !need.includes(p)).map((p) => p.name)
  if (need.length === 0) return { installed: [], alreadyPresent }
  const names = need.map((p) => p.name)
  log(`missing: ${need.map((p) => `${p.name} (${missingBinaries(p).join(', ')})`).join('; ')}`)
  if (typeof process.getuid === 'function' && process.getuid() !== 0) {
    throw new Error(
      `need root to install ${names.join(' ')}: run "sudo apt-get install -y ${names.join(' ')}" first`,
    )
  }
  if (!hasBinary('apt-get'))
    throw new Error(`apt-get not found; install ${names.join(' ')} by other means`)
  await aptGet(['update'], log)
  await aptGet(['install', '-y', '--no-install-recommends', ...names], log)
  const still = need.filter((p) => missingBinaries(p).length > 0)
  if (still.length > 0)
    throw new Error(
      `after apt-get install, still missing: ${still.map((p) => missingBinaries(p).join(', ')).join(', ')}`,
    )
  return { installed: names, alreadyPresent }
}
