/**
 * The one way tests run a program to completion: no shell, output captured, every run bounded.
 * Independent of agent/exec.ts on purpose, so a bug there cannot hide behind the fixtures.
 * Long-lived children (a server, QEMU, socat) are spawned where they are used.
 *
 * @example
 * ```ts
 * const r = await run('cryptsetup', ['luksDump', img])
 * const key = (await mustRun(process.execPath, [UNLOCKD, 'unlock', '--key-stdout'])).raw
 * ```
 */
import { spawn } from 'node:child_process'

export interface RunOptions {
  /** Variables added to the environment (undefined removes one). */
  env?: Record<string, string | undefined> | undefined
  /** Start from an empty environment instead of this process's (then only `env` is passed). */
  cleanEnv?: boolean | undefined
  /** Written to stdin, which is then closed; without it stdin is /dev/null. */
  input?: string | Uint8Array | undefined
  cwd?: string | undefined
  /**
   * Kill the program (SIGKILL) after this long. The default is generous on purpose: a busy
   * 2-core machine must never trip it; it only stops a hung program from hanging the suite.
   */
  timeoutMs?: number | undefined
  /** Capture stderr into stdout, interleaved as written (for logs). */
  mergeStderr?: boolean | undefined
}

export interface RunResult {
  /** Exit status; -1 when the program was killed by a signal. */
  code: number
  signal: NodeJS.Signals | null
  stdout: string
  stderr: string
  /** stdout bytes as received (keys are binary). */
  raw: Buffer
}

export const DEFAULT_TIMEOUT_MS = 10 * 60_000

/** Run `cmd` with `args` to completion; never rejects for a non-zero exit (see `mustRun`). */
export function run(cmd: string, args: readonly string[], o: RunOptions = {}): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, [...args], {
      cwd: o.cwd,
      env: o.cleanEnv === true ? { ...o.env } : { ...process.env, ...o.env },
      stdio: [o.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
    })
    const out: Buffer[] = []
    const err: Buffer[] = []
    child.stdout?.on('data', (c: Buffer) => out.push(c))
    child.stderr?.on('data', (c: Buffer) => (o.mergeStderr === true ? out : err).push(c))
    const timer = setTimeout(() => child.kill('SIGKILL'), o.timeoutMs ?? DEFAULT_TIMEOUT_MS)
    child.on('error', (e) => {
      clearTimeout(timer)
      reject(e)
    })
    child.on('close', (code, signal) => {
      clearTimeout(timer)
      const raw = Buffer.concat(out)
      resolve({
        code: code ?? -1,
        signal,
        stdout: raw.toString('utf8'),
        stderr: Buffer.concat(err).toString('utf8'),
        raw,
      })
    })
    if (o.input !== undefined) {
      child.stdin?.on('error', () => {})
      child.stdin?.end(o.input)
    }
  })
}

/** `run`, but rejects with the program's stderr unless it exits 0. */
export async function mustRun(
  cmd: string,
  args: readonly string[],
  o: RunOptions = {},
): Promise<RunResult> {
  const r = await run(cmd, args, o)
  if (r.code !== 0) {
    const how = r.signal === null ? `exited ${r.code}` : `was killed by ${r.signal}`
    throw new Error(`${cmd} ${args.join(' ')} ${how}: ${r.stderr.trim()}`)
  }
  return r
}
