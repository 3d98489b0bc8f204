/**
 * The error edge of the CLI: an UnlockdError becomes `[ERROR] unlockd VERB: message (code)`, the
 * remedy from the catalogue (shared/errors.ts ERRORS), and the exit code of its class.
 *
 * Exit codes: 0 ok · 1 runtime error · 2 usage error · 3 refused by the server (policy, auth,
 * approval denied) · 4 server unreachable or TLS failure · 5 still waiting (approval pending).
 */
import { ERRORS, UnlockdError, type ExitClass, type UnlockdErrorCode } from '../../shared/errors.ts'
import { helpText, UsageError, type Command } from './command.ts'
import type { CliIo } from './io.ts'

export const EXIT = { ok: 0, error: 1, usage: 2, refused: 3, unreachable: 4, pending: 5 } as const

const EXIT_OF_CLASS: Record<ExitClass, number> = EXIT

/** The remedy printed under an error, if the message does not already say it. */
export function suggestionFor(code: UnlockdErrorCode): string | undefined {
  return ERRORS[code].remedy ?? undefined
}

export function exitCodeFor(code: UnlockdErrorCode): number {
  return EXIT_OF_CLASS[ERRORS[code].exit]
}

export function reportError(
  prog: string,
  cmd: Command,
  e: unknown,
  io: CliIo,
  json: boolean,
): number {
  if (e instanceof UsageError) {
    io.stderr(`[ERROR] ${prog} ${cmd.name}: ${e.message}\n\n${helpText(cmd)}`)
    return EXIT.usage
  }
  if (e instanceof UnlockdError) {
    if (e.code === 'usage') {
      io.stderr(`[ERROR] ${prog} ${cmd.name}: ${e.message}\n`)
      return EXIT.usage
    }
    if (json)
      io.stdout(JSON.stringify({ error: e.code, message: e.message, ...(e.details ?? {}) }) + '\n')
    const rule = e.details?.['rule']
    io.stderr(
      `[ERROR] ${prog} ${cmd.name}: ${e.message} (${e.code}${rule ? `, rule ${String(rule)}` : ''})\n`,
    )
    const hint = suggestionFor(e.code)
    if (hint) io.stderr(`${hint}\n`)
    return exitCodeFor(e.code)
  }
  io.stderr(
    `[ERROR] ${prog} ${cmd.name}: internal error: ${e instanceof Error ? e.message : String(e)}\n`,
  )
  return EXIT.error
}
