/**
 * `DEVICE_OR_DIR[:NAME]` for `unlockd encrypt`. Device paths may contain ':' themselves
 * (/dev/disk/by-path/pci-0000:00:05.0-scsi-0:0:1:0), so only a final `:NAME` that is a valid
 * volume name is taken as the name; anything else is part of the path.
 */
import { existsSync } from 'node:fs'
import { basename } from 'node:path'
import { NAME_RE } from '../../shared/protocol/validate.ts'
import { UnlockdError } from '../../shared/errors.ts'

export interface TargetSpec {
  target: string
  name: string
}

/** A volume name made from the last path component, or undefined when none can be made. */
function nameFromPath(path: string): string | undefined {
  const n = basename(path)
    .toLowerCase()
    .replace(/[^a-z0-9_.-]/g, '-')
    .replace(/^[^a-z0-9]+/, '')
    .slice(0, 64)
  return NAME_RE.test(n) ? n : undefined
}

/**
 * Split `spec`. When the whole of `spec` names an existing path it is the target (a by-path
 * device whose tail "05.0" would pass as a name stays whole); otherwise a final `:NAME` matching
 * the volume-name charset is the name. Without a name, one is made from the last path component.
 */
export function parseTargetSpec(
  spec: string,
  flag: string,
  exists: (path: string) => boolean = existsSync,
): TargetSpec {
  const i = spec.lastIndexOf(':')
  let target = spec
  let name: string | undefined
  if (i > 0 && !exists(spec)) {
    const tail = spec.slice(i + 1)
    if (NAME_RE.test(tail)) {
      target = spec.slice(0, i)
      name = tail
    }
  }
  if (!target.startsWith('/'))
    throw new UnlockdError('usage', `${flag} ${spec}: give an absolute path`)
  name ??= nameFromPath(target)
  if (name === undefined)
    throw new UnlockdError(
      'usage',
      `${flag} ${spec}: cannot make a volume name from the path; append :NAME (1-64 chars of a-z 0-9 _ . -)`,
    )
  return { target, name }
}
