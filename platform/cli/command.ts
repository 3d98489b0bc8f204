/** What a CLI verb is (name, help, options, run) and its help text. */
import type { ParseArgsConfig } from 'node:util'
import type { CliIo } from './io.ts'

export type Options = NonNullable<ParseArgsConfig['options']>
export type Values = Record<string, string | boolean | string[] | undefined>

export interface Command {
  name: string
  summary: string
  usage: string
  description?: string
  examples?: string[]
  options: Options
  /** Accept positional arguments (count checked by the command). */
  positionals?: boolean
  run(ctx: { values: Values; positionals: string[]; io: CliIo }): Promise<number | void>
}

export function helpText(cmd: Command): string {
  const lines = [`Usage: ${cmd.usage}`, '', cmd.summary]
  if (cmd.description) lines.push('', cmd.description)
  const opts = Object.entries(cmd.options)
  if (opts.length) {
    lines.push('', 'Options:')
    for (const [k, o] of opts)
      lines.push(
        `  --${k}${o.type === 'string' ? ' VALUE' : ''}${o.multiple ? ' (repeatable)' : ''}`,
      )
    lines.push('  --json          machine-readable output', '  -h, --help      this help')
  }
  if (cmd.examples?.length) lines.push('', 'Examples:', ...cmd.examples.map((e) => `  ${e}`))
  return lines.join('\n') + '\n'
}

/** A wrong command line: printed with the verb's help, exit 2. */
export class UsageError extends Error {}

export function usage(message: string): never {
  throw new UsageError(message)
}
