/** Running one verb: strict argument parsing (node:util parseArgs), --help, then the error edge. */
import { parseArgs } from 'node:util'
import { helpText, type Command, type Options, type Values } from './command.ts'
import { EXIT, reportError } from './exit.ts'
import type { CliIo } from './io.ts'

const COMMON: Options = { help: { type: 'boolean', short: 'h' }, json: { type: 'boolean' } }

export async function runCommand(
  prog: string,
  cmd: Command,
  argv: string[],
  io: CliIo,
): Promise<number> {
  let parsed: { values: Values; positionals: string[] }
  try {
    parsed = parseArgs({
      args: argv,
      options: { ...COMMON, ...cmd.options },
      strict: true,
      allowPositionals: cmd.positionals ?? false,
    }) as { values: Values; positionals: string[] }
  } catch (e) {
    io.stderr(
      `[ERROR] ${prog} ${cmd.name}: ${e instanceof Error ? e.message : String(e)}\n\n${helpText(cmd)}`,
    )
    return EXIT.usage
  }
  if (parsed.values['help']) {
    io.stdout(helpText(cmd))
    return EXIT.ok
  }
  try {
    return (
      (await cmd.run({ values: parsed.values, positionals: parsed.positionals, io })) ?? EXIT.ok
    )
  } catch (e) {
    return reportError(prog, cmd, e, io, Boolean(parsed.values['json']))
  }
}
