/** Where a command writes and what it may ask: the process, or a test's capture. */
export interface CliIo {
  stdout: (text: string) => void
  stderr: (text: string) => void
  env: Record<string, string | undefined>
  /** True when stdin is an interactive terminal (prompts allowed). */
  interactive: boolean
}

export const processIo: CliIo = {
  stdout: (s) => process.stdout.write(s),
  stderr: (s) => process.stderr.write(s),
  env: process.env,
  interactive: Boolean(process.stdin.isTTY),
}
