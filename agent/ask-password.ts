/**
 * systemd's password-agent protocol (as clevis's askpass does it): watch
 * /run/systemd/ask-password for ask.* files, answer the cryptsetup ones for LUKS volumes we
 * know with `systemd-reply-password` (the passphrase goes on its stdin, never in argv).
 */
import { readdirSync, readFileSync, realpathSync } from 'node:fs'
import { join } from 'node:path'
import type { LuksVolumeConfig } from '../shared/config/agent.ts'
import { run } from './exec.ts'
import { luksDevice } from './volumes/luks-backend.ts'

export interface AskRequest {
  file: string
  socket: string
  id: string
  message: string
  notAfter: number
}

export function askDir(env: Record<string, string | undefined> = process.env): string {
  return env['UNLOCKD_ASK_PASSWORD_DIR'] ?? '/run/systemd/ask-password'
}

/** Parse one ask.* file (INI with an [Ask] section). Returns undefined for anything malformed. */
export function parseAsk(file: string, text: string): AskRequest | undefined {
  const get = (k: string): string | undefined =>
    new RegExp(`^${k}=(.*)$`, 'm').exec(text)?.[1]?.trim()
  if (!/^\[Ask\]/m.test(text)) return undefined
  const socket = get('Socket')
  if (!socket || !socket.startsWith('/')) return undefined
  return {
    file,
    socket,
    id: get('Id') ?? '',
    message: get('Message') ?? '',
    notAfter: Number(get('NotAfter') ?? '0'),
  }
}

export function pendingAsks(dir: string): AskRequest[] {
  let names: string[]
  try {
    names = readdirSync(dir).filter((n) => n.startsWith('ask.'))
  } catch {
    return []
  }
  const out: AskRequest[] = []
  for (const n of names) {
    try {
      const a = parseAsk(join(dir, n), readFileSync(join(dir, n), 'utf8'))
      if (a) out.push(a)
    } catch {
      /* the file went away while we read it */
    }
  }
  return out
}

function canonical(p: string): string {
  try {
    return realpathSync(p)
  } catch {
    return p
  }
}

/** Which of our LUKS volumes an ask is for (Id=cryptsetup:DEVICE, or the UUID in the message). */
export function matchVolume(
  ask: AskRequest,
  volumes: readonly LuksVolumeConfig[],
): LuksVolumeConfig | undefined {
  if (!ask.id.startsWith('cryptsetup:')) return undefined
  const dev = ask.id.slice('cryptsetup:'.length)
  return volumes.find(
    (v) =>
      canonical(luksDevice(v)) === canonical(dev) ||
      dev === v.device ||
      dev.includes(v.uuid) ||
      ask.message.includes(v.uuid) ||
      new RegExp(`\\b${v.name}\\b`).test(ask.message),
  )
}

export async function replyPassword(ask: AskRequest, key: Uint8Array): Promise<boolean> {
  const bin = [
    '/lib/systemd/systemd-reply-password',
    '/usr/lib/systemd/systemd-reply-password',
  ].find((p) => {
    try {
      return realpathSync(p) !== ''
    } catch {
      return false
    }
  })
  if (!bin) return false
  const r = await run(bin, ['1', ask.socket], { stdin: key, timeoutMs: 10_000 })
  return r.code === 0
}
