/**
 * fscrypt v2 directories through the kernel's ioctls, called from Node with koffi (libc `ioctl`).
 *
 * Why not Debian's `fscrypt` tool: its raw_key protector takes a 32-byte *wrapping* key that must
 * be a regular file (a pipe is refused), and it keeps the real 64-byte policy key wrapped in
 * `.fscrypt` metadata on the filesystem. For an escrow that is the wrong shape: the escrowed
 * secret would be the wrapping key plus on-disk metadata that survives a shred, and a key file
 * would sit on disk. With the ioctls the escrowed secret is the raw 64-byte v2 master key, which
 * goes from memory to the kernel and is zeroed; nothing is written to the filesystem, and
 * removing the key from the kernel plus destroying the escrow copy is the whole shred.
 * koffi ships prebuilt binaries, so no compiler is needed; it is loaded lazily so hosts without
 * fscrypt volumes never load it.
 *
 * Files are opened with Node's fs (which sets O_CLOEXEC) and only the ioctl goes through koffi.
 * Struct layouts: linux/fscrypt.h (offsets noted next to each buffer).
 */
import type Koffi from 'koffi'
import { constants as osConstants } from 'node:os'
import { constants as fsConstants } from 'node:fs'
import { open, readFile, readdir, realpath, stat, access } from 'node:fs/promises'
import { UnlockdError, describeError } from '../../shared/errors.ts'
import { openLibc } from '../libc.ts'

export type KeyStatus = 'absent' | 'present' | 'incompletely_removed'
/** 'busy': files are still open, the key is only partly gone; close them and remove again. */
export type RemovalResult = 'removed' | 'busy' | 'absent'

export interface MountInfo {
  mountpoint: string
  fstype: string
  /** Mount source, usually the block device (e.g. /dev/sda2, /dev/loop0). */
  source: string
}

export interface FscryptTarget extends MountInfo {
  /** The directory, with symlinks resolved. */
  dir: string
  /** Key identifier (hex) of its v2 policy, or undefined when it is not encrypted yet. */
  policy: string | undefined
}

export const FSCRYPT_KEY_BYTES = 64

// _IOC(dir, 'f', nr, size): dir<<30 | size<<16 | 'f'<<8 | nr. SET_POLICY encodes the v1 size (12)
// for historical reasons, though a v2 struct is passed.
const ioc = (dir: number, nr: number, size: number): number =>
  ((dir << 30) | (size << 16) | (0x66 << 8) | nr) >>> 0
const IOC_W = 1
const IOC_R = 2
const KEY_SPEC_SIZE = 40 // u32 type, u32 reserved, u8 u[32]
const ADD_KEY_SIZE = KEY_SPEC_SIZE + 4 + 4 + 32 // + raw_size, key_id, reserved[8] = 80, raw key follows
const REMOVE_KEY_SIZE = KEY_SPEC_SIZE + 4 + 20 // + removal_status_flags, reserved[5] = 64
const KEY_STATUS_SIZE = 128
const FS_IOC_SET_ENCRYPTION_POLICY = ioc(IOC_R, 19, 12)
const FS_IOC_GET_ENCRYPTION_POLICY_EX = ioc(IOC_R | IOC_W, 22, 9)
const FS_IOC_ADD_ENCRYPTION_KEY = ioc(IOC_R | IOC_W, 23, ADD_KEY_SIZE)
const FS_IOC_REMOVE_ENCRYPTION_KEY = ioc(IOC_R | IOC_W, 24, REMOVE_KEY_SIZE)
const FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS = ioc(IOC_R | IOC_W, 25, REMOVE_KEY_SIZE)
const FS_IOC_GET_ENCRYPTION_KEY_STATUS = ioc(IOC_R | IOC_W, 26, KEY_STATUS_SIZE)
const KEY_SPEC_TYPE_IDENTIFIER = 2
const POLICY_V2 = 2
const MODE_AES_256_XTS = 1
const MODE_AES_256_CTS = 4
const POLICY_FLAGS_PAD_32 = 0x02
const REMOVAL_FLAG_FILES_BUSY = 0x01
const V2_POLICY_SIZE = 24

const E = osConstants.errno
// Node's errno table lacks ENOKEY ("Required key not available"): 126 in the generic Linux table (x86, arm).
const ENOKEY = 126
const ID_HEX = /^[0-9a-f]{32}$/

interface Libc {
  ioctl(fd: number, request: number, arg: Buffer): number
  errno(): number
}

let libcPromise: Promise<Libc> | undefined

async function loadLibc(): Promise<Libc> {
  let koffi: typeof Koffi
  try {
    koffi = (await import('koffi')).default
  } catch (err) {
    throw new UnlockdError(
      'fscrypt_unsupported',
      'fscrypt support needs the koffi module, which is not installed with this agent: reinstall unlockd with its dependencies',
      { cause: err },
    )
  }
  const lib = openLibc(koffi)
  // Declared with a fixed third argument: identical to the variadic call for a pointer on Linux ABIs.
  const ioctl = lib.func('int ioctl(int fd, unsigned long request, _Inout_ uint8_t *arg)')
  return {
    ioctl: (fd, request, arg) => ioctl(fd, request, arg) as number,
    errno: () => koffi.errno(),
  }
}

function libc(): Promise<Libc> {
  libcPromise ??= loadLibc().catch((err: unknown) => {
    libcPromise = undefined // allow a retry after fixing the install
    throw err
  })
  return libcPromise
}

class IoctlError extends Error {
  readonly errno: number
  constructor(what: string, errno: number) {
    super(`${what} failed: errno ${errno}`)
    this.errno = errno
  }
}

/** Run `fn` with an O_RDONLY|O_DIRECTORY fd of `dir`, closing it afterwards. */
async function withDir<T>(dir: string, fn: (fd: number, lib: Libc) => T): Promise<T> {
  const lib = await libc()
  let fh
  try {
    fh = await open(dir, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY)
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    if (code === 'ENOENT')
      throw new UnlockdError('volume_invalid', `directory ${dir} does not exist`, { cause: err })
    if (code === 'ENOTDIR')
      throw new UnlockdError('volume_invalid', `${dir} is not a directory`, { cause: err })
    throw new UnlockdError('fscrypt_failed', `cannot open ${dir}: ${describeError(err)}`, {
      cause: err,
    })
  }
  try {
    return fn(fh.fd, lib)
  } finally {
    await fh.close()
  }
}

function call(lib: Libc, fd: number, request: number, buf: Buffer, what: string): void {
  if (lib.ioctl(fd, request, buf) < 0) throw new IoctlError(what, lib.errno())
}

function checkId(idHex: string): void {
  if (typeof idHex !== 'string' || !ID_HEX.test(idHex))
    throw new TypeError('key identifier must be 32 lowercase hex digits')
}

function keySpec(idHex: string, size: number): Buffer {
  checkId(idHex)
  const b = Buffer.alloc(size)
  b.writeUInt32LE(KEY_SPEC_TYPE_IDENTIFIER, 0)
  Buffer.from(idHex, 'hex').copy(b, 8)
  return b
}

/** Errors common to every ioctl, with the remedy. */
async function ioctlFailure(err: unknown, path: string, action: string): Promise<UnlockdError> {
  if (!(err instanceof IoctlError)) {
    return err instanceof UnlockdError
      ? err
      : new UnlockdError('fscrypt_failed', `cannot ${action} ${path}: ${describeError(err)}`, {
          cause: err,
        })
  }
  if (err.errno === E.ENOTTY || err.errno === E.EOPNOTSUPP) return unsupported(path, err)
  if (err.errno === E.EACCES || err.errno === E.EPERM) {
    return new UnlockdError(
      'fscrypt_failed',
      `cannot ${action} ${path}: permission denied (run as root or as the directory's owner)`,
      { cause: err },
    )
  }
  return new UnlockdError('fscrypt_failed', `cannot ${action} ${path}: errno ${err.errno}`, {
    cause: err,
    details: { errno: err.errno },
  })
}

/** The `fscrypt_unsupported` error for `path`, naming the filesystem and how to fix it. */
async function unsupported(path: string, cause: unknown): Promise<UnlockdError> {
  let mount: MountInfo | undefined
  try {
    mount = await findMount(path)
  } catch {
    mount = undefined
  }
  const where =
    mount === undefined ? path : `${mount.mountpoint} (${mount.fstype} on ${mount.source})`
  if (!(await exists('/sys/fs/ext4/features/encryption')) && mount?.fstype === 'ext4') {
    return new UnlockdError(
      'fscrypt_unsupported',
      `this kernel has no filesystem encryption support (CONFIG_FS_ENCRYPTION), so ${where} cannot use fscrypt`,
      { cause },
    )
  }
  if (mount?.fstype === 'ext4') {
    return new UnlockdError(
      'fscrypt_unsupported',
      `${where} has no 'encrypt' feature; enable it with: tune2fs -O encrypt ${mount.source} (unmounted)`,
      { cause, details: { mountpoint: mount.mountpoint, source: mount.source } },
    )
  }
  return new UnlockdError(
    'fscrypt_unsupported',
    `${where} does not support fscrypt: use an ext4 filesystem made or tuned with -O encrypt (or f2fs with the encrypt feature)`,
    { cause },
  )
}

async function exists(path: string): Promise<boolean> {
  try {
    await access(path)
    return true
  } catch {
    return false
  }
}

/**
 * Add a 64-byte v2 master key to the filesystem mounted at `mountpoint` (any path on it works)
 * and return its key identifier (hex). Idempotent. The caller owns and zeroes `key`; the copy
 * made for the kernel is zeroed here. A wrong key simply yields a different identifier.
 */
export async function addKey(mountpoint: string, key: Uint8Array): Promise<string> {
  if (!(key instanceof Uint8Array) || key.byteLength !== FSCRYPT_KEY_BYTES) {
    throw new UnlockdError(
      'fscrypt_failed',
      `an fscrypt v2 key is ${FSCRYPT_KEY_BYTES} bytes, got ${key.byteLength}`,
    )
  }
  return withDir(mountpoint, (fd, lib) => {
    const arg = Buffer.alloc(ADD_KEY_SIZE + key.byteLength)
    try {
      arg.writeUInt32LE(KEY_SPEC_TYPE_IDENTIFIER, 0)
      arg.writeUInt32LE(key.byteLength, KEY_SPEC_SIZE) // raw_size
      arg.set(key, ADD_KEY_SIZE)
      call(lib, fd, FS_IOC_ADD_ENCRYPTION_KEY, arg, 'FS_IOC_ADD_ENCRYPTION_KEY')
      return arg.subarray(8, 24).toString('hex') // key_spec.u.identifier, filled in by the kernel
    } finally {
      arg.fill(0)
    }
  }).catch(async (err: unknown) => {
    throw await ioctlFailure(err, mountpoint, 'add an fscrypt key to')
  })
}

/**
 * Encrypt the empty directory `dir` with a v2 policy (AES-256-XTS contents, AES-256-CTS names,
 * 32-byte name padding) for key `idHex`, which must have been added with addKey first.
 */
export async function setPolicy(dir: string, idHex: string): Promise<void> {
  const policy = Buffer.alloc(V2_POLICY_SIZE)
  policy[0] = POLICY_V2
  policy[1] = MODE_AES_256_XTS
  policy[2] = MODE_AES_256_CTS
  policy[3] = POLICY_FLAGS_PAD_32
  checkId(idHex)
  Buffer.from(idHex, 'hex').copy(policy, 8) // master_key_identifier at offset 8
  await withDir(dir, (fd, lib) =>
    call(lib, fd, FS_IOC_SET_ENCRYPTION_POLICY, policy, 'FS_IOC_SET_ENCRYPTION_POLICY'),
  ).catch(async (err: unknown) => {
    if (err instanceof IoctlError) {
      if (err.errno === E.ENOTEMPTY) throw notEmpty(dir)
      if (err.errno === E.EEXIST) {
        throw new UnlockdError(
          'volume_invalid',
          `directory ${dir} is already encrypted with another key or policy`,
          { cause: err },
        )
      }
      if (err.errno === ENOKEY) {
        throw new UnlockdError(
          'fscrypt_failed',
          `key ${idHex} is not added on the filesystem of ${dir}: add it before setting the policy`,
          { cause: err },
        )
      }
    }
    throw await ioctlFailure(err, dir, 'set an fscrypt policy on')
  })
}

/**
 * Key identifier (hex) of the v2 policy of `dir`, or undefined when `dir` is not encrypted.
 * A legacy v1 policy gives `volume_invalid`.
 */
export async function getPolicy(dir: string): Promise<string | undefined> {
  // struct fscrypt_get_policy_ex_arg: u64 policy_size, then the policy union.
  const arg = Buffer.alloc(8 + V2_POLICY_SIZE)
  arg.writeBigUInt64LE(BigInt(V2_POLICY_SIZE), 0)
  try {
    await withDir(dir, (fd, lib) =>
      call(lib, fd, FS_IOC_GET_ENCRYPTION_POLICY_EX, arg, 'FS_IOC_GET_ENCRYPTION_POLICY_EX'),
    )
  } catch (err) {
    if (err instanceof IoctlError && err.errno === E.ENODATA) return undefined
    throw await ioctlFailure(err, dir, 'read the fscrypt policy of')
  }
  if (arg[8] !== POLICY_V2) {
    throw new UnlockdError(
      'volume_invalid',
      `directory ${dir} uses a legacy v1 fscrypt policy; unlockd manages v2 policies only`,
    )
  }
  return arg.subarray(16, 32).toString('hex')
}

/** Whether key `idHex` is present on the filesystem mounted at `mountpoint`. */
export async function keyStatus(mountpoint: string, idHex: string): Promise<KeyStatus> {
  const arg = keySpec(idHex, KEY_STATUS_SIZE)
  const status = await withDir(mountpoint, (fd, lib) => {
    call(lib, fd, FS_IOC_GET_ENCRYPTION_KEY_STATUS, arg, 'FS_IOC_GET_ENCRYPTION_KEY_STATUS')
    return arg.readUInt32LE(KEY_SPEC_SIZE + 24) // after key_spec and reserved[6]
  }).catch(async (err: unknown) => {
    throw await ioctlFailure(err, mountpoint, 'read the fscrypt key status of')
  })
  switch (status) {
    case 1:
      return 'absent'
    case 2:
      return 'present'
    case 3:
      return 'incompletely_removed'
    default:
      throw new UnlockdError(
        'fscrypt_failed',
        `the kernel returned an unknown fscrypt key status ${status}`,
      )
  }
}

/**
 * Remove key `idHex` from the filesystem at `mountpoint`, locking its directories.
 * Returns 'busy' when files are still open (they stay readable until closed: close them and
 * call again), 'absent' when the key was not there. `allUsers` (root only) also drops other
 * users' claims on the key, which a shred wants.
 */
export async function removeKey(
  mountpoint: string,
  idHex: string,
  opts: { allUsers?: boolean } = {},
): Promise<RemovalResult> {
  const arg = keySpec(idHex, REMOVE_KEY_SIZE)
  const request =
    opts.allUsers === true ? FS_IOC_REMOVE_ENCRYPTION_KEY_ALL_USERS : FS_IOC_REMOVE_ENCRYPTION_KEY
  try {
    await withDir(mountpoint, (fd, lib) =>
      call(lib, fd, request, arg, 'FS_IOC_REMOVE_ENCRYPTION_KEY'),
    )
  } catch (err) {
    if (err instanceof IoctlError && err.errno === ENOKEY) return 'absent'
    throw await ioctlFailure(err, mountpoint, 'remove an fscrypt key from')
  }
  return (arg.readUInt32LE(KEY_SPEC_SIZE) & REMOVAL_FLAG_FILES_BUSY) !== 0 ? 'busy' : 'removed'
}

/** Undo mountinfo's octal escapes (\040 for a space, \011, \012, \134). */
function unescapeMountField(s: string): string {
  return s.replace(/\\([0-7]{3})/g, (_, oct: string) => String.fromCharCode(parseInt(oct, 8)))
}

/** The mount that holds `dir` (longest mount point prefix in /proc/self/mountinfo; the topmost on ties). */
export async function findMount(dir: string): Promise<MountInfo> {
  let real: string
  try {
    real = await realpath(dir)
  } catch (err) {
    throw new UnlockdError('volume_invalid', `directory ${dir} does not exist`, { cause: err })
  }
  const text = await readFile('/proc/self/mountinfo', 'utf8')
  let best: MountInfo | undefined
  for (const line of text.split('\n')) {
    // id parent major:minor root mountpoint options [optional...] - fstype source superoptions
    const fields = line.split(' ')
    const sep = fields.indexOf('-', 6)
    const mp = fields[4]
    const fstype = fields[sep + 1]
    const source = fields[sep + 2]
    if (sep < 0 || mp === undefined || fstype === undefined || source === undefined) continue
    const mountpoint = unescapeMountField(mp)
    const inside = mountpoint === '/' || real === mountpoint || real.startsWith(`${mountpoint}/`)
    if (inside && (best === undefined || mountpoint.length >= best.mountpoint.length)) {
      best = { mountpoint, fstype, source: unescapeMountField(source) }
    }
  }
  if (best === undefined)
    throw new UnlockdError(
      'fscrypt_failed',
      `cannot find the filesystem of ${dir} in /proc/self/mountinfo`,
    )
  return best
}

/** Mount point of the filesystem holding `dir`. */
export async function findMountpoint(dir: string): Promise<string> {
  return (await findMount(dir)).mountpoint
}

function notEmpty(dir: string): UnlockdError {
  return new UnlockdError(
    'volume_invalid',
    `directory ${dir} is not empty; fscrypt can only encrypt an empty directory: move its files out, enroll, move them back`,
    { details: { dir } },
  )
}

/**
 * Check that `dir` can be (or already is) an fscrypt v2 directory, before enrolling it.
 * Throws `fscrypt_unsupported` when its filesystem cannot do fscrypt (with the tune2fs command
 * for ext4 without the 'encrypt' feature) and `volume_invalid` when it is missing, not a
 * directory, not empty (and not encrypted yet), or uses a v1 policy.
 */
export async function checkFilesystem(dir: string): Promise<FscryptTarget> {
  let real: string
  try {
    real = await realpath(dir)
    if (!(await stat(real)).isDirectory())
      throw new UnlockdError('volume_invalid', `${dir} is not a directory`)
  } catch (err) {
    if (err instanceof UnlockdError) throw err
    throw new UnlockdError('volume_invalid', `directory ${dir} does not exist`, { cause: err })
  }
  const mount = await findMount(real)
  const policy = await getPolicy(real) // throws fscrypt_unsupported when the filesystem cannot do it
  if (policy === undefined && (await readdir(real)).length > 0) throw notEmpty(dir)
  return { dir: real, ...mount, policy }
}
