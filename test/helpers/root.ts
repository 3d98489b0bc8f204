/**
 * Gate for system tests that need root (loop mounts, fscrypt ioctls, cryptsetup on images) and
 * a way to run the system tools they need.
 *
 * `rootTest` decides when the file loads: the test runs as usual when the machine can run it;
 * otherwise it is skipped with a loud banner and the reason in its title, except under CI
 * (`CI` set), where it fails: CI runs as root and a silent skip would hide lost coverage.
 *
 * @example
 * ```ts
 * rootTest('fscrypt locks on key removal', async (t) => { ... }, { bins: ['mkfs.ext4', 'mount'] })
 * ```
 */
import test, { type ExecutionContext } from 'ava'
import { accessSync, constants } from 'node:fs'
import { delimiter, join } from 'node:path'
import { mustRun as mustRunBytes, run, type RunResult } from './spawn.ts'

export interface RootNeeds {
  /** Programs that must be found in PATH or an sbin directory. */
  bins?: readonly string[]
  /** Run serially with the file's other serial tests (for tests that change process state). */
  serial?: boolean
}

const SBIN = ['/usr/local/sbin', '/usr/sbin', '/sbin']

/** Absolute path of program `name`, or undefined when it is not installed. */
export function findBin(name: string): string | undefined {
  const dirs = [...(process.env['PATH'] ?? '').split(delimiter).filter((d) => d !== ''), ...SBIN]
  for (const dir of dirs) {
    const candidate = join(dir, name)
    try {
      accessSync(candidate, constants.X_OK)
      return candidate
    } catch {
      // not here
    }
  }
  return undefined
}

/** Why this process cannot run a root test with `needs`, or undefined when it can. */
export function rootUnavailable(needs: RootNeeds = {}): string | undefined {
  if (process.getuid?.() !== 0) return 'needs root (CI runs the suite as root)'
  const missing = (needs.bins ?? []).filter((b) => findBin(b) === undefined)
  if (missing.length > 0)
    return `needs ${missing.join(', ')} (install the test dependencies: bash tools/test-deps.sh)`
  return undefined
}

const warned = new Set<string>()

function banner(title: string, why: string): void {
  if (warned.has(why)) return
  warned.add(why)
  const line = '!'.repeat(78)
  console.warn(`\n${line}\n!! SKIPPING ROOT TESTS: ${why}\n!! first one: ${title}\n${line}\n`)
}

/** Declare a test that needs root (and `needs.bins`); see the module comment for the rules. */
export function rootTest(
  title: string,
  impl: (t: ExecutionContext) => Promise<void> | void,
  needs: RootNeeds = {},
): void {
  const declare = needs.serial === true ? test.serial : test
  const why = rootUnavailable(needs)
  if (why === undefined) {
    declare(title, impl)
  } else if ((process.env['CI'] ?? '') !== '') {
    declare(title, (t) => {
      t.fail(`${why}; CI must run system tests, never skip them`)
    })
  } else {
    banner(title, why)
    declare.skip(`${title} [SKIPPED: ${why}]`, impl)
  }
}

export type ToolResult = RunResult

/** Run a system tool for test setup (mkfs, mount, cryptsetup luksDump...): `run` of spawn.ts. */
export function tool(
  cmd: string,
  args: readonly string[],
  stdin?: Uint8Array,
): Promise<ToolResult> {
  return run(cmd, args, { input: stdin })
}

/** `tool`, but throws with the tool's stderr unless it exits 0; resolves its stdout. */
export async function mustRun(
  cmd: string,
  args: readonly string[],
  stdin?: Uint8Array,
): Promise<string> {
  return (await mustRunBytes(cmd, args, { input: stdin })).stdout
}
