/** Flags and helpers shared by the host verbs. */
import { readFileSync } from 'node:fs'
import { hostname } from 'node:os'
import { UnlockdError } from '../../shared/errors.ts'
import type { Options, Values } from '../../platform/cli.ts'
import { configDir, type ConfigDir } from '../config-dir.ts'

export const CONFIG_OPTION: Options = { config: { type: 'string' } }

export function cfgDir(values: Values, env: Record<string, string | undefined>): ConfigDir {
  return configDir((values['config'] as string | undefined) ?? env['UNLOCKD_CONFIG_DIR'])
}

export function defaultHostName(): string {
  return (
    hostname()
      .toLowerCase()
      .split('.')[0]
      ?.replace(/[^a-z0-9_.-]/g, '-')
      .slice(0, 64) || 'host'
  )
}

export function readKeyFile(path: string, what: string): Uint8Array {
  try {
    return new Uint8Array(readFileSync(path))
  } catch (cause) {
    throw new UnlockdError('config_invalid', `cannot read ${what} ${path}`, { cause })
  }
}

/** Read all of stdin (for `--token -`). */
export async function readStdin(): Promise<string> {
  const chunks: Buffer[] = []
  for await (const c of process.stdin) chunks.push(c as Buffer)
  return Buffer.concat(chunks).toString('utf8').trim()
}
