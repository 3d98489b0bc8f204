/**
 * Migration of a NON-EMPTY directory into an fscrypt v2 directory on the same filesystem
 * (fscrypt can only encrypt an empty directory):
 *
 *   prepare  random 64-byte key (sealed to this host in the journal), added to the filesystem;
 *            an empty sibling `.NAME.unlockd-new` with the v2 policy
 *   copy     `cp -a --sparse=always` (owners, modes, times, xattrs/ACLs, hard links, symlinks,
 *            sparse files, fifos and device nodes) into the sibling; a resumed copy starts over
 *   verify   both trees walked and compared (metadata and SHA-256 of every file)
 *   swap     one renameat2(RENAME_EXCHANGE): the directory's name now holds the encrypted tree
 *   enroll   the key is escrowed (sealed to the host and the recovery key) and recorded
 *   cleanup  the plaintext copy, now at the sibling name, is removed
 *
 * Until the swap the original name holds the untouched plaintext tree; from the swap on it holds
 * the complete, verified encrypted tree. A rerun after a crash looks at the directory's policy to
 * know which side of the swap it is on. Freed blocks of the plaintext copy are not overwritten:
 * see FSCRYPT_FREED_BLOCKS_WARNING in the CLI.
 */
import { chownSync, existsSync, mkdirSync, readdirSync, rmSync, statSync } from 'node:fs'
import { basename, dirname, join } from 'node:path'
import { UnlockdError } from '../../shared/errors.ts'
import {
  blobDigest,
  openEscrowBlob,
  sealVolumeKey,
  type EscrowBlob,
} from '../../shared/crypto/blob.ts'
import { randomBytes, zeroize } from '../../shared/crypto/bytes.ts'
import { publicOf, thumbprint, type PublicOkpJwk } from '../../shared/crypto/keys.ts'
import { addVolumes } from '../../shared/client/host-client.ts'
import { configDir, loadConfig, loadKeys, saveConfig, transportFor } from '../config-dir.ts'
import { crashPoint, withSpawnCrash } from './crash-hook.ts'
import { journalPath, loadJournal, runSteps, saveJournal, type JournalBase } from './journal.ts'
import { lastLine, tool, usersOf } from './probe.ts'
import { compareTrees, treeBytes } from './tree-compare.ts'
import type { Reporter } from './progress.ts'
import { exchangePaths } from './rename-exchange.ts'

export type FscryptStep =
  'stop-units' | 'prepare' | 'copy' | 'verify' | 'swap' | 'start-units' | 'enroll' | 'cleanup'

const STEPS: FscryptStep[] = [
  'stop-units',
  'prepare',
  'copy',
  'verify',
  'swap',
  'start-units',
  'enroll',
  'cleanup',
]

export interface FscryptJournal extends JournalBase<FscryptStep> {
  kind: 'fscrypt'
  dir: string
  sibling: string
  mountpoint: string
  keyId: string | null
  units: string[]
  sealedKey: EscrowBlob | null
}

export interface FscryptEncryptOptions {
  dir: string
  name: string
  units: string[]
  configDir?: string | undefined
  stateDir: string
  recoveryKey?: PublicOkpJwk | undefined
  dryRun: boolean
  enableEncryptFeature: boolean
  log: (line: string) => void
  progress: Reporter
  /** Called once, just before the first step that touches the tree runs (or resumes). */
  onStart?: ((totalBytes: number) => void) | undefined
}

export interface FscryptEncryptResult {
  name: string
  dir: string
  status: 'planned' | 'converted' | 'unchanged'
  resumed: boolean
  message: string
}

export async function encryptFscrypt(o: FscryptEncryptOptions): Promise<FscryptEncryptResult> {
  const fs = await import('../volumes/fscrypt.ts')
  const c = configDir(o.configDir)
  const config = loadConfig(c)
  const keys = loadKeys(c)
  const jpath = journalPath(o.stateDir, o.name, 'fscrypt')
  let j = loadJournal<FscryptJournal>(jpath)
  const base = { name: o.name, dir: o.dir }
  if (j?.finished === true)
    return { ...base, status: 'unchanged', resumed: false, message: 'already migrated' }
  if (config === undefined || keys === undefined)
    throw new UnlockdError(
      'not_enrolled',
      'this host is not enrolled: run `unlockd enroll --server URL --token-file F` first, so the new key can be escrowed',
      { details: { reason: 'not_enrolled' } },
    )

  if (j === undefined) {
    // Everything is checked before anything changes.
    let st
    try {
      st = statSync(o.dir)
    } catch (cause) {
      throw new UnlockdError('volume_invalid', `directory ${o.dir} does not exist`, { cause })
    }
    if (!st.isDirectory()) throw new UnlockdError('volume_invalid', `${o.dir} is not a directory`)
    const mount = await fs.findMount(o.dir)
    if (mount.mountpoint === o.dir)
      throw new UnlockdError(
        'volume_invalid',
        `${o.dir} is a mount point; its contents cannot be swapped with a sibling: migrate a directory below it, or use --luks for the whole filesystem`,
      )
    let policy: string | undefined
    try {
      policy = await fs.getPolicy(o.dir)
    } catch (err) {
      if (
        err instanceof UnlockdError &&
        err.code === 'fscrypt_unsupported' &&
        o.enableEncryptFeature
      )
        throw new UnlockdError(
          'fscrypt_unsupported',
          `${mount.source} is mounted at ${mount.mountpoint}; tune2fs -O encrypt is only run on an unmounted filesystem: unmount it (or reboot into a rescue system), run tune2fs -O encrypt ${mount.source}, mount it and run this again`,
          { details: { reason: 'no_encrypt_feature' } },
        )
      if (err instanceof UnlockdError && err.code === 'fscrypt_unsupported')
        throw new UnlockdError(err.code, err.message, { details: { reason: 'no_encrypt_feature' } })
      throw err
    }
    if (policy !== undefined)
      throw new UnlockdError(
        'volume_invalid',
        `${o.dir} is already an fscrypt directory (key ${policy}); enroll it with \`unlockd enroll --fscrypt\` if it is new and empty`,
        { details: { reason: 'already_encrypted' } },
      )
    if (readdirSync(o.dir).length === 0)
      throw new UnlockdError(
        'volume_invalid',
        `${o.dir} is empty: use \`unlockd enroll --fscrypt ${o.dir}\`, which encrypts it directly`,
        { details: { reason: 'empty' } },
      )
    const users = usersOf(o.dir)
    if (users.length > 0 && o.units.length === 0)
      throw new UnlockdError(
        'volume_busy',
        `${o.dir} is in use (${users.map((u) => `pid ${u.pid} ${u.command}: ${u.path}`).join('; ')}): stop those programs, or name their units with --stop UNIT`,
        { details: { reason: 'busy' } },
      )
    const sibling = join(dirname(o.dir), `.${basename(o.dir)}.unlockd-new`)
    if (existsSync(sibling))
      throw new UnlockdError(
        'conflict',
        `${sibling} exists and no journal explains it: move it away first`,
      )
    const message = `migrate ${o.dir} (${await treeBytes(o.dir)} bytes of files) into an fscrypt v2 directory via ${sibling} on ${mount.mountpoint}`
    if (o.dryRun) return { ...base, status: 'planned', resumed: false, message }
    const key = randomBytes(fs.FSCRYPT_KEY_BYTES)
    j = {
      version: 1,
      kind: 'fscrypt',
      name: o.name,
      dir: o.dir,
      sibling,
      mountpoint: mount.mountpoint,
      keyId: null,
      units: o.units,
      sealedKey: await sealVolumeKey(key, [publicOf(keys.sealing)]),
      steps: STEPS,
      completed: [],
      current: null,
      finished: false,
      startedAt: new Date().toISOString(),
      finishedAt: null,
    }
    zeroize(key)
    saveJournal(jpath, j)
  } else if (o.dryRun) {
    return {
      ...base,
      status: 'planned',
      resumed: true,
      message: `a migration is in progress (${j.current ?? 'next step'})`,
    }
  }
  const journal: FscryptJournal = j
  if (journal.sealedKey === null)
    throw new UnlockdError('config_invalid', `the journal ${jpath} has lost its key`)
  const key = await openEscrowBlob(journal.sealedKey, keys.sealing)
  const resumed = journal.completed.length > 0 || journal.current !== null
  const { dir, sibling, mountpoint } = journal

  /** True once the swap happened: the directory's own name holds the encrypted tree. */
  const swapped = async (): Promise<boolean> => (await fs.getPolicy(dir)) !== undefined

  const steps: Record<FscryptStep, (interrupted: boolean) => Promise<void>> = {
    'stop-units': async () => {
      for (const u of journal.units) {
        const r = await tool('systemctl', ['stop', u])
        if (r.code !== 0)
          throw new UnlockdError('internal', `systemctl stop ${u} failed: ${lastLine(r)}`)
      }
    },
    prepare: async () => {
      journal.keyId = await fs.addKey(mountpoint, key)
      if (!existsSync(sibling)) {
        const st = statSync(dir)
        mkdirSync(sibling, { mode: 0o700 })
        chownSync(sibling, st.uid, st.gid)
      }
      if ((await fs.getPolicy(sibling)) === undefined) await fs.setPolicy(sibling, journal.keyId)
    },
    copy: async (interrupted) => {
      await fs.addKey(mountpoint, key) // after a reboot the key is no longer in the kernel
      if (interrupted)
        for (const e of readdirSync(sibling))
          rmSync(join(sibling, e), { recursive: true, force: true })
      const total = await treeBytes(dir)
      o.progress.update({
        phase: 'copying',
        doneBytes: 0,
        totalBytes: total,
        rate: undefined,
        etaSeconds: undefined,
      })
      const started = (): boolean => readdirSync(sibling).length >= 3
      await withSpawnCrash(
        'copy',
        'cp',
        async () => {
          const r = await tool('cp', ['-a', '--sparse=always', '--', `${dir}/.`, `${sibling}/`])
          if (r.code !== 0)
            throw new UnlockdError(
              'fscrypt_failed',
              `copying ${dir} failed: ${lastLine(r)}; the original is untouched: fix the cause and run the same command again`,
            )
        },
        started,
      )
      o.progress.update({
        phase: 'copying',
        doneBytes: total,
        totalBytes: total,
        rate: undefined,
        etaSeconds: 0,
      })
      o.progress.done()
    },
    verify: async () => {
      await fs.addKey(mountpoint, key)
      const total = (await treeBytes(dir)) * 2
      let done = 0
      let half = false
      const diffs = await compareTrees(dir, sibling, (n) => {
        done += n
        o.progress.update({
          phase: 'verifying',
          doneBytes: done,
          totalBytes: total,
          rate: undefined,
          etaSeconds: undefined,
        })
        if (!half && done * 2 >= total) {
          half = true
          crashPoint('verify')
        }
      })
      o.progress.done()
      if (diffs.length > 0)
        throw new UnlockdError(
          'fscrypt_failed',
          `the encrypted copy differs from ${dir} (${diffs.join('; ')}); nothing was swapped: find what changed the tree, then run the same command again`,
        )
    },
    swap: async () => {
      if (await swapped()) return // the exchange happened just before a crash
      await exchangePaths(dir, sibling)
      crashPoint('swap')
    },
    'start-units': async () => {
      for (const u of journal.units) {
        const r = await tool('systemctl', ['start', u])
        if (r.code !== 0) o.log(`warning: systemctl start ${u} failed: ${lastLine(r)}`)
      }
    },
    enroll: async () => {
      const cfg = loadConfig(c)
      if (cfg === undefined) throw new UnlockdError('not_enrolled', 'agent.json disappeared')
      if (cfg.volumes.some((v) => v.name === o.name)) return
      const keyId = journal.keyId
      if (keyId === null) throw new UnlockdError('internal', 'no key id in the journal')
      const blob = await sealVolumeKey(key, [
        publicOf(keys.sealing),
        ...(o.recoveryKey ? [o.recoveryKey] : []),
      ])
      const hostId = await thumbprint(publicOf(keys.signing))
      let lastErr: unknown
      let done = false
      for (const s of cfg.servers) {
        try {
          await addVolumes(transportFor(c, s, 15_000), {
            keys,
            hostId,
            volumes: [{ name: o.name, kind: 'fscrypt', ref: keyId, blob }],
          })
          done = true
          break
        } catch (err) {
          lastErr = err
          if (!(err instanceof UnlockdError) || err.code !== 'server_unreachable') break
        }
      }
      if (!done) throw lastErr
      saveConfig(c, {
        ...cfg,
        volumes: [
          ...cfg.volumes,
          {
            name: o.name,
            kind: 'fscrypt',
            path: dir,
            mountpoint,
            keyId,
            blobDigest: await blobDigest(blob),
          },
        ],
      })
    },
    cleanup: async () => {
      if (!(await swapped()))
        throw new UnlockdError('internal', `${dir} is not encrypted; refusing to remove ${sibling}`)
      const entries = (): number => {
        try {
          return readdirSync(sibling).length
        } catch {
          return 0
        }
      }
      const before = entries()
      if (existsSync(sibling))
        await withSpawnCrash(
          'cleanup',
          'rm',
          async () => {
            const r = await tool('rm', ['-rf', '--one-file-system', '--', sibling])
            if (r.code !== 0)
              throw new UnlockdError(
                'fscrypt_failed',
                `removing the plaintext copy ${sibling} failed: ${lastLine(r)}`,
              )
          },
          () => entries() < before,
        )
      journal.sealedKey = null
    },
  }
  o.onStart?.(0)
  try {
    await runSteps<FscryptStep, FscryptJournal>(jpath, journal, (s, i) => steps[s](i), o.log)
  } finally {
    zeroize(key)
  }
  return { ...base, status: 'converted', resumed, message: 'migrated' }
}
