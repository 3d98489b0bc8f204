/** The kernel's id for this boot: lets the server tell a reboot from a clone asking twice. */
import { readFileSync } from 'node:fs'
import { randomUUID } from 'node:crypto'

let cached: string | undefined

export function bootId(): string {
  if (cached) return cached
  try {
    cached = readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim()
  } catch {
    cached = randomUUID() // no procfs (unusual): a per-process id still binds approvals to this run
  }
  return cached
}
