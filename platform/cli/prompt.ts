/** Questions on the terminal (prompts on stderr): plain, hidden, and the destructive confirmation. */
import { UnlockdError } from '../../shared/errors.ts'
import type { CliIo } from './io.ts'

/** Ask without echo (passphrases). */
export async function promptHidden(question: string): Promise<string> {
  const { createInterface } = await import('node:readline')
  process.stderr.write(question)
  const rl = createInterface({ input: process.stdin, terminal: true })
  const rlOut = rl as unknown as { _writeToOutput?: (s: string) => void }
  rlOut._writeToOutput = () => {} // no echo
  return new Promise((resolve) =>
    rl.question('', (a) => {
      rl.close()
      process.stderr.write('\n')
      resolve(a)
    }),
  )
}

/** Ask one question on the terminal (prompt on stderr) and return the trimmed answer. */
export async function ask(question: string): Promise<string> {
  const { createInterface } = await import('node:readline')
  const rl = createInterface({ input: process.stdin, output: process.stderr })
  return new Promise<string>((resolve) =>
    rl.question(question, (x) => {
      rl.close()
      resolve(x.trim())
    }),
  )
}

/** Default-no confirmation for destructive commands (fscrypt prompt.go). */
export async function confirm(io: CliIo, question: string, yes: boolean): Promise<void> {
  if (yes) return
  if (!io.interactive)
    throw new UnlockdError(
      'destructive_needs_force',
      'refusing a destructive action without a terminal; add --yes to confirm',
    )
  if (!/^y(es)?$/i.test(await ask(`${question} [y/N] `)))
    throw new UnlockdError('destructive_needs_force', 'cancelled')
}

/** The first line of a non-terminal stdin (a pipe or a file), trimmed; '' at end of input. */
export async function readStdinLine(): Promise<string> {
  const { createInterface } = await import('node:readline')
  const rl = createInterface({ input: process.stdin, terminal: false })
  return new Promise<string>((resolve) => {
    let done = false
    const finish = (line: string): void => {
      if (done) return
      done = true
      rl.close()
      resolve(line.trim())
    }
    rl.once('line', finish)
    rl.once('close', () => finish(''))
  })
}
