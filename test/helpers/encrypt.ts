/**
 * Fixtures for `unlockd encrypt` tests: an enrolled host against a real escrow server, a seeded
 * ext4 image, and an offline decryption of a COPY of a converted image (no device-mapper needed)
 * to compare its files with the originals.
 */
import type { ExecutionContext } from 'ava'
import { mkdir, readFile, truncate, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { startTestServer, type TestServer } from './server.ts'
import { runCli } from './cli.ts'
import { mustRun, tool } from './root.ts'
import { FIXTURE_PBKDF } from './luks.ts'
import { seedDataset, snapshot, type Entry, type SeedOptions } from './dataset.ts'

export interface EnrolledHost {
  srv: TestServer
  cfg: string
  env: Record<string, string>
}

/** A host enrolled with no volumes yet (fast PBKDF for every keyslot it adds). */
export async function enrolledHost(t: ExecutionContext, dir: string): Promise<EnrolledHost> {
  const srv = await startTestServer(t)
  const tok = await srv.admin('POST', '/tokens', { host: 'web-1', ttlSeconds: 600 })
  const tokenFile = join(dir, 'token')
  await writeFile(tokenFile, tok.body.token, { mode: 0o600 })
  const cfg = join(dir, 'etc')
  const env = { UNLOCKD_LUKS_PBKDF: 'fast', UNLOCKD_RUN_DIR: join(dir, 'run') }
  const e = await runCli(
    [
      'enroll',
      '--server',
      srv.url,
      '--token-file',
      tokenFile,
      '--name',
      'web-1',
      '--config',
      cfg,
      '--json',
    ],
    env,
  )
  if (e.code !== 0) throw new Error(`enroll failed: ${e.stderr}`)
  return { srv, cfg, env }
}

/** A plaintext ext4 image of `sizeMiB`, seeded through a loop mount; returns its snapshot. */
export async function seededImage(
  dir: string,
  sizeMiB: number,
  seed: SeedOptions = {},
): Promise<{ img: string; before: Record<string, Entry> }> {
  const img = join(dir, 'data.img')
  const mnt = join(dir, 'seed-mnt')
  await writeFile(img, '', { mode: 0o600 })
  await truncate(img, sizeMiB * 1024 * 1024)
  await mustRun('mkfs.ext4', ['-q', '-F', '-b', '4096', img])
  await mkdir(mnt)
  await mustRun('mount', ['-o', 'loop', img, mnt])
  try {
    await seedDataset(mnt, seed)
    return { img, before: await snapshot(mnt) }
  } finally {
    await mustRun('umount', [mnt])
  }
}

/**
 * Decrypt a copy of LUKS2 image `img` offline with `passphrase` and return the plaintext copy.
 * cryptsetup decrypts in place only with a detached header whose data offset is 0, so: dump the
 * volume key, copy the data segment alone, give it a detached header with that volume key, and
 * `reencrypt --decrypt --header` it.
 */
export async function decryptCopy(
  dir: string,
  img: string,
  passphrase: Uint8Array,
): Promise<string> {
  const meta = JSON.parse(
    await mustRun('cryptsetup', ['luksDump', '--dump-json-metadata', img]),
  ) as {
    segments: Record<string, { offset: string; encryption: string; sector_size: number }>
  }
  const seg = meta.segments['0']
  if (seg === undefined) throw new Error('no data segment')
  const vk = join(dir, 'vk.bin')
  await mustRun(
    'cryptsetup',
    [
      'luksDump',
      '--dump-volume-key',
      '--volume-key-file',
      vk,
      '--batch-mode',
      '--key-file',
      '-',
      img,
    ],
    passphrase,
  )
  const keyBits = (await readFile(vk)).byteLength * 8
  const copy = join(dir, 'plain-copy.img')
  const offsetMiB = Number(seg.offset) / 1048576
  await mustRun('dd', [
    `if=${img}`,
    `of=${copy}`,
    'bs=1M',
    `skip=${offsetMiB}`,
    'conv=sparse',
    'status=none',
  ])
  const hdr = join(dir, 'detached.hdr')
  await writeFile(hdr, '', { mode: 0o600 })
  await truncate(hdr, 17 * 1024 * 1024)
  await mustRun('cryptsetup', [
    'luksFormat',
    '--batch-mode',
    '--type',
    'luks2',
    '--header',
    hdr,
    '--offset',
    '0',
    '--volume-key-file',
    vk,
    '--key-size',
    String(keyBits),
    '--cipher',
    seg.encryption,
    '--sector-size',
    String(seg.sector_size),
    ...FIXTURE_PBKDF,
    '--key-file',
    vk,
    copy,
  ])
  await mustRun('cryptsetup', [
    'reencrypt',
    '--decrypt',
    '--header',
    hdr,
    '--force-offline-reencrypt',
    '--batch-mode',
    '--key-file',
    vk,
    copy,
  ])
  return copy
}

/** e2fsck -fn result and the snapshot of an ext4 image, mounted read-only for the walk. */
export async function checkImage(
  dir: string,
  img: string,
): Promise<{ fsck: number; fsckOut: string; after: Record<string, Entry> }> {
  const f = await tool('e2fsck', ['-fn', img])
  const mnt = join(dir, 'check-mnt')
  await mkdir(mnt, { recursive: true })
  await mustRun('mount', ['-o', 'loop,ro', img, mnt])
  try {
    return { fsck: f.code, fsckOut: f.stdout + f.stderr, after: await snapshot(mnt) }
  } finally {
    await mustRun('umount', [mnt])
  }
}

/**
 * The key the escrow server releases for `volume`, opened with the host's sealing key: what the
 * agent would hand to cryptsetup at boot. Needs UNLOCKD_RUN_DIR-free code paths only.
 */
export async function escrowedKey(cfg: string, volume: string): Promise<Uint8Array> {
  const { configDir, requireEnrolled } = await import('../../agent/config-dir.ts')
  const { obtainRelease } = await import('../../agent/escrow.ts')
  const { openEscrowBlob } = await import('../../shared/crypto/blob.ts')
  const c = configDir(cfg)
  const { config, keys } = requireEnrolled(c)
  const released = await obtainRelease(c, config, keys, [volume], 30)
  const v = released.find((r) => r.name === volume)
  if (v === undefined) throw new Error(`the server released no key for ${volume}`)
  return openEscrowBlob(v.blob, keys.sealing)
}
