/**
 * The partition table edit of a root conversion, as text: `sfdisk --dump` of the disk before,
 * and the table after (root partition shrunk in place, the new /boot partition in the freed
 * tail). Writing the whole table back from a dump keeps the label id and every other partition's
 * UUID, type and name byte for byte; restoring the saved dump is the rollback.
 */
import type { Geometry } from './root-plan.ts'

export interface DumpLine {
  device: string
  start: number
  size: number
  rest: string
}

const LINE = /^(\S+)\s*:\s*start=\s*(\d+),\s*size=\s*(\d+)(.*)$/

export function dumpLines(dump: string): DumpLine[] {
  const out: DumpLine[] = []
  for (const l of dump.split('\n')) {
    const m = LINE.exec(l.trim())
    if (m)
      out.push({
        device: m[1] as string,
        start: Number(m[2]),
        size: Number(m[3]),
        rest: m[4] ?? '',
      })
  }
  return out
}

/** The partition device name for number n of `disk` as sfdisk prints it (vda1, nvme0n1p1, x.img1). */
export function partName(disk: string, n: number): string {
  return /\d$/.test(disk) ? `${disk}p${n}` : `${disk}${n}`
}

/** The table after the carve, or throws when `dump` is not the table the plan was made on. */
export function carvedTable(
  dump: string,
  g: Geometry,
  dumpDisk: string,
  bootPartuuid: string | null,
): string {
  const boot = g.boot
  if (boot === null) throw new TypeError('this plan keeps the partition table')
  const rootName = partName(dumpDisk, g.rootPartn)
  const lines = dump.split('\n')
  let found = false
  const out = lines.map((l) => {
    const m = LINE.exec(l.trim())
    if (!m || m[1] !== rootName) return l
    if (Number(m[2]) !== g.rootStart || Number(m[3]) !== g.rootSectorsBefore)
      throw new RangeError(
        `${rootName} is at ${m[2]}+${m[3]}, not ${g.rootStart}+${g.rootSectorsBefore} as planned`,
      )
    found = true
    return `${rootName} : start=${g.rootStart}, size=${g.rootSectorsAfter}${m[4] ?? ''}`
  })
  if (!found) throw new RangeError(`${rootName} is not in the partition table`)
  if (dumpLines(dump).some((d) => d.device === partName(dumpDisk, boot.partn)))
    throw new RangeError(`partition ${boot.partn} exists already`)
  const type = g.pttype === 'gpt' ? boot.parttype.toUpperCase() : boot.parttype
  const uuid = g.pttype === 'gpt' && bootPartuuid ? `, uuid=${bootPartuuid.toUpperCase()}` : ''
  const name = g.pttype === 'gpt' ? ', name="boot"' : ''
  const body = out.join('\n').replace(/\n*$/, '')
  return `${body}\n${partName(dumpDisk, boot.partn)} : start=${boot.start}, size=${boot.sectors}, type=${type}${uuid}${name}\n`
}

/**
 * Whether two dumps describe the same partitions: number, start, size and type (device paths,
 * and the UUID sfdisk makes up for a partition written without one, aside).
 */
export function samePartitions(a: string, b: string): boolean {
  const key = (d: string): string =>
    dumpLines(d)
      .map((l) => {
        const n = /(\d+)$/.exec(l.device)?.[1] ?? '?'
        const type = /type=\s*([^,\s]+)/.exec(l.rest)?.[1]?.toLowerCase() ?? ''
        return `${n}:${l.start}:${l.size}:${type}`
      })
      .sort()
      .join('|')
  return key(a) === key(b)
}
