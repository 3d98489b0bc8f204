/**
 * `unlockd encrypt --root`: plan (and with --dry-run only plan) the in-place encryption of the
 * root filesystem, then stage it for the initramfs of the next boot(s).
 */
import { existsSync, readFileSync } from 'node:fs'
import { UnlockdError } from '../../shared/errors.ts'
import { EXIT, output, readSecret, type CliIo, type Values } from '../../platform/cli.ts'
import { DEFAULT_STATE_DIR } from '../encrypt/journal.ts'
import { lastLine, tool } from '../encrypt/probe.ts'
import { factsFromRecord } from '../encrypt/root-facts.ts'
import { planRoot, rootPlanText, type RootPlan } from '../encrypt/root-plan.ts'
import { probeRootRecord } from '../encrypt/root-probe.ts'
import { ROOT_JOB_FILE, newUuids, stageRoot } from '../encrypt/root-stage.ts'
import { join } from 'node:path'
import { writeGrubDefaults, writeRootCrypttab, type SystemRunner } from '../encrypt/root-system.ts'
import { loadConfig, loadKeys } from '../config-dir.ts'
import { cfgDir } from './common.ts'

/**
 * Where the initramfs-tools integration puts the boot-time part (install.sh: /etc, the Debian
 * package: /usr/share); staging needs it installed.
 */
export const INITRAMFS_ROOT_SCRIPTS = [
  '/etc/initramfs-tools/scripts/init-premount/unlockd-root',
  '/usr/share/initramfs-tools/scripts/init-premount/unlockd-root',
]

const runner: SystemRunner = {
  async run(cmd, args) {
    const r = await tool(cmd, args)
    if (r.code !== 0)
      throw new UnlockdError('luks_failed', `${cmd} ${args.join(' ')} failed: ${lastLine(r)}`)
  },
}

/** Development switch: allow staging although the later boots are not automated yet. */
export const STAGING_ENV = 'UNLOCKD_ROOT_ENCRYPT_STAGING'

export interface RootCliDeps {
  readFallback: (path: string) => Uint8Array
}

export async function runEncryptRoot(
  values: Values,
  io: CliIo,
  deps: RootCliDeps,
): Promise<number> {
  const dryRun = values['dry-run'] === true
  const c = cfgDir(values, io.env)
  if (values['boot-stage'] === true) {
    const keys = loadKeys(c)
    if (keys === undefined)
      throw new UnlockdError(
        'not_enrolled',
        `no host keys in ${c.dir}: the image was built before enrollment`,
      )
    const { runBootStage } = await import('../encrypt/root-initramfs.ts')
    const r = await runBootStage({
      jobPath: join(c.dir, ROOT_JOB_FILE),
      keys,
      log: (l) => io.stderr(`${l}\n`),
    })
    io.stdout(`${r}\n`)
    return EXIT.ok
  }
  const stateDir = (values['state-dir'] as string | undefined) ?? DEFAULT_STATE_DIR
  const factsFile = values['facts'] as string | undefined
  if (factsFile !== undefined && !dryRun)
    throw new UnlockdError(
      'usage',
      '--facts plans from a recorded layout and only goes with --dry-run',
    )
  const fallbackFile = values['fallback-passphrase-file'] as string | undefined
  const config = loadConfig(c)
  const keys = loadKeys(c)
  const enrolled = config !== undefined && keys !== undefined
  const record: Record<string, unknown> =
    factsFile !== undefined
      ? (JSON.parse(readFileSync(factsFile, 'utf8')) as Record<string, unknown>)
      : await probeRootRecord()
  const { luksUuid, bootFsUuid } = newUuids()
  const planFor = (hasFallback: boolean): RootPlan =>
    planRoot({ facts: factsFromRecord(record), enrolled, hasFallback, luksUuid, bootFsUuid })

  if (dryRun) {
    // A dry run asks for nothing: a passphrase typed later counts as given.
    const plan = planFor(fallbackFile !== undefined || io.interactive)
    output(io, values, { status: 'planned', plan }, () => rootPlanText(plan))
    const first = plan.refusals[0]
    if (first === undefined) return EXIT.ok
    io.stderr(`[REFUSED] ${first.message} (${first.code}, ${first.reason})\n`)
    return EXIT.error
  }

  let fallback: Uint8Array | undefined
  try {
    if (fallbackFile !== undefined) fallback = deps.readFallback(fallbackFile)
    else if (io.interactive)
      fallback = new TextEncoder().encode(
        await readSecret({
          io,
          prompt:
            'Fallback passphrase for / (typed at the boot prompt when escrow cannot answer): ',
          confirm: true,
        }),
      )
    const plan = planFor(fallback !== undefined && fallback.byteLength > 0)
    const first = plan.refusals[0]
    if (first !== undefined)
      throw new UnlockdError(first.code, first.message, { details: { reason: first.reason } })
    // The running system's part after the first boot (GRUB for the new /boot, crypttab, the
    // online data conversion and the escrow of the final key) is not wired yet: staging a
    // conversion that stops half-way is refused unless asked for explicitly (development).
    if (io.env[STAGING_ENV] !== '1')
      throw new UnlockdError(
        'usage',
        `the plan is accepted, but this version only stages a root conversion for development (${STAGING_ENV}=1): the steps after the first boot are not automated yet; use --dry-run to check the layout`,
      )
    if (!INITRAMFS_ROOT_SCRIPTS.some((p) => existsSync(p)))
      throw new UnlockdError(
        'config_invalid',
        `${INITRAMFS_ROOT_SCRIPTS.join(' or ')} is missing: install the initramfs integration first (initramfs-hooks/install.sh, or the unlockd package)`,
      )
    if (keys === undefined || fallback === undefined) throw new Error('unreachable')
    const log = (l: string): void => io.stderr(`${l}\n`)
    const r = await stageRoot({
      plan,
      record,
      keys,
      fallback,
      stateDir,
      jobPath: join(c.dir, ROOT_JOB_FILE),
      dumpTable: async (disk) => {
        const d = await tool('sfdisk', ['--dump', disk])
        if (d.code !== 0)
          throw new UnlockdError('luks_failed', `sfdisk --dump ${disk} failed: ${lastLine(d)}`)
        return d.stdout.toString('utf8')
      },
      rebuildInitramfs: () => runner.run('update-initramfs', ['-u']),
      runStep: async (step) => {
        if (step === 'crypttab') await writeRootCrypttab(runner, plan)
        else if (step === 'grub-config') await writeGrubDefaults(runner)
        else throw new Error(`step ${step} does not run at staging`)
      },
      log,
    })
    output(io, values, { status: 'staged', plan, ...r }, () =>
      r.resumed
        ? `already staged: reboot to continue (journal ${r.journal})\n`
        : `${rootPlanText(plan)}staged: the next boot starts the conversion (journal ${r.journal})\n`,
    )
    if (values['reboot'] === true && !r.resumed) await runner.run('systemctl', ['reboot'])
    return EXIT.ok
  } finally {
    fallback?.fill(0)
  }
}
