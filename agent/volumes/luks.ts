/**
 * LUKS2 through the `cryptsetup` binary (via agent/exec.ts, the only spawn point).
 *
 * Keys are never in argv, env or a file: every key goes on stdin (`--key-file -`, read as binary,
 * newlines included). luksAddKey needs two keys at once; both go on the same stdin, the existing
 * key first, split by `--keyfile-size` and `--new-keyfile-size` with `-` as the new key file.
 * (The usual `/dev/fd/3` trick does not work from Node: its stdio "pipes" are socketpairs, and
 * open("/dev/fd/3") on a socket fails with ENXIO, so cryptsetup says "Failed to open key file".)
 *
 * Only LUKS2 is managed: the unlockd binding lives in a LUKS2 token. Needs cryptsetup >= 2.4
 * (`luksDump --dump-json-metadata`).
 * Everything but openVolume/closeVolume works on a plain image file without device-mapper.
 */
import { mkdtemp, open, rm, chmod } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { dirname, join } from 'node:path'
import { UnlockdError } from '../../shared/errors.ts'
import { run, type RunResult } from '../exec.ts'

/** A LUKS2 token as stored in the header; `json` is the whole object, to be validated by its parser. */
export interface LuksToken {
  id: number
  type: string
  keyslots: number[]
  json: Readonly<Record<string, unknown>>
}

export interface LuksInfo {
  /** Always 2: LUKS1 devices are rejected with `volume_invalid`. */
  version: 2
  uuid: string
  /** Active keyslot numbers, ascending. */
  keyslots: number[]
  /** Tokens by ascending id. */
  tokens: LuksToken[]
}

/**
 * PBKDF for new keyslots. `'default'` lets cryptsetup benchmark (argon2id, about 1 GiB and 2 s
 * per unlock): the production setting. `'fast'` is for tests only: it makes brute force cheap.
 */
export type LuksPbkdf = 'default' | 'fast'

/** Test-only PBKDF arguments: luksFormat takes ~100 ms instead of ~15 s. Never use in production. */
export const FAST_TEST_PBKDF: readonly string[] = Object.freeze([
  '--pbkdf',
  'pbkdf2',
  '--pbkdf-force-iterations',
  '1000',
])

/**
 * Environment switch for test suites that drive the agent as a child process and cannot pass
 * options: `UNLOCKD_LUKS_PBKDF=fast` selects FAST_TEST_PBKDF when no `pbkdf` option is given.
 * Test-only, like FAST_TEST_PBKDF.
 */
export const PBKDF_ENV = 'UNLOCKD_LUKS_PBKDF'

export interface AddKeyslotOptions {
  pbkdf?: LuksPbkdf | undefined
  /** Keyslot for the new key; by default cryptsetup picks the first free one. */
  slot?: number | undefined
  /**
   * Parent of the private (0700) directory that holds the header backup while the header
   * changes. Default `os.tmpdir()`; a tmpfs such as /run keeps the copy off disk.
   */
  backupDir?: string | undefined
}

const CRYPTSETUP = 'cryptsetup'
const INSTALL_HINT = 'cryptsetup-bin (Debian/Ubuntu) or cryptsetup'
// Production PBKDF benchmarking and header backups take seconds; slow boot media take longer.
const TIMEOUT_MS = 120_000
const MAX_KEYSLOT = 31
const MAX_TOKEN = 31
// cryptsetup exit codes (man cryptsetup, RETURN CODES).
const RC_NO_PERMISSION = 2 // wrong passphrase
const RC_NO_DEVICE = 4
const RC_BUSY = 5

function cryptsetup(args: readonly string[], stdin?: Uint8Array): Promise<RunResult> {
  return run(CRYPTSETUP, args, {
    stdin,
    timeoutMs: TIMEOUT_MS,
    errorCode: 'luks_failed',
    installHint: INSTALL_HINT,
  })
}

function checkDevice(device: string): void {
  // A leading '-' would be parsed as an option by cryptsetup.
  if (
    typeof device !== 'string' ||
    device === '' ||
    device.startsWith('-') ||
    device.includes('\0')
  ) {
    throw new TypeError('"device" must be a path that does not start with "-"')
  }
}

function checkKey(name: string, key: Uint8Array): void {
  if (!(key instanceof Uint8Array) || key.byteLength === 0)
    throw new TypeError(`"${name}" must be a non-empty Uint8Array`)
  // cryptsetup's default keyfile limit is 8 MiB; real keys are 32 to 512 bytes.
  if (key.byteLength > 8192) throw new RangeError(`"${name}" is longer than 8192 bytes`)
}

function checkSlot(slot: number): void {
  if (!Number.isInteger(slot) || slot < 0 || slot > MAX_KEYSLOT)
    throw new RangeError(`keyslot must be an integer in 0..${MAX_KEYSLOT}`)
}

function checkMapperName(name: string): void {
  if (!/^[A-Za-z0-9_][A-Za-z0-9_.+-]{0,126}$/.test(name)) {
    throw new TypeError(
      '"name" must be 1-127 characters of [A-Za-z0-9_.+-] and not start with "-" or "."',
    )
  }
}

function pbkdfArgs(choice: LuksPbkdf | undefined): readonly string[] {
  const effective = choice ?? (process.env[PBKDF_ENV] === 'fast' ? 'fast' : 'default')
  return effective === 'fast' ? FAST_TEST_PBKDF : []
}

/** The last meaningful line of cryptsetup's stderr, for error messages. */
function reason(r: RunResult): string {
  const lines = r.stderr
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l !== '')
  return lines.at(-1) ?? `exit status ${r.code}`
}

/** Turn a failed cryptsetup run into the error the caller can act on. */
function failure(r: RunResult, device: string, action: string): UnlockdError {
  const details = { device, exitCode: r.code }
  if (/unknown option/i.test(r.stderr)) {
    return new UnlockdError(
      'luks_failed',
      `cannot ${action} ${device}: this cryptsetup is too old (${reason(r)}); unlockd needs cryptsetup 2.4 or later`,
      { details },
    )
  }
  if (/device-mapper/i.test(r.stderr)) {
    return new UnlockdError(
      'luks_failed',
      `cannot ${action} ${device}: device-mapper is not available (load the dm_crypt kernel module)`,
      { details },
    )
  }
  if (r.code === RC_NO_DEVICE || /does not exist or access denied/.test(r.stderr)) {
    return new UnlockdError(
      'volume_invalid',
      `${device} does not exist or cannot be opened: check the device path`,
      { details },
    )
  }
  if (/not a valid LUKS device/.test(r.stderr)) {
    return new UnlockdError(
      'volume_invalid',
      `${device} is not a LUKS volume: check the device path`,
      { details },
    )
  }
  if (r.code === RC_BUSY) {
    return new UnlockdError('volume_busy', `cannot ${action} ${device}: ${reason(r)}`, { details })
  }
  return new UnlockdError('luks_failed', `cannot ${action} ${device}: ${reason(r)}`, { details })
}

function malformed(device: string, what: string): UnlockdError {
  return new UnlockdError(
    'volume_invalid',
    `the LUKS2 metadata of ${device} is malformed (${what}); check the header with: cryptsetup luksDump ${device}`,
  )
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v)
}

function parseSlotIds(device: string, value: unknown, what: string): number[] {
  const ids: number[] = []
  const keys = Array.isArray(value) ? value : isRecord(value) ? Object.keys(value) : undefined
  if (keys === undefined) throw malformed(device, what)
  for (const k of keys) {
    if (typeof k !== 'string' || !/^(0|[1-9][0-9]{0,2})$/.test(k)) throw malformed(device, what)
    ids.push(Number(k))
  }
  return ids.sort((a, b) => a - b)
}

/** Parse `luksDump --dump-json-metadata` output. The header is untrusted input: check every field used. */
function parseMetadata(device: string, text: string): { keyslots: number[]; tokens: LuksToken[] } {
  let doc: unknown
  try {
    doc = JSON.parse(text)
  } catch {
    throw malformed(device, 'not JSON')
  }
  if (!isRecord(doc)) throw malformed(device, 'not an object')
  const keyslots = parseSlotIds(device, doc['keyslots'], 'keyslots')
  const rawTokens = doc['tokens']
  if (!isRecord(rawTokens)) throw malformed(device, 'tokens')
  const tokens: LuksToken[] = []
  for (const id of parseSlotIds(device, rawTokens, 'token ids')) {
    const json = rawTokens[String(id)]
    if (!isRecord(json) || typeof json['type'] !== 'string') throw malformed(device, `token ${id}`)
    tokens.push({
      id,
      type: json['type'],
      keyslots: parseSlotIds(device, json['keyslots'], `token ${id} keyslots`),
      json,
    })
  }
  return { keyslots, tokens }
}

/**
 * Read the LUKS2 header of `device` (a block device or an image file).
 * Throws `volume_invalid` with a remedy when it is missing, not LUKS, or LUKS1.
 */
export async function inspectLuks(device: string): Promise<LuksInfo> {
  checkDevice(device)
  const any = await cryptsetup(['isLuks', device])
  if (any.code === RC_NO_DEVICE) throw failure(any, device, 'read')
  if (any.code !== 0) {
    throw new UnlockdError(
      'volume_invalid',
      `${device} is not a LUKS volume (no LUKS header found): check the device path, or create a LUKS2 volume with cryptsetup luksFormat --type luks2 (this erases its data)`,
      { details: { device } },
    )
  }
  const v2 = await cryptsetup(['isLuks', '--type', 'luks2', device])
  if (v2.code !== 0) {
    throw new UnlockdError(
      'volume_invalid',
      `${device} is LUKS1; unlockd needs LUKS2: back up the header (cryptsetup luksHeaderBackup), then convert with: cryptsetup convert --type luks2 ${device}`,
      { details: { device, version: 1 } },
    )
  }
  const dump = await cryptsetup(['luksDump', '--dump-json-metadata', device])
  if (dump.code !== 0) throw failure(dump, device, 'read the LUKS2 header of')
  const meta = parseMetadata(device, dump.stdout.toString('utf8'))
  const uuidRun = await cryptsetup(['luksUUID', device])
  if (uuidRun.code !== 0) throw failure(uuidRun, device, 'read the UUID of')
  const uuid = uuidRun.stdout.toString('utf8').trim()
  if (!/^[0-9a-fA-F-]{1,64}$/.test(uuid)) throw malformed(device, 'UUID')
  return { version: 2, uuid, ...meta }
}

/**
 * True when `key` opens `device` (any keyslot, or only `slot`). Runs the PBKDF, so it costs
 * what an unlock costs. Throws only when the question cannot be answered (no device, not LUKS).
 */
export async function testKey(device: string, key: Uint8Array, slot?: number): Promise<boolean> {
  checkDevice(device)
  checkKey('key', key)
  const args = ['open', '--test-passphrase', '--key-file', '-']
  if (slot !== undefined) {
    checkSlot(slot)
    args.push('--key-slot', String(slot))
  }
  args.push(device)
  const r = await cryptsetup(args, key)
  if (r.code === 0) return true
  if (r.code === RC_NO_PERMISSION) return false
  // An erased header, or an inactive --key-slot: no key can open it.
  if (/No usable keyslot is available/.test(r.stderr)) return false
  throw failure(r, device, 'test a key on')
}

/**
 * Open `device` as /dev/mapper/`name` with `key`. With `{ test: true }` only checks the key
 * (no device-mapper needed). Throws `luks_failed` when the key does not open the device,
 * `volume_busy` when the name is taken.
 */
export async function openVolume(
  device: string,
  name: string,
  key: Uint8Array,
  opts: { test: boolean },
): Promise<void> {
  checkDevice(device)
  checkMapperName(name)
  checkKey('key', key)
  const args = opts.test
    ? ['open', '--test-passphrase', '--key-file', '-', device]
    : ['open', '--type', 'luks2', '--key-file', '-', device, name]
  const r = await cryptsetup(args, key)
  if (r.code === 0) return
  if (r.code === RC_NO_PERMISSION || /No usable keyslot is available/.test(r.stderr)) {
    throw new UnlockdError('luks_failed', `the key does not open ${device}`, {
      details: { device },
    })
  }
  throw failure(r, device, 'open')
}

/** Close /dev/mapper/`name`. Closing a name that is not active is a no-op. */
export async function closeVolume(name: string): Promise<void> {
  checkMapperName(name)
  const r = await cryptsetup(['close', name])
  if (r.code === 0) return
  if (/is not active/.test(r.stderr)) return
  if (r.code === RC_BUSY || /is still in use/.test(r.stderr)) {
    throw new UnlockdError(
      'volume_busy',
      `cannot close ${name}: it is still in use (unmount it first)`,
      { details: { name } },
    )
  }
  throw failure(r, name, 'close')
}

/**
 * Back up the header of `device` into a fresh private directory and return the backup path.
 * cryptsetup creates the file itself (it refuses an existing one), mode 0400, inside our 0700
 * directory. Keyslots in it are still wrapped by their passphrases, yet a revoked passphrase
 * would open the copy: it is shredded as soon as it is not needed.
 */
async function backupHeader(device: string, parent: string): Promise<string> {
  const dir = await mkdtemp(join(parent, 'unlockd-hdr-')) // mkdtemp makes it 0700
  const file = join(dir, 'header.bak')
  const r = await cryptsetup([
    'luksHeaderBackup',
    '--batch-mode',
    '--header-backup-file',
    file,
    device,
  ])
  if (r.code !== 0) {
    await rm(dir, { recursive: true, force: true })
    throw failure(r, device, 'back up the header of')
  }
  return file
}

async function restoreHeader(device: string, file: string): Promise<boolean> {
  const r = await cryptsetup([
    'luksHeaderRestore',
    '--batch-mode',
    '--header-backup-file',
    file,
    device,
  ])
  return r.code === 0
}

/** Overwrite then delete the backup and its directory. Best effort on journaling or CoW filesystems. */
async function shredBackup(file: string): Promise<void> {
  const dir = dirname(file)
  try {
    await chmod(file, 0o600) // cryptsetup made it 0400; non-root callers need write access
    const fh = await open(file, 'r+')
    try {
      const { size } = await fh.stat()
      const zeros = Buffer.alloc(Math.min(size, 1024 * 1024))
      for (let pos = 0; pos < size; pos += zeros.length) {
        await fh.write(zeros, 0, Math.min(zeros.length, size - pos), pos)
      }
      await fh.sync()
    } finally {
      await fh.close()
    }
  } finally {
    await rm(dir, { recursive: true, force: true })
  }
}

/**
 * Add `newKey` to a new keyslot of `device`, authorised by `existingKey`; returns the slot.
 * The header is backed up first and restored if anything goes wrong, and the new key is checked
 * to open the new slot before returning.
 * Throws `luks_failed` ("the existing key does not open ...") when `existingKey` is wrong; the
 * header is not touched in that case.
 */
export async function addKeyslot(
  device: string,
  existingKey: Uint8Array,
  newKey: Uint8Array,
  opts: AddKeyslotOptions = {},
): Promise<number> {
  checkDevice(device)
  checkKey('existingKey', existingKey)
  checkKey('newKey', newKey)
  if (opts.slot !== undefined) checkSlot(opts.slot)

  // Check everything that can be checked before the header changes.
  const before = await inspectLuks(device)
  if (opts.slot !== undefined && before.keyslots.includes(opts.slot)) {
    throw new UnlockdError('conflict', `keyslot ${opts.slot} of ${device} is already in use`, {
      details: { device, slot: opts.slot },
    })
  }
  if (before.keyslots.length > MAX_KEYSLOT) {
    throw new UnlockdError(
      'luks_failed',
      `all keyslots of ${device} are in use: remove one with cryptsetup luksKillSlot`,
      { details: { device } },
    )
  }
  if (!(await testKey(device, existingKey))) {
    throw new UnlockdError('luks_failed', `the existing key does not open ${device}`, {
      details: { device },
    })
  }

  const backup = await backupHeader(device, opts.backupDir ?? tmpdir())
  let keepBackup = false
  // Both keys on one stdin; this buffer is ours, so it is zeroed once cryptsetup has exited.
  const input = new Uint8Array(existingKey.byteLength + newKey.byteLength)
  try {
    input.set(existingKey, 0)
    input.set(newKey, existingKey.byteLength)
    const args = [
      'luksAddKey',
      '--batch-mode',
      ...pbkdfArgs(opts.pbkdf),
      '--key-file',
      '-',
      '--keyfile-size',
      String(existingKey.byteLength),
      '--new-keyfile-size',
      String(newKey.byteLength),
    ]
    // --key-slot names the new slot here; --new-key-slot only exists since cryptsetup 2.5.
    if (opts.slot !== undefined) args.push('--key-slot', String(opts.slot))
    args.push(device, '-')

    let problem: UnlockdError | undefined
    let slot: number | undefined
    try {
      const r = await cryptsetup(args, input)
      if (r.code !== 0) {
        problem =
          r.code === RC_NO_PERMISSION
            ? new UnlockdError('luks_failed', `the existing key does not open ${device}`, {
                details: { device },
              })
            : failure(r, device, 'add a keyslot to')
      } else {
        const after = await inspectLuks(device)
        const added = after.keyslots.filter((s) => !before.keyslots.includes(s))
        slot = opts.slot ?? (added.length === 1 ? added[0] : undefined)
        if (
          slot === undefined ||
          !after.keyslots.includes(slot) ||
          !(await testKey(device, newKey, slot))
        ) {
          problem = new UnlockdError(
            'luks_failed',
            `the new keyslot of ${device} does not open with the new key`,
            { details: { device } },
          )
        }
      }
    } catch (err) {
      problem =
        err instanceof UnlockdError
          ? err
          : new UnlockdError('luks_failed', `cannot add a keyslot to ${device}`, { cause: err })
    }
    if (problem === undefined && slot !== undefined) return slot

    if (!(await restoreHeader(device, backup))) {
      keepBackup = true
      throw new UnlockdError(
        'luks_failed',
        `adding a keyslot to ${device} failed and restoring its header failed too; restore it with: cryptsetup luksHeaderRestore --header-backup-file ${backup} ${device}`,
        { cause: problem, details: { device, backup } },
      )
    }
    throw problem ?? new UnlockdError('luks_failed', `cannot add a keyslot to ${device}`)
  } finally {
    input.fill(0)
    if (!keepBackup) await shredBackup(backup)
  }
}

/**
 * Wipe keyslot `slot` of `device`. No key is needed (batch mode). Returns false when the slot
 * was already empty, so revocation can be retried. Refuses to wipe the last keyslot unless
 * `force`: that makes the volume unopenable (use eraseLuks when that is the intent).
 */
export async function killSlot(
  device: string,
  slot: number,
  opts: { force?: boolean } = {},
): Promise<boolean> {
  checkDevice(device)
  checkSlot(slot)
  const info = await inspectLuks(device)
  if (!info.keyslots.includes(slot)) return false
  if (info.keyslots.length === 1 && opts.force !== true) {
    throw new UnlockdError(
      'destructive_needs_force',
      `keyslot ${slot} is the last keyslot of ${device}: wiping it makes the volume unopenable; pass force to do it anyway`,
      { details: { device, slot } },
    )
  }
  const r = await cryptsetup(['luksKillSlot', '--batch-mode', device, String(slot)])
  if (r.code !== 0) throw failure(r, device, `wipe keyslot ${slot} of`)
  return true
}

/**
 * Crypto-shred: wipe every keyslot (and token) of `device` with `luksErase`. The data becomes
 * unreadable for anyone without a header backup or the volume key. Works on LUKS1 too.
 */
export async function eraseLuks(device: string): Promise<void> {
  checkDevice(device)
  const is = await cryptsetup(['isLuks', device])
  if (is.code === RC_NO_DEVICE) throw failure(is, device, 'erase')
  if (is.code !== 0)
    throw new UnlockdError('volume_invalid', `${device} is not a LUKS volume: nothing to erase`, {
      details: { device },
    })
  const r = await cryptsetup(['luksErase', '--batch-mode', device])
  if (r.code !== 0) throw failure(r, device, 'erase')
}

/**
 * Store `token` (an object with `type` and `keyslots` as strings, per the LUKS2 spec) in the
 * header of `device`; returns its id. Without `tokenId`, takes the lowest free id.
 * With `replace`, overwrites an existing token of that id.
 */
export async function importToken(
  device: string,
  token: Readonly<Record<string, unknown>>,
  opts: { tokenId?: number | undefined; replace?: boolean | undefined } = {},
): Promise<number> {
  checkDevice(device)
  if (typeof token['type'] !== 'string' || !Array.isArray(token['keyslots'])) {
    throw new TypeError('"token" needs a string "type" and a "keyslots" array')
  }
  let id = opts.tokenId
  if (id === undefined) {
    const used = new Set((await inspectLuks(device)).tokens.map((t) => t.id))
    id = 0
    while (used.has(id)) id++
  }
  if (!Number.isInteger(id) || id < 0 || id > MAX_TOKEN)
    throw new RangeError(`token id must be an integer in 0..${MAX_TOKEN}`)
  const args = ['token', 'import', '--token-id', String(id)]
  if (opts.replace === true) args.push('--token-replace')
  args.push(device)
  const r = await cryptsetup(args, Buffer.from(JSON.stringify(token), 'utf8'))
  if (r.code !== 0) {
    if (/in use/.test(r.stderr))
      throw new UnlockdError('conflict', `token ${id} of ${device} is already in use`, {
        details: { device, tokenId: id },
      })
    throw failure(r, device, `import token ${id} into`)
  }
  return id
}

/** Read token `tokenId` of `device`; undefined when that id is not in use. */
export async function exportToken(
  device: string,
  tokenId: number,
): Promise<Readonly<Record<string, unknown>> | undefined> {
  checkDevice(device)
  const info = await inspectLuks(device)
  return info.tokens.find((t) => t.id === tokenId)?.json
}

/** Remove token `tokenId` from `device`. Returns false when it was not there. */
export async function removeToken(device: string, tokenId: number): Promise<boolean> {
  checkDevice(device)
  if (!Number.isInteger(tokenId) || tokenId < 0 || tokenId > MAX_TOKEN)
    throw new RangeError(`token id must be an integer in 0..${MAX_TOKEN}`)
  const r = await cryptsetup(['token', 'remove', '--token-id', String(tokenId), device])
  if (r.code === 0) return true
  if (/is not in use/.test(r.stderr)) return false
  throw failure(r, device, `remove token ${tokenId} from`)
}
