/**
 * The Debian packages and the Debian 12 chroot the package-based tests install them into, each
 * built once and cached under .tmp/ (gitignored):
 * - `builtDebs()`: tools/package-deb.sh (uncompressed: compressing the server's Node.js takes
 *   minutes) into .tmp/debs/KEY/, KEY a hash of everything that goes into the packages (the
 *   bundles, man pages and completion in dist/, the packaging scripts, the initramfs hooks, the
 *   units), so the packaging, provisioning and boot tests of one run share one build;
 * - `packagingChroot()`: test/packaging/debian-chroot.sh (debootstrap, Debian's nodejs 18 and
 *   every dependency preinstalled) into .tmp/packaging-cache/KEY/, KEY a hash of that script.
 * Builders of the same key wait for each other (a lock directory); a finished build is never
 * written to again.
 */
import { createHash } from 'node:crypto'
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
import { join, relative } from 'node:path'
import { REPO, runLogged, withLock } from '../boot/env.ts'
import { run, type RunResult } from './spawn.ts'

const LONG = { timeoutMs: 20 * 60_000 }

/** Files under `dir` (recursively), sorted, as paths relative to the repository. */
function filesUnder(dir: string): string[] {
  const abs = join(REPO, dir)
  if (!existsSync(abs)) return []
  if (statSync(abs).isFile()) return [dir]
  return readdirSync(abs, { recursive: true, encoding: 'utf8' })
    .map((f) => join(abs, f))
    .filter((f) => statSync(f).isFile())
    .map((f) => relative(REPO, f))
    .sort()
}

/** What tools/package-deb.sh reads from the tree. */
const PACKAGE_INPUTS = [
  'dist/unlockd-agent.mjs',
  'dist/unlockd.mjs',
  'dist/man',
  'dist/completion',
  'tools/package-deb.sh',
  'tools/debian',
  'initramfs-hooks',
  'systemd',
  'package.json',
  'package-lock.json',
]

function packageKey(): string {
  const h = createHash('sha256')
  for (const f of PACKAGE_INPUTS.flatMap(filesUnder)) {
    h.update(`${f}\0`)
    h.update(readFileSync(join(REPO, f)))
  }
  return h.digest('hex').slice(0, 12)
}

export interface Debs {
  dir: string
  agent: string
  server: string
}

function debsIn(dir: string): Debs {
  const files = readdirSync(dir).filter((f) => f.endsWith('.deb'))
  const find = (pkg: string): string => {
    const f = files.find((x) => x.startsWith(`${pkg}_`))
    if (f === undefined) throw new Error(`${dir} holds no ${pkg} package`)
    return join(dir, f)
  }
  return { dir, agent: find('unlockd-agent'), server: find('unlockd-server') }
}

/** unlockd-agent and unlockd-server built from this tree (run `npm run build` first). */
export async function builtDebs(): Promise<Debs> {
  for (const f of ['dist/unlockd-agent.mjs', 'dist/unlockd.mjs'])
    if (!existsSync(join(REPO, f))) throw new Error(`${f} is missing: run npm run build`)
  const base = join(REPO, '.tmp/debs')
  const key = packageKey()
  const dir = join(base, key)
  mkdirSync(base, { recursive: true })
  if (!existsSync(join(dir, '.complete'))) {
    await withLock(join(base, `${key}.lock`), async () => {
      if (existsSync(join(dir, '.complete'))) return
      // Older builds are of another tree: drop them (each is about 100 MB).
      for (const old of readdirSync(base))
        if (old !== key && !old.endsWith('.lock'))
          rmSync(join(base, old), { recursive: true, force: true })
      const partial = `${dir}.partial`
      rmSync(partial, { recursive: true, force: true })
      mkdirSync(partial)
      await runLogged(join(REPO, 'tools/package-deb.sh'), [partial], join(partial, 'build.log'), {
        ...LONG,
        env: { ...process.env, UNLOCKD_DEB_COMPRESSION: 'none' },
      })
      renameSync(partial, dir)
      // The marker last: a directory without it is a build that did not finish.
      writeFileSync(join(dir, '.complete'), new Date().toISOString())
    })
  }
  return debsIn(dir)
}

const CHROOT_SCRIPT = join(REPO, 'test/packaging/debian-chroot.sh')

/** The cached Debian 12 chroot (its rootfs) for this version of debian-chroot.sh. */
export async function packagingChroot(): Promise<string> {
  const base = join(REPO, '.tmp/packaging-cache')
  const key = createHash('sha256').update(readFileSync(CHROOT_SCRIPT)).digest('hex').slice(0, 12)
  const dir = join(base, key)
  if (existsSync(join(dir, 'rootfs'))) return join(dir, 'rootfs')
  mkdirSync(base, { recursive: true })
  await withLock(join(base, `${key}.lock`), async () => {
    if (existsSync(join(dir, 'rootfs'))) return
    const building = `${dir}.building-${process.pid}`
    rmSync(building, { recursive: true, force: true })
    await runLogged(CHROOT_SCRIPT, [building], join(base, `${key}.log`), LONG)
    renameSync(building, dir)
  })
  return join(dir, 'rootfs')
}

export interface ChrootOptions {
  /** Host directories bound into the chroot: host path -> absolute path inside. */
  binds?: Record<string, string>
  /** Environment of the command (besides PATH, HOME and LC_ALL). */
  env?: Record<string, string>
  input?: string
  timeoutMs?: number
}

/** The chroot's root while a command of `withChroot` runs (the overlay's mount point). */
export const chrootRoot = (state: string): string => join(state, 'merged')

/**
 * The shell that mounts the chroot of `inChroot` and `withChroot` and then execs its
 * arguments: $1 lower, $2 state, $3 the number of bind pairs, the pairs, then the command.
 */
const MOUNT_CHROOT = [
  'set -eu',
  'l=$1; s=$2; n=$3; shift 3',
  'm=$s/merged',
  'mount -t overlay overlay -o "lowerdir=$l,upperdir=$s/upper,workdir=$s/work" "$m"',
  'mount --rbind /dev "$m/dev"; mount -t proc proc "$m/proc"; mount -t sysfs sys "$m/sys"',
  'while [ "$n" -gt 0 ]; do mkdir -p "$m$2"; mount --rbind "$1" "$m$2"; shift 2; n=$((n - 1)); done',
  'exec "$@"',
].join('\n')

/**
 * Run `argv` on the host while a chroot is mounted at chrootRoot(state): an overlay of `lower`
 * (a cached rootfs, never written) under `state`/upper, which stays, so later calls with the
 * same `state` see what earlier ones installed. The mounts live in a private mount namespace
 * (`unshare`) that vanishes with the command: nothing stays mounted, even when the test is
 * killed. The command replaces the shell, so a signal to the returned process reaches it.
 */
export function chrootArgv(
  lower: string,
  state: string,
  argv: readonly string[],
  binds: Record<string, string> = {},
): string[] {
  for (const d of ['upper', 'work', 'merged']) mkdirSync(join(state, d), { recursive: true })
  const pairs = Object.entries(binds)
  return [
    '--mount',
    '--propagation',
    'private',
    '/bin/sh',
    '-c',
    MOUNT_CHROOT,
    'sh',
    lower,
    state,
    String(pairs.length),
    ...pairs.flat(),
    ...argv,
  ]
}

/** `chrootArgv` run to completion (arguments for `unshare`). */
export function withChroot(
  lower: string,
  state: string,
  argv: readonly string[],
  o: ChrootOptions & { cwd?: string } = {},
): Promise<RunResult> {
  return run('unshare', chrootArgv(lower, state, argv, o.binds), {
    timeoutMs: o.timeoutMs ?? 10 * 60_000,
    ...(o.env === undefined ? {} : { env: o.env }),
    ...(o.cwd === undefined ? {} : { cwd: o.cwd }),
    ...(o.input === undefined ? {} : { input: o.input }),
  })
}

/** The command line that runs `script` with sh as root inside the chroot, in a clean environment. */
export function chrootShell(
  state: string,
  script: string,
  env: Record<string, string> = {},
): string[] {
  const vars = Object.entries({
    PATH: '/usr/sbin:/usr/bin:/sbin:/bin',
    HOME: '/root',
    LC_ALL: 'C.UTF-8',
    ...env,
  }).map(([k, v]) => `${k}=${v}`)
  return ['chroot', chrootRoot(state), '/usr/bin/env', '-i', ...vars, '/bin/sh', '-c', script]
}

/** Run `script` with sh as root in the chroot of `chrootArgv` (see there). */
export function inChroot(
  lower: string,
  state: string,
  script: string,
  o: ChrootOptions = {},
): Promise<RunResult> {
  const { env, ...rest } = o
  return withChroot(lower, state, chrootShell(state, script, env), rest)
}
