/** `unlockd initramfs check`: show what goes into the initramfs and why; fail when anything is missing. */
import { existsSync } from 'node:fs'
import { UnlockdError } from '../../shared/errors.ts'
import { EXIT, usage, type Command } from '../../platform/cli.ts'
import { DEFAULT_CONFIG_DIR } from '../config-dir.ts'
import { planInitramfs, planLines, type Flavour, type InitramfsPlan } from '../initramfs-plan.ts'

function detectFlavour(): Flavour {
  // Debian and Ubuntu use initramfs-tools; RHEL and Fedora dracut. Prefer initramfs-tools when both exist (Debian can have both).
  if (existsSync('/usr/sbin/update-initramfs') || existsSync('/usr/share/initramfs-tools'))
    return 'initramfs-tools'
  if (existsSync('/usr/bin/dracut') || existsSync('/usr/sbin/dracut')) return 'dracut'
  return 'initramfs-tools'
}

function text(p: InitramfsPlan): string {
  const out = [`Initramfs plan (${p.flavour}, config ${p.configDir}):`, '', 'Files:']
  const w = Math.max(0, ...p.files.map((f) => f.source.length))
  for (const f of p.files)
    out.push(
      `  ${f.source.padEnd(w)}  -> ${f.dest}${f.kind === 'secret' ? ' (0600)' : ''}`,
      `  ${''.padEnd(w)}     ${f.why}`,
    )
  out.push('', 'Volumes:')
  if (p.volumes.length === 0) out.push('  (none)')
  for (const v of p.volumes) {
    const ct = v.crypttab
      ? `crypttab ${v.crypttab.name}${v.crypttab.options.length ? ` (${v.crypttab.options.join(',')})` : ''}`
      : 'no crypttab entry'
    out.push(
      `  ${v.name}  UUID=${v.uuid}  ${ct}  ${v.atBoot ? 'answered at boot' : 'NOT asked in the initramfs'}`,
    )
  }
  out.push(
    '',
    `Boot: keeps trying for ${p.settings.timeout} s (UNLOCKD_TIMEOUT), the typed passphrase works all along; unlockd=off on the kernel command line skips the agent.`,
  )
  if (p.warnings.length) out.push('', 'Warnings:', ...p.warnings.map((x) => `  - ${x}`))
  if (p.problems.length) out.push('', 'Problems:', ...p.problems.map((x) => `  - ${x}`))
  return out.join('\n') + '\n'
}

export const initramfsCheck: Command = {
  name: 'initramfs check',
  summary:
    'List what the initramfs hook copies into the image and why; fail when something is missing.',
  usage:
    'unlockd initramfs check [--config DIR] [--flavour initramfs-tools|dracut] [--crypttab FILE] [--fstab FILE] [--node PATH] [--bundle PATH] [--format text|lines] [--json]',
  description: [
    'Checks Node.js (18.19+), the agent bundle, agent.json, both host keys (mode 0600), pinned CAs and,',
    'for initramfs-tools, a crypttab entry for the LUKS volume (no keyscript: the agent answers the prompt).',
    'Settings come from CONFIG/initramfs.conf (UNLOCKD_NODE, UNLOCKD_BUNDLE, UNLOCKD_TIMEOUT, UNLOCKD_IFDOWN).',
    '--format lines is what the initramfs hooks read: "exec|file|secret SRC DEST" and "volume UUID NAME", tab-separated.',
  ].join('\n'),
  examples: ['unlockd initramfs check', 'unlockd initramfs check --flavour dracut --json'],
  options: {
    config: { type: 'string' },
    flavour: { type: 'string' },
    crypttab: { type: 'string' },
    fstab: { type: 'string' },
    node: { type: 'string' },
    bundle: { type: 'string' },
    format: { type: 'string' },
  },
  async run({ values, io }) {
    const flavour = (values['flavour'] as string | undefined) ?? detectFlavour()
    if (flavour !== 'initramfs-tools' && flavour !== 'dracut')
      usage('--flavour must be initramfs-tools or dracut')
    const format = (values['format'] as string | undefined) ?? 'text'
    if (format !== 'text' && format !== 'lines') usage('--format must be text or lines')
    const plan = await planInitramfs({
      configDir: (values['config'] as string | undefined) ?? DEFAULT_CONFIG_DIR,
      flavour,
      crypttabPath: (values['crypttab'] as string | undefined) ?? '/etc/crypttab',
      fstabPath: (values['fstab'] as string | undefined) ?? '/etc/fstab',
      node: values['node'] as string | undefined,
      bundle: values['bundle'] as string | undefined,
      pathEnv: io.env['PATH'],
      selfBundle: process.argv[1],
    })
    if (values['json']) {
      // One JSON document, problems included; the exit status says whether the image can be built.
      io.stdout(JSON.stringify(plan, null, 2) + '\n')
      return plan.problems.length > 0 ? EXIT.error : EXIT.ok
    }
    if (format === 'lines') {
      for (const w of plan.warnings) io.stderr(`W: unlockd: ${w}\n`)
      for (const p of plan.problems) io.stderr(`E: unlockd: ${p}\n`)
      if (plan.problems.length === 0) io.stdout(planLines(plan))
    } else io.stdout(text(plan))
    if (plan.problems.length > 0) {
      throw new UnlockdError(
        'config_invalid',
        `the initramfs cannot be built: ${plan.problems.length} problem${plan.problems.length > 1 ? 's' : ''} (listed above)`,
      )
    }
    return EXIT.ok
  },
}
