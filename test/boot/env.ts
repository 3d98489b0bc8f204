/**
 * Build artefacts for the QEMU boot tests, cached under `.tmp/boot-cache/` (gitignored):
 * - a Debian bookworm chroot with initramfs-tools + cryptsetup-initramfs (or dracut) and the
 *   distribution kernel, made by debian-chroot.sh and keyed by a hash of that script, so an edit to
 *   it rebuilds and a re-run reuses it (about 40 s from scratch);
 * - the kernel as an uncompressed ELF `vmlinux`, which QEMU boots through PVH, skipping about 3 s
 *   of in-guest decompression under TCG.
 * Each test run builds its own initramfs with the project's hook (`update-initramfs` / `dracut`
 * inside the chroot) on an overlay whose lower layer is the cached chroot: the cache is never
 * written to, runs do not disturb each other, and every mount lives in a private mount namespace
 * (`unshare`), so nothing stays mounted if the test is killed.
 */
import { createHash } from 'node:crypto'
import { spawn } from 'node:child_process'
import {
  existsSync,
  mkdirSync,
  readFileSync,
  readdirSync,
  renameSync,
  rmSync,
  statSync,
  writeFileSync,
} from 'node:fs'
import { copyFile, mkdir, readFile } from 'node:fs/promises'
import { dirname, join, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import { findBin, mustRun } from '../helpers/root.ts'
import { run } from '../helpers/spawn.ts'

export const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '../..')
export const CACHE = join(REPO, '.tmp/boot-cache')
const CHROOT_SCRIPT = join(REPO, 'test/boot/debian-chroot.sh')

export type Flavour = 'initramfs-tools' | 'dracut'

export interface Chroot {
  /** The cached, read-only root (lower layer). */
  rootfs: string
  kver: string
  vmlinuz: string
  /** The PVH-bootable ELF kernel, or the bzImage when it could not be extracted. */
  kernel: string
}

/** Programs the boot tests need on the host (CI installs them; see the report in initramfs-hooks/README.md). */
export const BOOT_BINS = [
  'qemu-system-x86_64',
  'debootstrap',
  'socat',
  'cryptsetup',
  'mkfs.ext4',
  'openssl',
  'xz',
  'unshare',
  'chroot',
  'busybox',
] as const

/** Why this machine cannot run the boot tests beyond root/bins (checked by rootTest), if anything. */
export function bootUnavailable(): string | undefined {
  const bb = findBin('busybox')
  if (
    bb !== undefined &&
    readFileSync(bb).subarray(0, 4096).includes(Buffer.from('/lib64/ld-linux'))
  ) {
    return `${bb} is dynamically linked; the test's root filesystem needs busybox-static`
  }
  return undefined
}

function hashOf(...parts: (string | Buffer)[]): string {
  const h = createHash('sha256')
  for (const p of parts) h.update(p)
  return h.digest('hex').slice(0, 12)
}

/** Run a command with inherited-nothing stdio, capturing output into a log file; reject with its tail. */
export async function runLogged(
  cmd: string,
  args: readonly string[],
  log: string,
  opts: { timeoutMs: number; env?: NodeJS.ProcessEnv },
): Promise<void> {
  const r = await run(cmd, args, {
    timeoutMs: opts.timeoutMs,
    mergeStderr: true,
    ...(opts.env === undefined ? {} : { cleanEnv: true, env: opts.env }),
  })
  writeFileSync(log, r.stdout)
  if (r.code !== 0)
    throw new Error(
      `${cmd} ${args.join(' ')} failed (${r.signal ?? `exit ${r.code}`}); log ${log}:\n${r.stdout.split('\n').slice(-25).join('\n')}`,
    )
}

/** A crude cross-process lock (mkdir is atomic); stale locks of dead processes are taken over. */
export async function withLock<T>(path: string, fn: () => Promise<T>): Promise<T> {
  const deadline = Date.now() + 15 * 60_000
  for (;;) {
    try {
      mkdirSync(path)
      writeFileSync(join(path, 'pid'), String(process.pid))
      break
    } catch {
      const pid = Number(readFileSafe(join(path, 'pid')))
      if (Number.isInteger(pid) && pid > 0 && !alive(pid)) {
        rmSync(path, { recursive: true, force: true })
        continue
      }
      if (Date.now() > deadline) throw new Error(`timed out waiting for the lock ${path}`)
      await new Promise((r) => setTimeout(r, 1000))
    }
  }
  try {
    return await fn()
  } finally {
    rmSync(path, { recursive: true, force: true })
  }
}

function readFileSafe(p: string): string {
  try {
    return readFileSync(p, 'utf8')
  } catch {
    return ''
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

/** The cached chroot for `flavour`, built on first use (and after debian-chroot.sh changes). */
export async function debianChroot(flavour: Flavour, log: (line: string) => void): Promise<Chroot> {
  const key = hashOf(readFileSync(CHROOT_SCRIPT), flavour)
  const name = `${flavour}-${key}`
  const dir = join(CACHE, name)
  mkdirSync(CACHE, { recursive: true })
  if (!existsSync(join(dir, '.complete'))) {
    await withLock(join(CACHE, `${name}.lock`), async () => {
      if (existsSync(join(dir, '.complete'))) return
      // Other keys of this flavour are stale (the script changed): each is ~700 MB.
      for (const old of readdirSync(CACHE)) {
        if (old.startsWith(`${flavour}-`) && old !== name && !old.endsWith('.lock'))
          rmSync(join(CACHE, old), { recursive: true, force: true })
      }
      const partial = `${dir}.partial`
      rmSync(partial, { recursive: true, force: true })
      const t0 = Date.now()
      log(`building the ${flavour} chroot in ${partial} (debootstrap + kernel, about 40-300 s)`)
      const args = flavour === 'dracut' ? [partial, '--dracut'] : [partial]
      await runLogged(CHROOT_SCRIPT, args, `${partial}.log`, { timeoutMs: 15 * 60_000 })
      writeFileSync(join(partial, '.complete'), new Date().toISOString())
      renameSync(partial, dir)
      rmSync(`${partial}.log`, { force: true })
      log(`chroot ready after ${((Date.now() - t0) / 1000).toFixed(1)} s`)
    })
  }
  const kver = readFileSync(join(dir, 'kver'), 'utf8').trim()
  const vmlinuz = join(dir, 'vmlinuz')
  return {
    rootfs: join(dir, 'rootfs'),
    kver,
    vmlinuz,
    kernel: await pvhKernel(vmlinuz, join(dir, 'vmlinux')),
  }
}

/**
 * Extract the xz payload of a bzImage into an ELF vmlinux (QEMU then boots it through PVH).
 * Falls back to the bzImage itself if that fails.
 */
async function pvhKernel(vmlinuz: string, out: string): Promise<string> {
  if (existsSync(out) && statSync(out).size > 0) return out
  const data = await readFile(vmlinuz)
  const at = data.indexOf(Buffer.from([0xfd, 0x37, 0x7a, 0x58, 0x5a, 0x00]))
  if (at < 0) return vmlinuz
  const tmp = `${out}.tmp`
  try {
    await new Promise<void>((res, rej) => {
      const xz = spawn('xz', ['-dc', '--single-stream'], { stdio: ['pipe', 'pipe', 'ignore'] })
      const chunks: Buffer[] = []
      xz.stdout.on('data', (c: Buffer) => chunks.push(c))
      xz.on('error', rej)
      xz.on('close', (code) => {
        const elf = Buffer.concat(chunks)
        if (code !== 0 || elf.subarray(0, 4).toString('latin1') !== '\x7fELF')
          rej(new Error(`xz exited ${code}`))
        else {
          writeFileSync(tmp, elf)
          res()
        }
      })
      xz.stdin.on('error', () => {})
      xz.stdin.end(data.subarray(at))
    })
    renameSync(tmp, out)
    return out
  } catch {
    rmSync(tmp, { force: true })
    return vmlinuz
  }
}

export interface InitramfsBuild {
  initrd: string
  seconds: number
  log: string
  /** Paths inside the image (lsinitramfs / lsinitrd). */
  contents: string[]
}

/**
 * Build an initramfs with the project's hook in an overlay of `chroot`. `stage` is a directory
 * tree copied over the root first (etc/unlockd, etc/crypttab, etc/fstab, the node binary ...);
 * then initramfs-hooks/install.sh installs the hook and the agent bundle, and the distribution's
 * own tool builds the image.
 */
export async function buildInitramfs(
  chroot: Chroot,
  flavour: Flavour,
  work: string,
  stage: string,
): Promise<InitramfsBuild> {
  const upper = join(work, 'upper')
  const ovlWork = join(work, 'ovl-work')
  const merged = join(work, 'merged')
  await mkdir(upper, { recursive: true })
  await mkdir(ovlWork, { recursive: true })
  await mkdir(merged, { recursive: true })
  await mustRun('cp', ['-a', `${stage}/.`, upper])
  await mustRun(join(REPO, 'initramfs-hooks/install.sh'), [
    '--root',
    upper,
    '--bundle',
    join(REPO, 'dist/unlockd-agent.mjs'),
    flavour,
  ])
  const out = join(work, 'initrd.img')
  const build =
    flavour === 'dracut'
      ? `chroot "$m" dracut -f --kver "$k" /boot/initrd-unlockd.img && cp "$m/boot/initrd-unlockd.img" "$o" && chroot "$m" lsinitrd /boot/initrd-unlockd.img > "$o.list"`
      : `chroot "$m" update-initramfs -c -k "$k" && cp "$m/boot/initrd.img-$k" "$o" && chroot "$m" lsinitramfs "/boot/initrd.img-$k" > "$o.list"`
  const script = [
    'set -eu',
    'l=$1; u=$2; w=$3; m=$4; k=$5; o=$6',
    'mount -t overlay overlay -o "lowerdir=$l,upperdir=$u,workdir=$w" "$m"',
    'mount --rbind /dev "$m/dev"; mount -t proc proc "$m/proc"; mount -t sysfs sys "$m/sys"; mount -t tmpfs tmp "$m/tmp"',
    build,
  ].join('\n')
  const log = join(work, 'build.log')
  const t0 = Date.now()
  await runLogged(
    'unshare',
    [
      '--mount',
      '--propagation',
      'private',
      '/bin/sh',
      '-c',
      script,
      'sh',
      chroot.rootfs,
      upper,
      ovlWork,
      merged,
      chroot.kver,
      out,
    ],
    log,
    { timeoutMs: 10 * 60_000 },
  )
  const seconds = (Date.now() - t0) / 1000
  // lsinitramfs prints bare paths; lsinitrd prints `ls -l` lines (path last, maybe "-> target").
  const contents = (await readFile(`${out}.list`, 'utf8'))
    .split('\n')
    .map(
      (l) =>
        l
          .trim()
          .replace(/ -> .*$/, '')
          .split(/\s+/)
          .at(-1) ?? '',
    )
    .filter((l) => l !== '')
  return { initrd: out, seconds, log, contents }
}

/** Copy a file keeping its mode (the node binary, the bundle). */
export async function stageFile(
  stage: string,
  rel: string,
  source: string,
  mode?: number,
): Promise<void> {
  const dest = join(stage, rel)
  await mkdir(dirname(dest), { recursive: true })
  await copyFile(source, dest)
  if (mode !== undefined) await mustRun('chmod', [mode.toString(8), dest])
}
