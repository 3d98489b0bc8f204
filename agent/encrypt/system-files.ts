/**
 * /etc/crypttab and /etc/fstab after a block device became LUKS2: one crypttab line opens it as
 * /dev/mapper/NAME, and the fstab line that mounted the plaintext filesystem now mounts the
 * mapping. Pure text functions (tested directly) plus an atomic rewrite of each file. Image files
 * get neither: agent.json (written by enrollment) is all they need.
 */
import { readFileIfExists, writeFileAtomic } from '../../platform/atomic-file.ts'

/** crypttab with a line for NAME (unchanged when NAME already has one). */
export function withCrypttabLine(text: string, name: string, luksUuid: string): string {
  const has = text
    .split('\n')
    .some((l) => !l.trimStart().startsWith('#') && l.trim().split(/\s+/)[0] === name)
  if (has) return text
  const sep = text === '' || text.endsWith('\n') ? '' : '\n'
  return `${text}${sep}${name} UUID=${luksUuid} none luks,discard\n`
}

/**
 * fstab whose lines for the old filesystem (by device path, by UUID=, or by /dev/disk/by-uuid)
 * mount /dev/mapper/NAME instead. Other lines and comments stay byte for byte.
 */
export function withFstabSource(text: string, name: string, oldSources: readonly string[]): string {
  const olds = new Set(oldSources)
  return text
    .split('\n')
    .map((line) => {
      if (line.trimStart().startsWith('#')) return line
      const m = /^(\s*)(\S+)(\s.*)$/.exec(line)
      if (!m || !olds.has(m[2] as string)) return line
      return `${m[1] ?? ''}/dev/mapper/${name}${m[3] ?? ''}`
    })
    .join('\n')
}

export interface SystemFilesInput {
  name: string
  device: string
  fsUuid: string | null
  luksUuid: string
  crypttabPath: string
  fstabPath: string
}

/** Update both files (atomically, keeping mode 0644); returns what changed. */
export function updateSystemFiles(i: SystemFilesInput): { crypttab: boolean; fstab: boolean } {
  const ct = readFileIfExists(i.crypttabPath)?.toString('utf8') ?? ''
  const nextCt = withCrypttabLine(ct, i.name, i.luksUuid)
  if (nextCt !== ct) writeFileAtomic(i.crypttabPath, nextCt, 0o644)
  const olds = [i.device]
  if (i.fsUuid) olds.push(`UUID=${i.fsUuid}`, `/dev/disk/by-uuid/${i.fsUuid}`)
  const ft = readFileIfExists(i.fstabPath)?.toString('utf8')
  let fstab = false
  if (ft !== undefined) {
    const nextFt = withFstabSource(ft, i.name, olds)
    if (nextFt !== ft) {
      writeFileAtomic(i.fstabPath, nextFt, 0o644)
      fstab = true
    }
  }
  return { crypttab: nextCt !== ct, fstab }
}
