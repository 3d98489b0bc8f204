/**
 * Structured logs: one JSON object per line on stdout (journald keeps them). Callers pass only
 * fields that are safe to record: never tokens, keys, blobs, TOTP codes or request bodies.
 */
export type LogLevel = 'debug' | 'info' | 'warn' | 'error'
export type LogFields = Record<string, string | number | boolean | null | undefined>

export interface Logger {
  log(level: LogLevel, msg: string, fields?: LogFields): void
}

export function jsonLogger(
  write: (line: string) => void = (l) => process.stdout.write(l),
  minLevel: LogLevel = 'info',
): Logger {
  const order: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 }
  return {
    log(level, msg, fields = {}) {
      if (order[level] < order[minLevel]) return
      write(JSON.stringify({ ts: new Date().toISOString(), level, msg, ...fields }) + '\n')
    },
  }
}

export const silentLogger: Logger = { log() {} }

/** Collects entries in memory (tests assert that no secret was logged). */
export function memoryLogger(): Logger & { lines: string[] } {
  const lines: string[] = []
  return {
    lines,
    log(level, msg, fields = {}) {
      lines.push(JSON.stringify({ level, msg, ...fields }))
    },
  }
}
