/**
 * The `unlockd` dispatcher: finds the command for the first one or two words and runs it.
 * Kept tiny so the agent bundle (bin/unlockd-agent.ts) can reuse it with host verbs only.
 */
import { EXIT, helpText, processIo, runCommand, type CliIo, type Command } from '../platform/cli.ts'

export async function dispatch(
  prog: string,
  commands: Command[],
  argv: string[],
  io: CliIo = processIo,
): Promise<number> {
  const two = argv.slice(0, 2).join(' ')
  const cmd = commands.find((c) => c.name === two) ?? commands.find((c) => c.name === argv[0])
  if (!cmd) {
    const wanted = argv[0]
    if (wanted === undefined || wanted === 'help' || wanted === '--help' || wanted === '-h') {
      io.stdout(overview(prog, commands))
      return wanted === undefined ? EXIT.usage : EXIT.ok
    }
    if (wanted === '--version' || wanted === 'version') {
      io.stdout(`${prog} 0.1.0 (protocol v1)\n`)
      return EXIT.ok
    }
    const sub = commands.filter((c) => c.name.startsWith(`${wanted} `))
    if (sub.length && (argv[1] === undefined || argv[1] === '--help' || argv[1] === '-h')) {
      io.stdout(sub.map((c) => helpText(c)).join('\n'))
      return argv[1] === undefined ? EXIT.usage : EXIT.ok
    }
    io.stderr(
      `[ERROR] ${prog}: unknown command "${argv.slice(0, 2).join(' ')}"\n\n${overview(prog, commands)}`,
    )
    return EXIT.usage
  }
  const rest = argv.slice(cmd.name.split(' ').length)
  return runCommand(prog, cmd, rest, io)
}

function overview(prog: string, commands: Command[]): string {
  const w = Math.max(...commands.map((c) => c.name.length))
  return `Usage: ${prog} COMMAND [options]   (${prog} COMMAND --help for details)\n\nCommands:\n${commands.map((c) => `  ${c.name.padEnd(w)}  ${c.summary}`).join('\n')}\n\nExit codes: 0 ok, 1 error, 2 usage, 3 refused by the server, 4 server unreachable, 5 approval still pending.\n`
}
