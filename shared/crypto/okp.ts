/**
 * Ed25519 signatures and X25519 ECDH-ES+A256KW / A256GCM sealing, in the JOSE formats jose
 * reads and writes (compact JWS, General JWE), with the curve arithmetic from @noble/curves and
 * AES and SHA-256 from WebCrypto. WebCrypto's Ed25519 and X25519 are experimental on Node 18
 * (Debian 12's nodejs, which runs the host agent) and print a warning to the user on every
 * run; nothing here uses them, so the same code runs quietly on Node 18 and 20+.
 */
import { ed25519, x25519 } from '@noble/curves/ed25519.js'
import { UnlockdError } from '../errors.ts'
import { b64uDecode, b64uEncode, fromUtf8, utf8, zeroize } from './bytes.ts'

export interface OkpJwk {
  kty: 'OKP'
  crv: string
  x: string
  d?: string
}

export type OkpCurve = 'Ed25519' | 'X25519'

function subtle(): SubtleCrypto {
  return globalThis.crypto.subtle
}

function bytes32(text: string | undefined, what: string): Uint8Array {
  const b = text === undefined ? undefined : b64uDecode(text)
  if (b?.byteLength !== 32) throw new UnlockdError('protocol_invalid', `${what} must be 32 bytes`)
  return b
}

/** A fresh private OKP JWK on the curve. */
export function generateOkp(crv: OkpCurve): OkpJwk & { d: string } {
  const curve = crv === 'Ed25519' ? ed25519 : x25519
  const d = curve.utils.randomSecretKey()
  const jwk = { kty: 'OKP' as const, crv, x: b64uEncode(curve.getPublicKey(d)), d: b64uEncode(d) }
  zeroize(d)
  return jwk
}

/** Compact JWS (EdDSA) over a JSON payload with the given protected header. */
export function signCompactEd25519(
  header: Record<string, string>,
  payload: Uint8Array,
  key: OkpJwk,
): string {
  const d = bytes32(key.d, 'signing key "d"')
  const input = `${b64uEncode(utf8(JSON.stringify(header)))}.${b64uEncode(payload)}`
  const sig = ed25519.sign(utf8(input), d)
  zeroize(d)
  return `${input}.${b64uEncode(sig)}`
}

/**
 * Verify a compact EdDSA JWS (strict RFC 8032 checks, as OpenSSL does). Returns the protected
 * header and the payload; throws on any malformed part or a signature that does not verify.
 */
export function verifyCompactEd25519(
  compact: string,
  key: OkpJwk,
): { header: Record<string, unknown>; payload: Uint8Array } {
  const parts = compact.split('.')
  if (parts.length !== 3) throw new Error('not a compact JWS')
  const [h, p, s] = parts as [string, string, string]
  const headerBytes = b64uDecode(h)
  const payload = b64uDecode(p)
  const sig = b64uDecode(s)
  if (!headerBytes || !payload || sig?.byteLength !== 64) throw new Error('malformed JWS')
  const header = JSON.parse(fromUtf8(headerBytes)) as unknown
  if (typeof header !== 'object' || header === null || Array.isArray(header))
    throw new Error('JWS header is not an object')
  const hdr = header as Record<string, unknown>
  if (hdr['alg'] !== 'EdDSA') throw new Error('JWS alg is not EdDSA')
  if ('crit' in hdr || 'b64' in hdr) throw new Error('JWS header has unsupported members')
  const pub = bytes32(key.x, 'signing key "x"')
  if (!ed25519.verify(sig, utf8(`${h}.${p}`), pub, { zip215: false }))
    throw new Error('signature does not verify')
  return { header: hdr, payload }
}

// --- JWE: ECDH-ES+A256KW key agreement (RFC 7518 4.6) and A256GCM content ---------------------

const KW_ALG = 'ECDH-ES+A256KW'

function u32(n: number): Uint8Array {
  const b = new Uint8Array(4)
  new DataView(b.buffer).setUint32(0, n)
  return b
}

function concat(...parts: Uint8Array[]): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.byteLength, 0))
  let o = 0
  for (const p of parts) {
    out.set(p, o)
    o += p.byteLength
  }
  return out
}

/** Concat KDF (NIST SP 800-56A) for a 256-bit A256KW key, no PartyU/PartyV info. */
async function kek(z: Uint8Array): Promise<CryptoKey> {
  const alg = utf8(KW_ALG)
  const otherInfo = concat(u32(alg.byteLength), alg, u32(0), u32(0), u32(256))
  const input = concat(u32(1), z, otherInfo)
  const derived = new Uint8Array(await subtle().digest('SHA-256', input))
  zeroize(input)
  const key = await subtle().importKey('raw', derived, 'AES-KW', false, ['wrapKey', 'unwrapKey'])
  zeroize(derived)
  return key
}

function sharedSecret(priv: Uint8Array, pub: Uint8Array): Uint8Array {
  const z = x25519.getSharedSecret(priv, pub)
  // An all-zero secret means a small-order public key (RFC 7748 6.1): refuse it.
  if (z.every((b) => b === 0)) throw new Error('X25519 public key of small order')
  return z
}

export interface JweRecipient {
  encrypted_key: string
  header: { alg: string; kid: string; epk?: { kty: 'OKP'; crv: string; x: string } }
}
export interface GeneralJwe {
  protected: string
  iv: string
  ciphertext: string
  tag: string
  recipients: JweRecipient[]
}

/** General JWE of `plaintext` to X25519 recipients (one ephemeral key each, `epk` per recipient). */
export async function sealGeneralJwe(
  plaintext: Uint8Array,
  protectedHeader: Record<string, string>,
  recipients: { key: OkpJwk; kid: string }[],
): Promise<GeneralJwe> {
  const cekBytes = globalThis.crypto.getRandomValues(new Uint8Array(32))
  const cek = await subtle().importKey('raw', cekBytes, 'AES-GCM', true, ['encrypt'])
  zeroize(cekBytes)
  const out: JweRecipient[] = []
  for (const r of recipients) {
    const pub = bytes32(r.key.x, 'sealing key "x"')
    const e = generateOkp('X25519')
    const ed = bytes32(e.d, 'ephemeral key')
    const z = sharedSecret(ed, pub)
    zeroize(ed)
    const wrapped = new Uint8Array(await subtle().wrapKey('raw', cek, await kek(z), 'AES-KW'))
    zeroize(z)
    out.push({
      encrypted_key: b64uEncode(wrapped),
      header: { alg: KW_ALG, kid: r.kid, epk: { kty: 'OKP', crv: 'X25519', x: e.x } },
    })
  }
  const prot = b64uEncode(utf8(JSON.stringify(protectedHeader)))
  const iv = globalThis.crypto.getRandomValues(new Uint8Array(12))
  const sealed = new Uint8Array(
    await subtle().encrypt(
      {
        name: 'AES-GCM',
        iv,
        additionalData: utf8(prot) as Uint8Array<ArrayBuffer>,
        tagLength: 128,
      },
      cek,
      plaintext as Uint8Array<ArrayBuffer>,
    ),
  )
  return {
    protected: prot,
    iv: b64uEncode(iv),
    ciphertext: b64uEncode(sealed.subarray(0, sealed.byteLength - 16)),
    tag: b64uEncode(sealed.subarray(sealed.byteLength - 16)),
    recipients: out,
  }
}

/**
 * Open a General JWE with the private key of `recipient` (its `epk` in its own header, or in the
 * protected header as jose writes it for a single recipient). Returns the plaintext and the
 * protected header; throws when anything fails to parse or authenticate.
 */
export async function openGeneralJwe(
  jwe: GeneralJwe,
  recipient: JweRecipient,
  key: OkpJwk,
): Promise<{ plaintext: Uint8Array; protectedHeader: Record<string, unknown> }> {
  const protBytes = b64uDecode(jwe.protected)
  if (!protBytes) throw new Error('protected header is not base64url')
  const prot = JSON.parse(fromUtf8(protBytes)) as Record<string, unknown>
  const joined: Record<string, unknown> = { ...prot, ...recipient.header }
  if (
    joined['alg'] !== KW_ALG ||
    joined['enc'] !== 'A256GCM' ||
    'zip' in joined ||
    'crit' in joined
  )
    throw new Error('unsupported JWE algorithms')
  const epk = joined['epk'] as Record<string, unknown> | undefined
  if (epk?.['kty'] !== 'OKP' || epk['crv'] !== 'X25519' || typeof epk['x'] !== 'string')
    throw new Error('JWE epk must be an X25519 key')
  if ('apu' in joined || 'apv' in joined) throw new Error('JWE apu/apv are not supported')
  const d = bytes32(key.d, 'sealing key "d"')
  const z = sharedSecret(d, bytes32(epk['x'], 'epk "x"'))
  zeroize(d)
  const wrapped = b64uDecode(recipient.encrypted_key)
  const iv = b64uDecode(jwe.iv)
  const ct = b64uDecode(jwe.ciphertext)
  const tag = b64uDecode(jwe.tag)
  if (!wrapped || iv?.byteLength !== 12 || !ct || tag?.byteLength !== 16)
    throw new Error('malformed JWE')
  const cek = await subtle().unwrapKey(
    'raw',
    wrapped as Uint8Array<ArrayBuffer>,
    await kek(z),
    'AES-KW',
    'AES-GCM',
    false,
    ['decrypt'],
  )
  zeroize(z)
  const plaintext = new Uint8Array(
    await subtle().decrypt(
      {
        name: 'AES-GCM',
        iv: iv as Uint8Array<ArrayBuffer>,
        additionalData: utf8(jwe.protected) as Uint8Array<ArrayBuffer>,
        tagLength: 128,
      },
      cek,
      concat(ct, tag),
    ),
  )
  return { plaintext, protectedHeader: prot }
}

/**
 * Compact JWE of `plaintext` to one X25519 key: the ephemeral `epk`, `alg` and `enc` go into the
 * protected header with `header`, so all of it is authenticated.
 */
export async function sealCompactJwe(
  plaintext: Uint8Array,
  header: Record<string, string>,
  key: OkpJwk,
): Promise<string> {
  const pub = bytes32(key.x, 'sealing key "x"')
  const e = generateOkp('X25519')
  const ed = bytes32(e.d, 'ephemeral key')
  const z = sharedSecret(ed, pub)
  zeroize(ed)
  const cekBytes = globalThis.crypto.getRandomValues(new Uint8Array(32))
  const cek = await subtle().importKey('raw', cekBytes, 'AES-GCM', true, ['encrypt'])
  zeroize(cekBytes)
  const wrapped = new Uint8Array(await subtle().wrapKey('raw', cek, await kek(z), 'AES-KW'))
  zeroize(z)
  const prot = b64uEncode(
    utf8(
      JSON.stringify({
        ...header,
        alg: KW_ALG,
        enc: 'A256GCM',
        epk: { kty: 'OKP', crv: 'X25519', x: e.x },
      }),
    ),
  )
  const iv = globalThis.crypto.getRandomValues(new Uint8Array(12))
  const sealed = new Uint8Array(
    await subtle().encrypt(
      {
        name: 'AES-GCM',
        iv,
        additionalData: utf8(prot) as Uint8Array<ArrayBuffer>,
        tagLength: 128,
      },
      cek,
      plaintext as Uint8Array<ArrayBuffer>,
    ),
  )
  const ct = sealed.subarray(0, sealed.byteLength - 16)
  const tag = sealed.subarray(sealed.byteLength - 16)
  return [prot, b64uEncode(wrapped), b64uEncode(iv), b64uEncode(ct), b64uEncode(tag)].join('.')
}

/** Open a compact JWE made by {@link sealCompactJwe} (or jose's CompactEncrypt) with `key`. */
export async function openCompactJwe(
  compact: string,
  key: OkpJwk,
): Promise<{ plaintext: Uint8Array; protectedHeader: Record<string, unknown> }> {
  const parts = compact.split('.')
  if (parts.length !== 5) throw new Error('not a compact JWE')
  const [prot, encryptedKey, iv, ciphertext, tag] = parts as [
    string,
    string,
    string,
    string,
    string,
  ]
  return openGeneralJwe(
    { protected: prot, iv, ciphertext, tag, recipients: [] },
    { encrypted_key: encryptedKey, header: { alg: KW_ALG, kid: '' } },
    key,
  )
}
