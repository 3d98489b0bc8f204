/**
 * The running system's part of a root conversion: text edits of /etc/fstab, /etc/crypttab and
 * GRUB's defaults (pure, tested directly), and the commands that apply them (grub-install,
 * update-grub, update-initramfs), each through an injected runner.
 */
import { readFileIfExists, writeFileAtomic } from '../../platform/atomic-file.ts'
import { UnlockdError } from '../../shared/errors.ts'
import type { RootPlan } from './root-plan.ts'

export const GRUB_DEFAULTS_FILE = '/etc/default/grub.d/unlockd-root.cfg'

/**
 * The crypttab line for the root volume. `initramfs` makes cryptsetup-initramfs include it
 * although / is not on it yet when the image is built; no keyscript, so the prompt stays and the
 * unlockd agent answers it from escrow.
 */
export function withRootCrypttab(text: string, luksUuid: string): string {
  const lines = text.split('\n').filter((l) => {
    const f = l.trim().split(/\s+/)
    return l.trimStart().startsWith('#') || f[0] !== 'root'
  })
  const body = lines.join('\n').replace(/\n*$/, '')
  return `${body === '' ? '' : `${body}\n`}root UUID=${luksUuid} none luks,discard,initramfs\n`
}

/** crypttab without the root line (rollback). */
export function withoutRootCrypttab(text: string, luksUuid: string): string {
  return text
    .split('\n')
    .filter((l) => !(l.trim().split(/\s+/)[0] === 'root' && l.includes(`UUID=${luksUuid}`)))
    .join('\n')
}

/** fstab with the new /boot partition mounted by UUID (replacing any /boot line). */
export function withBootFstab(text: string, bootUuid: string): string {
  const lines = text.split('\n').filter((l) => {
    if (l.trimStart().startsWith('#')) return true
    return l.trim().split(/\s+/)[1] !== '/boot'
  })
  const body = lines.join('\n').replace(/\n*$/, '')
  return `${body === '' ? '' : `${body}\n`}UUID=${bootUuid} /boot ext4 defaults,nodev,nosuid 0 2\n`
}

/**
 * GRUB defaults for booting from the mapping: root=UUID= of the filesystem (the same UUID inside
 * the LUKS2 volume), never root=PARTUUID= (the partition holds LUKS from now on) and no
 * initrd-less first try (Ubuntu's GRUB_FORCE_PARTUUID), which cannot unlock anything.
 */
export function grubDefaults(): string {
  return [
    '# Written by unlockd encrypt --root: / is on LUKS2, opened in the initramfs.',
    'GRUB_DISABLE_LINUX_PARTUUID=true',
    'GRUB_DISABLE_LINUX_UUID=false',
    'GRUB_FORCE_PARTUUID=',
    '',
  ].join('\n')
}

export interface SystemRunner {
  run: (cmd: string, args: string[]) => Promise<void>
  root?: string
}

function at(r: SystemRunner, p: string): string {
  return `${r.root ?? ''}${p}`
}

function rewrite(path: string, f: (t: string) => string): boolean {
  const before = readFileIfExists(path)?.toString('utf8') ?? ''
  const after = f(before)
  if (after !== before) writeFileAtomic(path, after, 0o644)
  return after !== before
}

export async function writeRootCrypttab(r: SystemRunner, p: RootPlan): Promise<void> {
  rewrite(at(r, '/etc/crypttab'), (t) => withRootCrypttab(t, p.luksUuid))
}

export async function writeGrubDefaults(r: SystemRunner): Promise<void> {
  writeFileAtomic(at(r, GRUB_DEFAULTS_FILE), grubDefaults(), 0o644)
  await r.run('update-grub', [])
}

export async function mountNewBoot(r: SystemRunner, p: RootPlan): Promise<void> {
  if (p.bootFsUuid === null) throw new TypeError('no new /boot in this plan')
  rewrite(at(r, '/etc/fstab'), (t) => withBootFstab(t, p.bootFsUuid as string))
  await r.run('systemctl', ['daemon-reload'])
  await r.run('mount', ['/boot'])
  // /boot/efi sits below /boot: mount it again on top of the new /boot.
  if (p.firmware === 'uefi') await r.run('mount', ['/boot/efi'])
}

export async function reinstallGrub(r: SystemRunner, p: RootPlan): Promise<void> {
  const g = p.geometry
  if (g === null) throw new TypeError('no geometry')
  for (const target of p.grubTargets) {
    const args = [`--target=${target}`]
    if (target === 'i386-pc') args.push(g.disk)
    else args.push('--efi-directory=/boot/efi', '--no-nvram')
    await r.run('grub-install', args)
  }
  await r.run('update-grub', [])
}

export async function rebuildInitramfs(r: SystemRunner): Promise<void> {
  await r.run('update-initramfs', ['-u', '-k', 'all'])
}

export function mustSucceed(what: string, code: number, detail: string): void {
  if (code !== 0)
    throw new UnlockdError('luks_failed', `${what} failed (exit ${code}): ${detail}`, {
      details: { exitCode: code },
    })
}
