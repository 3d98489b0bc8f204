/**
 * The only place in agent/ that starts other programs (cryptsetup, systemd-reply-password, ...).
 * Keeping every spawn here gives one place to audit the rules that protect key material:
 * - a fixed argv array and no shell, so nothing is ever re-parsed or globbed;
 * - secrets travel on stdin only: argv and the environment are readable by other users through
 *   /proc/PID/cmdline and end up in process accounting and crash reports;
 * - a small, explicit environment, so secrets held in our own env never leak into children;
 * - stdin is /dev/null unless given, so a tool can never block on a terminal prompt at boot;
 * - bounded output and a timeout that kills the child, so a wedged tool cannot wedge the boot.
 */
import { spawn, type ChildProcess } from 'node:child_process'
import { constants } from 'node:os'
import { UnlockdError, describeError, type UnlockdErrorCode } from '../shared/errors.ts'

export interface RunOptions {
  /** Bytes written to the child's stdin, then stdin is closed. Without it, stdin is /dev/null. */
  stdin?: Uint8Array | undefined
  /** Kill the child (SIGKILL) after this long. Default 60 s. */
  timeoutMs?: number | undefined
  /**
   * Extra environment on top of the minimal one (`PATH`, `LC_ALL=C`). Never put secrets here:
   * the environment of a process is as visible as its argv.
   */
  env?: Readonly<Record<string, string>> | undefined
  /** Limit for stdout and for stderr, each. The child is killed beyond it. Default 8 MiB. */
  maxOutputBytes?: number | undefined
  /** Code of the UnlockdError thrown when the program cannot run or times out. Default 'internal'. */
  errorCode?: UnlockdErrorCode | undefined
  /** Package to suggest when the binary is missing, e.g. 'cryptsetup-bin'. */
  installHint?: string | undefined
  /**
   * Called with each chunk as it arrives (for progress lines of long runs); the output is still
   * collected and returned. Never pass secrets through a tool's output.
   */
  onOutput?: ((stream: 'stdout' | 'stderr', chunk: Buffer) => void) | undefined
}

export interface RunResult {
  /** Exit status; 128 + signal number when the child died from a signal it did not get from us. */
  code: number
  stdout: Buffer
  stderr: string
}

/** What a spawn observer sees: the exact argv handed to the kernel, and the pid when it started. */
export interface SpawnEvent {
  readonly cmd: string
  readonly args: readonly string[]
  readonly pid: number | undefined
}

const DEFAULT_TIMEOUT_MS = 60_000
const DEFAULT_MAX_OUTPUT = 8 * 1024 * 1024
// sbin directories are included because the agent may start with a user's PATH (sudo, tests).
const DEFAULT_PATH = '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin'

const observers = new Set<(event: SpawnEvent) => void>()

/**
 * Debug and test hook: `listener` is called synchronously right after each spawn, while the child
 * usually still runs (so a test can read /proc/PID/cmdline). Returns a function that removes it.
 */
export function observeSpawns(listener: (event: SpawnEvent) => void): () => void {
  observers.add(listener)
  return () => {
    observers.delete(listener)
  }
}

/**
 * Run `cmd` with `args` (no shell) and collect its output. Resolves with any exit status: the
 * caller decides what a non-zero status means. Rejects with `UnlockdError(opts.errorCode)` only
 * when the program could not run, timed out, or wrote more than `maxOutputBytes`.
 *
 * @example
 * ```ts
 * const r = await run('cryptsetup', ['open', '--test-passphrase', '--key-file', '-', dev],
 *   { stdin: key, errorCode: 'luks_failed', installHint: 'cryptsetup-bin' })
 * ```
 */
export function run(
  cmd: string,
  args: readonly string[],
  opts: RunOptions = {},
): Promise<RunResult> {
  if (cmd === '' || cmd.includes('\0') || (cmd.includes('/') && !cmd.startsWith('/'))) {
    throw new TypeError('"cmd" must be a program name or an absolute path')
  }
  const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS
  const maxOutput = opts.maxOutputBytes ?? DEFAULT_MAX_OUTPUT
  if (!Number.isInteger(timeoutMs) || timeoutMs <= 0)
    throw new RangeError('"timeoutMs" must be a positive integer')
  if (!Number.isInteger(maxOutput) || maxOutput <= 0)
    throw new RangeError('"maxOutputBytes" must be a positive integer')
  const errorCode = opts.errorCode ?? 'internal'
  const env = { PATH: process.env['PATH'] || DEFAULT_PATH, LC_ALL: 'C', ...opts.env }

  return new Promise<RunResult>((resolve, reject) => {
    let child: ChildProcess
    try {
      child = spawn(cmd, [...args], {
        stdio: [opts.stdin === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
        env,
        shell: false,
      })
    } catch (err) {
      reject(
        new UnlockdError(errorCode, `cannot run ${cmd}: ${describeError(err)}`, { cause: err }),
      )
      return
    }
    for (const listener of observers) listener({ cmd, args: [...args], pid: child.pid })

    const out: Buffer[] = []
    const err: Buffer[] = []
    let failure: UnlockdError | undefined
    let settled = false

    const fail = (e: UnlockdError): void => {
      failure ??= e
      child.kill('SIGKILL')
    }
    const timer = setTimeout(() => {
      fail(
        new UnlockdError(errorCode, `${cmd} did not finish within ${timeoutMs} ms and was killed`),
      )
    }, timeoutMs)

    // Each stream is capped on its own; a caller may also watch it as it comes (progress).
    const collect = (stream: 'stdout' | 'stderr', into: Buffer[]): ((chunk: Buffer) => void) => {
      let bytes = 0
      return (chunk) => {
        bytes += chunk.length
        if (bytes > maxOutput)
          fail(
            new UnlockdError(errorCode, `${cmd} wrote more than ${maxOutput} bytes and was killed`),
          )
        else into.push(chunk)
        opts.onOutput?.(stream, chunk)
      }
    }
    child.stdout?.on('data', collect('stdout', out))
    child.stderr?.on('data', collect('stderr', err))

    child.on('error', (e: NodeJS.ErrnoException) => {
      // Spawn failures (ENOENT, EACCES) arrive here and may not be followed by 'close'.
      if (settled) return
      settled = true
      clearTimeout(timer)
      if (e.code === 'ENOENT') {
        const hint =
          opts.installHint === undefined
            ? 'check that it is installed and in PATH'
            : `install ${opts.installHint}`
        reject(new UnlockdError(errorCode, `${cmd} not found: ${hint}`, { cause: e }))
      } else {
        reject(new UnlockdError(errorCode, `cannot run ${cmd}: ${e.message}`, { cause: e }))
      }
    })

    child.on('close', (code: number | null, signal: NodeJS.Signals | null) => {
      if (settled) return
      settled = true
      clearTimeout(timer)
      if (failure !== undefined) {
        reject(failure)
        return
      }
      resolve({
        code: code ?? 128 + (signal === null ? 0 : constants.signals[signal]),
        stdout: Buffer.concat(out),
        stderr: Buffer.concat(err).toString('utf8'),
      })
    })

    if (opts.stdin !== undefined && child.stdin) {
      // A child that exits without reading its input gives EPIPE; its exit status tells the story.
      child.stdin.on('error', () => {})
      child.stdin.end(opts.stdin)
    }
  })
}
