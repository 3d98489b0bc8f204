/**
 * The KEK keystore: a JSON file holding the server's key-encryption keys, sealed with a key
 * derived from the operator passphrase (scrypt) and AES-256-GCM, plus a backup copy beside it
 * (`keystore.json.bak`). Both are rewritten atomically on every change, main first; on open a
 * backup that lags behind the main file is brought level, and a missing or torn main file is
 * recovered from the backup.
 *
 * The keystore also holds the server's Ed25519 verdict-signing key (shared/protocol/verdict.ts):
 * every instance that opens the same keystore signs with it, and neither KEK rotation nor shred
 * touches it. A keystore made before it existed gets one on first open.
 *
 * Destroying a KEK means rewriting both files without it: once the blobs it wrapped were
 * re-wrapped (or deleted by shred), no copy that unlockd controls can unwrap them again.
 * The audit MAC key lives beside the KEKs and is never destroyed.
 */
import {
  generateKeyPairSync,
  scryptSync,
  randomBytes as nodeRandom,
  createCipheriv,
  createDecipheriv,
} from 'node:crypto'
import { existsSync, statSync } from 'node:fs'
import { UnlockdError } from '../../shared/errors.ts'
import { b64uDecode, b64uEncode, zeroize } from '../../shared/crypto/bytes.ts'
import { readFileIfExists, writeFileAtomic } from '../../platform/atomic-file.ts'

export interface KekEntry {
  version: number
  key: Uint8Array
  createdAt: number
}

interface SealedFile {
  v: 1
  kdf: { name: 'scrypt'; N: number; r: number; p: number; salt: string }
  iv: string
  ct: string
  tag: string
}

interface Plain {
  current: number
  keks: { version: number; key: string; createdAt: number }[]
  /**
   * The audit MAC key (server/escrow/audit-chain.ts). Its own key, not a KEK: rotation and shred
   * destroy KEKs, never this one, so every audit entry ever written stays verifiable. Keystores
   * written before it existed get one at their next open.
   */
  audit?: string
  /** The verdict-signing key (Ed25519, JWK members); absent in keystores made before it. */
  signing?: SigningEntry
}

interface SigningEntry {
  x: string
  d: string
  createdAt: number
}

function newSigningKey(now: number): SigningEntry {
  const jwk = generateKeyPairSync('ed25519').privateKey.export({ format: 'jwk' })
  if (typeof jwk.x !== 'string' || typeof jwk.d !== 'string')
    throw new UnlockdError('internal', 'could not make the server signing key')
  return { x: jwk.x, d: jwk.d, createdAt: now }
}

function parseSigning(e: unknown): SigningEntry | undefined {
  if (e === undefined) return undefined
  const o = e as Partial<SigningEntry> | null
  if (
    !o ||
    typeof o.x !== 'string' ||
    typeof o.d !== 'string' ||
    !/^[A-Za-z0-9_-]{43}$/.test(o.x) ||
    !/^[A-Za-z0-9_-]{43}$/.test(o.d) ||
    !Number.isInteger(o.createdAt)
  )
    throw new UnlockdError(
      'keystore_invalid',
      'the server signing key in the keystore is malformed',
    )
  return { x: o.x, d: o.d, createdAt: o.createdAt as number }
}

const SCRYPT = { N: 1 << 15, r: 8, p: 1 }
const AAD = Buffer.from('unlockd/keystore/v1')

export function backupPathOf(path: string): string {
  return `${path}.bak`
}

function derive(
  passphrase: string,
  salt: Uint8Array,
  p: { N: number; r: number; p: number },
): Buffer {
  if (passphrase.length < 8)
    throw new UnlockdError(
      'keystore_locked',
      'the keystore passphrase must be at least 8 characters',
    )
  return scryptSync(passphrase.normalize('NFC'), salt, 32, {
    N: p.N,
    r: p.r,
    p: p.p,
    maxmem: 256 * 1024 * 1024,
  })
}

function parseSealed(raw: Buffer, where: string): SealedFile {
  let o: unknown
  try {
    o = JSON.parse(raw.toString('utf8'))
  } catch (cause) {
    throw new UnlockdError('keystore_invalid', `${where} is not valid JSON`, { cause })
  }
  const f = o as Partial<SealedFile>
  const k = f.kdf
  if (
    f.v !== 1 ||
    !k ||
    k.name !== 'scrypt' ||
    !Number.isInteger(k.N) ||
    !Number.isInteger(k.r) ||
    !Number.isInteger(k.p) ||
    typeof k.salt !== 'string' ||
    typeof f.iv !== 'string' ||
    typeof f.ct !== 'string' ||
    typeof f.tag !== 'string' ||
    k.N < 1024 ||
    k.N > 1 << 22 ||
    k.r < 1 ||
    k.r > 32 ||
    k.p < 1 ||
    k.p > 16
  ) {
    throw new UnlockdError('keystore_invalid', `${where} is not an unlockd keystore (v1)`)
  }
  return f as SealedFile
}

export class Keystore {
  readonly path: string
  #derived: Buffer
  #salt: Uint8Array
  #kdf: { N: number; r: number; p: number }
  #keks: KekEntry[]
  #current: number
  #audit: Uint8Array
  #signing: SigningEntry

  private constructor(
    path: string,
    derived: Buffer,
    salt: Uint8Array,
    kdf: { N: number; r: number; p: number },
    plain: Plain,
  ) {
    this.path = path
    this.#derived = derived
    this.#salt = salt
    this.#kdf = kdf
    this.#current = plain.current
    this.#keks = plain.keks.map((k) => {
      const key = b64uDecode(k.key)
      if (!key || key.byteLength !== 32)
        throw new UnlockdError('keystore_invalid', `KEK v${k.version} is malformed`)
      return { version: k.version, key, createdAt: k.createdAt }
    })
    if (!this.#keks.some((k) => k.version === this.#current))
      throw new UnlockdError('keystore_invalid', 'keystore has no current KEK')
    this.#audit = auditKeyOf(plain)
    this.#signing = parseSigning(plain.signing) ?? newSigningKey(Math.floor(Date.now() / 1000))
  }

  /** Create a new keystore with KEK v1. Refuses to overwrite an existing one. */
  static create(path: string, passphrase: string, now: number): Keystore {
    if (existsSync(path) || existsSync(backupPathOf(path)))
      throw new UnlockdError('conflict', `a keystore already exists at ${path}`)
    const salt = new Uint8Array(nodeRandom(16))
    const derived = derive(passphrase, salt, SCRYPT)
    const ks = new Keystore(path, derived, salt, SCRYPT, {
      current: 1,
      keks: [{ version: 1, key: b64uEncode(new Uint8Array(nodeRandom(32))), createdAt: now }],
      audit: b64uEncode(new Uint8Array(nodeRandom(32))),
      signing: newSigningKey(now),
    })
    ks.#save()
    return ks
  }

  /**
   * Open with the passphrase. A wrong passphrase gives `keystore_locked`; a torn or missing main
   * file falls back to the backup copy (and repairs the main file).
   */
  static open(path: string, passphrase: string): Keystore {
    const main = readFileIfExists(path)
    const backup = readFileIfExists(backupPathOf(path))
    if (!main && !backup)
      throw new UnlockdError(
        'keystore_invalid',
        `no keystore at ${path}: run \`unlockd server init\` first`,
      )
    let ks: Keystore | undefined
    let firstErr: unknown
    for (const [raw, where] of [
      [main, path],
      [backup, backupPathOf(path)],
    ] as const) {
      if (!raw) continue
      try {
        ks = Keystore.#unseal(path, raw, where, passphrase)
        break
      } catch (err) {
        if (err instanceof UnlockdError && err.code === 'keystore_locked') throw err
        firstErr ??= err
      }
    }
    if (!ks)
      throw firstErr instanceof UnlockdError
        ? firstErr
        : new UnlockdError('keystore_invalid', 'keystore cannot be read', { cause: firstErr })
    // Bring both copies level with what we loaded (a crash may have left one behind). Unchanged
    // content re-serializes to the same bytes (same IV), so a level pair is not rewritten.
    const canonical = ks.#serialize()
    if (!main || !main.equals(canonical) || !backup || !backup.equals(canonical)) ks.#save()
    else ks.#onDisk = canonical
    return ks
  }

  static #unseal(path: string, raw: Buffer, where: string, passphrase: string): Keystore {
    const f = parseSealed(raw, where)
    const salt = b64uDecode(f.kdf.salt)
    const iv = b64uDecode(f.iv)
    const ct = b64uDecode(f.ct)
    const tag = b64uDecode(f.tag)
    if (!salt || !iv || !ct || !tag || iv.byteLength !== 12 || tag.byteLength !== 16)
      throw new UnlockdError('keystore_invalid', `${where} is malformed`)
    const kdf = { N: f.kdf.N, r: f.kdf.r, p: f.kdf.p }
    const derived = derive(passphrase, salt, kdf)
    let plainBytes: Buffer
    try {
      const d = createDecipheriv('aes-256-gcm', derived, iv)
      d.setAAD(AAD)
      d.setAuthTag(tag)
      plainBytes = Buffer.concat([d.update(ct), d.final()])
    } catch (cause) {
      throw new UnlockdError(
        'keystore_locked',
        'wrong keystore passphrase (or the keystore was altered)',
        { cause },
      )
    }
    let plain: Plain
    try {
      plain = JSON.parse(plainBytes.toString('utf8')) as Plain
    } finally {
      plainBytes.fill(0)
    }
    if (!Number.isInteger(plain.current) || !Array.isArray(plain.keks))
      throw new UnlockdError('keystore_invalid', `${where} content is malformed`)
    const ks = new Keystore(path, derived, salt, kdf, plain)
    // Remember what was sealed so that re-serializing the same content reproduces this file
    // (a keystore without an audit key serializes differently, so open() saves the new key).
    ks.#lastPlain = Buffer.from(JSON.stringify(plain))
    ks.#lastIv = Buffer.from(iv)
    return ks
  }

  #serialize(): Buffer {
    const plain: Plain = {
      current: this.#current,
      keks: this.#keks.map((k) => ({
        version: k.version,
        key: b64uEncode(k.key),
        createdAt: k.createdAt,
      })),
      audit: b64uEncode(this.#audit),
      signing: this.#signing,
    }
    const pt = Buffer.from(JSON.stringify(plain))
    // Deterministic IV per content would leak equality; a random IV per save is fine here
    // because open() compares files only to decide whether to rewrite them.
    const iv = this.#lastIv && this.#lastPlain?.equals(pt) ? this.#lastIv : nodeRandom(12)
    const c = createCipheriv('aes-256-gcm', this.#derived, iv)
    c.setAAD(AAD)
    const ct = Buffer.concat([c.update(pt), c.final()])
    this.#lastPlain?.fill(0)
    this.#lastPlain = pt
    this.#lastIv = iv
    const file: SealedFile = {
      v: 1,
      kdf: { name: 'scrypt', ...this.#kdf, salt: b64uEncode(this.#salt) },
      iv: b64uEncode(iv),
      ct: b64uEncode(ct),
      tag: b64uEncode(c.getAuthTag()),
    }
    return Buffer.from(JSON.stringify(file, null, 2) + '\n')
  }
  #lastPlain: Buffer | undefined
  #lastIv: Buffer | undefined
  /** The bytes this process last saw in (or wrote to) the main file. */
  #onDisk: Buffer | undefined

  #save(): void {
    // Another process (`unlockd keystore passwd`, a restore, a second server) may have rewritten
    // the file since we opened it; saving our copy would silently undo that change.
    const current = readFileIfExists(this.path)
    if (this.#onDisk && current && !current.equals(this.#onDisk)) {
      throw new UnlockdError(
        'keystore_invalid',
        `${this.path} was changed by another process since it was opened (keystore passwd or a restore?); restart the server`,
      )
    }
    const data = this.#serialize()
    writeFileAtomic(this.path, data, 0o600)
    this.#onDisk = data
    if (process.env['UNLOCKD_FAULT'] === 'keystore-between-copies')
      process.kill(process.pid, 'SIGKILL')
    writeFileAtomic(backupPathOf(this.path), data, 0o600)
  }

  /**
   * Follow a change another server instance made to the shared keystore file (a rotation on
   * instance A must not leave instance B wrapping new blobs with a KEK that A destroys). Only a
   * file sealed with the same passphrase-derived key is adopted; one re-sealed under another
   * passphrase (`keystore passwd`) needs a restart, and saves are refused until then.
   */
  #refresh(): void {
    let stamp: string
    try {
      const st = statSync(this.path)
      stamp = `${st.ino}:${st.size}:${st.mtimeMs}`
    } catch {
      return
    }
    if (stamp === this.#stamp) return
    const raw = readFileIfExists(this.path)
    if (!raw) return
    if (this.#onDisk && raw.equals(this.#onDisk)) {
      this.#stamp = stamp
      return
    }
    try {
      const f = parseSealed(raw, this.path)
      if (
        f.kdf.salt !== b64uEncode(this.#salt) ||
        f.kdf.N !== this.#kdf.N ||
        f.kdf.r !== this.#kdf.r ||
        f.kdf.p !== this.#kdf.p
      )
        return
      const iv = b64uDecode(f.iv)
      const ct = b64uDecode(f.ct)
      const tag = b64uDecode(f.tag)
      if (!iv || !ct || !tag || iv.byteLength !== 12 || tag.byteLength !== 16) return
      const d = createDecipheriv('aes-256-gcm', this.#derived, iv)
      d.setAAD(AAD)
      d.setAuthTag(tag)
      const plainBytes = Buffer.concat([d.update(ct), d.final()])
      let plain: Plain
      try {
        plain = JSON.parse(plainBytes.toString('utf8')) as Plain
      } finally {
        plainBytes.fill(0)
      }
      const keks = plain.keks.map((k) => {
        const key = b64uDecode(k.key)
        if (!key || key.byteLength !== 32) throw new Error('malformed KEK')
        return { version: k.version, key, createdAt: k.createdAt }
      })
      if (!keks.some((k) => k.version === plain.current)) return
      // A file without the audit key predates it: keep ours (the next save writes it back).
      const audit = plain.audit === undefined ? this.#audit : auditKeyOf(plain)
      if (audit !== this.#audit) zeroize(this.#audit)
      this.#audit = audit
      const signing = parseSigning(plain.signing)
      if (signing) this.#signing = signing
      for (const k of this.#keks) zeroize(k.key)
      this.#keks = keks
      this.#current = plain.current
      this.#lastPlain?.fill(0)
      this.#lastPlain = Buffer.from(JSON.stringify(plain))
      this.#lastIv = Buffer.from(iv)
      this.#onDisk = raw
      this.#stamp = stamp
    } catch {
      // Torn or foreign content: keep what we have; a save will refuse to overwrite it.
    }
  }
  #stamp: string | undefined

  get currentVersion(): number {
    this.#refresh()
    return this.#current
  }

  get versions(): number[] {
    this.#refresh()
    return this.#keks.map((k) => k.version).sort((a, b) => a - b)
  }

  /** Raw KEK bytes for a version (caller must not keep them). */
  kek(version: number): Uint8Array {
    let k = this.#keks.find((e) => e.version === version)
    if (!k) {
      this.#refresh()
      k = this.#keks.find((e) => e.version === version)
    }
    if (!k)
      throw new UnlockdError(
        'kek_missing',
        `KEK v${version} is not in the keystore (destroyed by rotation or shred)`,
      )
    return k.key
  }

  /** The audit MAC key (caller must not keep a copy beyond its use). */
  get auditKey(): Uint8Array {
    this.#refresh()
    return this.#audit
  }

  /**
   * The server's verdict-signing key (private JWK; the caller must not keep or log it). Follows
   * the shared file, so instances that raced to add one to an old keystore converge on it.
   */
  signingKey(): { kty: 'OKP'; crv: 'Ed25519'; x: string; d: string } {
    this.#refresh()
    return { kty: 'OKP', crv: 'Ed25519', x: this.#signing.x, d: this.#signing.d }
  }

  createdAt(version: number): number | undefined {
    return this.#keks.find((e) => e.version === version)?.createdAt
  }

  /** Add a fresh KEK and make it current. Old ones stay until `destroyBelow`. */
  addKek(now: number): number {
    this.#refresh()
    const version = Math.max(...this.#keks.map((k) => k.version)) + 1
    const entry = { version, key: new Uint8Array(nodeRandom(32)), createdAt: now }
    const previous = this.#current
    this.#keks.push(entry)
    this.#current = version
    try {
      this.#save()
    } catch (err) {
      // Never hand out a KEK that is not on disk: whatever it wrapped would be lost at restart.
      this.#keks = this.#keks.filter((k) => k !== entry)
      this.#current = previous
      zeroize(entry.key)
      throw err
    }
    return version
  }

  /** Destroy every KEK older than `version` in the main file and the backup. */
  destroyBelow(version: number): number[] {
    this.#refresh()
    const gone = this.#keks.filter((k) => k.version < version)
    if (gone.length === 0) return []
    const before = this.#keks
    this.#keks = this.#keks.filter((k) => k.version >= version)
    try {
      this.#save()
    } catch (err) {
      this.#keks = before
      throw err
    }
    for (const k of gone) zeroize(k.key)
    return gone.map((k) => k.version)
  }

  /** Re-seal under a new passphrase; KEKs are untouched. */
  changePassphrase(newPassphrase: string): void {
    const salt = new Uint8Array(nodeRandom(16))
    const derived = derive(newPassphrase, salt, SCRYPT)
    const before = { derived: this.#derived, salt: this.#salt, kdf: this.#kdf, iv: this.#lastIv }
    this.#derived = derived
    this.#salt = salt
    this.#kdf = SCRYPT
    this.#lastIv = undefined
    try {
      this.#save()
    } catch (err) {
      derived.fill(0)
      this.#derived = before.derived
      this.#salt = before.salt
      this.#kdf = before.kdf
      this.#lastIv = before.iv
      throw err
    }
    before.derived.fill(0)
  }

  fileMode(): number {
    return statSync(this.path).mode & 0o777
  }

  close(): void {
    this.#derived.fill(0)
    this.#lastPlain?.fill(0)
    for (const k of this.#keks) zeroize(k.key)
    zeroize(this.#audit)
  }
}

/** The stored audit key, or a fresh one for a keystore written before audit keys existed. */
function auditKeyOf(plain: Plain): Uint8Array {
  if (plain.audit === undefined) return new Uint8Array(nodeRandom(32))
  const key = b64uDecode(plain.audit)
  if (!key || key.byteLength !== 32)
    throw new UnlockdError('keystore_invalid', 'the audit key in the keystore is malformed')
  return key
}
