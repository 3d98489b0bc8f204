/**
 * CLI plumbing shared by the server-side and host-side commands, one import surface over small
 * modules in ./cli/: the command shape and help (command.ts), running a verb with strict
 * argument parsing (run.ts), the error edge and exit codes (exit.ts), output formatting
 * (output.ts), terminal prompts (prompt.ts), secret reading (secret.ts) and the process I/O (io.ts).
 */
export { processIo, type CliIo } from './cli/io.ts'
export {
  helpText,
  usage,
  UsageError,
  type Command,
  type Options,
  type Values,
} from './cli/command.ts'
export { EXIT, exitCodeFor, reportError, suggestionFor } from './cli/exit.ts'
export { runCommand } from './cli/run.ts'
export { fmtTime, formatTable, output } from './cli/output.ts'
export { ask, confirm, readStdinLine } from './cli/prompt.ts'
export { readSecret } from './cli/secret.ts'
