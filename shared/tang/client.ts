/**
 * clevis-compatible Tang pin: `tangEncrypt` makes the same compact JWE as
 * `clevis encrypt tang '{"url":…}'` and `tangDecrypt` does what `clevis decrypt` does for it
 * (blinded McCallum-Relyea recovery against `{url}/rec/{kid}`). Pure: the network is a
 * `fetch`-like function passed in; crypto is WebCrypto + @noble/curves.
 *
 * The JWE: compact, `alg: "ECDH-ES"` (direct key agreement, empty encrypted key) to the server's
 * ECMR exchange key, `enc: "A256GCM"`, and in the protected header
 * `kid` = S256 thumbprint of that exchange key, `epk` = the ephemeral public key, and
 * `clevis: {pin: "tang", tang: {url, adv}}` where `adv` is the advertised JWK set.
 * The content key is Concat KDF (RFC 7518 §4.6, SHA-256) of the x coordinate of the shared point.
 */
import { UnlockdError } from '../errors.ts'
import { b64uDecode, b64uEncode, fromUtf8, randomBytes, utf8, zeroize } from '../crypto/bytes.ts'
import {
  DEFAULT_THUMBPRINT_ALG,
  findByThumbprint,
  jwkThumbprint,
  REC_CONTENT_TYPE,
  ADV_CONTENT_TYPE,
  verifyAdvertisement,
  type TangJwkSet,
  type VerifiedAdvertisement,
} from './adv.ts'
import { bareEcJwk, parseEcPublicJwk, provision, startRecovery, type EcPublicJwk } from './mcr.ts'

/** Response shape we need from a fetch implementation (`Response` satisfies it). */
export interface FetchResponseLike {
  readonly ok: boolean
  readonly status: number
  text(): Promise<string>
}

/** Minimal `fetch` signature; `globalThis.fetch` satisfies it. */
export type FetchLike = (
  url: string,
  init: {
    method: 'GET' | 'POST'
    headers: Record<string, string>
    body?: string
    signal?: AbortSignal
  },
) => Promise<FetchResponseLike>

export type TangContentEnc = 'A128GCM' | 'A192GCM' | 'A256GCM'

/** The clevis tang JWE header, parsed and validated. */
export interface TangJweInfo {
  /** Tang base URL from `clevis.tang.url` (recovery POSTs to `{url}/rec/{kid}`). */
  url: string
  /** Thumbprint of the server exchange key (any tang-supported hash; clevis uses S256). */
  kid: string
  /** Ephemeral public key `C`. */
  epk: EcPublicJwk
  /** `clevis.tang.adv`, validated. */
  adv: TangJwkSet
  /** The exchange key in `adv` whose thumbprint is `kid`. */
  serverKey: EcPublicJwk
  enc: TangContentEnc
}

export interface TangEncryptOptions {
  /** Trusted signing-key thumbprint (clevis `thp`); without it the advertisement is trusted as given (clevis `-y`). */
  trustedThumbprint?: string
}

export interface TangDecryptOptions {
  signal?: AbortSignal
}

const ENC_BITS: Readonly<Record<TangContentEnc, number>> = {
  A128GCM: 128,
  A192GCM: 192,
  A256GCM: 256,
}
const MAX_JWE_CHARS = 8 * 1024 * 1024
const MAX_REPLY_CHARS = 64 * 1024
const B64U_PART = /^[A-Za-z0-9_-]*$/

function invalid(message: string, cause?: unknown): never {
  throw new UnlockdError('protocol_invalid', message, cause === undefined ? {} : { cause })
}

function isRecord(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null && !Array.isArray(value)
}

function be32(n: number): Uint8Array {
  const b = new Uint8Array(4)
  new DataView(b.buffer).setUint32(0, n)
  return b
}

/** Concat KDF (NIST SP 800-56A, RFC 7518 §4.6.2) with SHA-256, for ECDH-ES direct agreement. */
async function concatKdf(
  z: Uint8Array,
  enc: TangContentEnc,
  apu: Uint8Array,
  apv: Uint8Array,
): Promise<Uint8Array> {
  const bits = ENC_BITS[enc]
  const alg = utf8(enc)
  const parts = [
    be32(1),
    z,
    be32(alg.length),
    alg,
    be32(apu.length),
    apu,
    be32(apv.length),
    apv,
    be32(bits),
  ]
  const input = new Uint8Array(parts.reduce((n, p) => n + p.length, 0))
  let off = 0
  for (const p of parts) {
    input.set(p, off)
    off += p.length
  }
  const digest = new Uint8Array(await globalThis.crypto.subtle.digest('SHA-256', input))
  zeroize(input)
  const key = digest.slice(0, bits / 8)
  zeroize(digest)
  return key
}

async function importCek(cek: Uint8Array, usage: 'encrypt' | 'decrypt'): Promise<CryptoKey> {
  return globalThis.crypto.subtle.importKey(
    'raw',
    cek as Uint8Array<ArrayBuffer>,
    { name: 'AES-GCM' },
    false,
    [usage],
  )
}

function baseUrl(url: string): string {
  let parsed: URL
  try {
    parsed = new URL(url)
  } catch (cause) {
    return invalid('tang url is not a valid URL', cause)
  }
  if (parsed.protocol !== 'http:' && parsed.protocol !== 'https:')
    invalid('tang url must be http or https')
  return url.replace(/\/+$/, '')
}

/**
 * Encrypt `plaintext` to a Tang server, like `clevis encrypt tang '{"url":url}'` with the given
 * advertisement (the JWS from `GET {url}/adv`, as text or object). The advertisement's signatures
 * are always checked; pass `trustedThumbprint` to pin the signing key. Binds to the first
 * exchange key, as clevis does. Returns the compact JWE.
 * Throws `protocol_invalid` / `bad_signature` for a bad advertisement.
 */
export async function tangEncrypt(
  plaintext: Uint8Array | string,
  advJws: unknown,
  url: string,
  opts: TangEncryptOptions = {},
): Promise<string> {
  const base = baseUrl(url)
  const adv = await verifyAdvertisement(
    advJws,
    opts.trustedThumbprint === undefined ? {} : { trustedThumbprint: opts.trustedThumbprint },
  )
  const server = adv.exchangeKeys[0]
  if (server === undefined) invalid('tang advertisement has no exchange (deriveKey) key')
  const kid = await jwkThumbprint(server, DEFAULT_THUMBPRINT_ALG)
  const { epk, sharedX } = provision(server)
  const enc: TangContentEnc = 'A256GCM'
  const header = {
    alg: 'ECDH-ES',
    enc,
    clevis: { pin: 'tang', tang: { url: base, adv: adv.jwks } },
    kid,
    epk: bareEcJwk(epk),
  }
  const protectedB64 = b64uEncode(utf8(JSON.stringify(header)))
  const cek = await concatKdf(sharedX, enc, new Uint8Array(0), new Uint8Array(0))
  zeroize(sharedX)
  const key = await importCek(cek, 'encrypt')
  zeroize(cek)
  const iv = randomBytes(12)
  const data = typeof plaintext === 'string' ? utf8(plaintext) : plaintext
  const sealed = new Uint8Array(
    await globalThis.crypto.subtle.encrypt(
      {
        name: 'AES-GCM',
        iv: iv as Uint8Array<ArrayBuffer>,
        additionalData: utf8(protectedB64) as Uint8Array<ArrayBuffer>,
        tagLength: 128,
      },
      key,
      data as Uint8Array<ArrayBuffer>,
    ),
  )
  const ct = sealed.subarray(0, sealed.length - 16)
  const tag = sealed.subarray(sealed.length - 16)
  return `${protectedB64}..${b64uEncode(iv)}.${b64uEncode(ct)}.${b64uEncode(tag)}`
}

interface ParsedJwe {
  info: TangJweInfo
  protectedB64: string
  iv: Uint8Array
  ciphertext: Uint8Array
  tag: Uint8Array
  apu: Uint8Array
  apv: Uint8Array
}

async function parseJwe(jwe: unknown): Promise<ParsedJwe> {
  if (typeof jwe !== 'string') invalid('JWE must be a string')
  const text = jwe.trim()
  if (text.length > MAX_JWE_CHARS) invalid('JWE is too large')
  const parts = text.split('.')
  if (parts.length !== 5 || !parts.every((p) => B64U_PART.test(p)))
    invalid('JWE must be in compact serialization')
  const [protectedB64, encryptedKey, ivB64, ctB64, tagB64] = parts as [
    string,
    string,
    string,
    string,
    string,
  ]
  if (encryptedKey !== '') invalid('tang JWE must use direct ECDH-ES (empty encrypted key)')
  const headerBytes = b64uDecode(protectedB64)
  if (headerBytes === undefined) invalid('JWE protected header is not base64url')
  let header: unknown
  try {
    header = JSON.parse(fromUtf8(headerBytes)) as unknown
  } catch (cause) {
    invalid('JWE protected header is not JSON', cause)
  }
  if (!isRecord(header)) invalid('JWE protected header must be an object')
  if (header['alg'] !== 'ECDH-ES') invalid('tang JWE alg must be ECDH-ES')
  const enc = header['enc']
  if (enc !== 'A128GCM' && enc !== 'A192GCM' && enc !== 'A256GCM')
    invalid('tang JWE enc must be AES-GCM')
  if (header['zip'] !== undefined) invalid('compressed JWEs are not supported')
  if (header['crit'] !== undefined) invalid('JWE crit is not supported')
  const clevis = header['clevis']
  if (!isRecord(clevis) || clevis['pin'] !== 'tang')
    invalid('JWE pin mismatch: not a clevis tang JWE')
  const tang = clevis['tang']
  if (!isRecord(tang)) invalid("JWE missing 'clevis.tang'")
  const url = tang['url']
  if (typeof url !== 'string') invalid("JWE missing 'clevis.tang.url'")
  const advRaw = tang['adv']
  if (!isRecord(advRaw) || !Array.isArray(advRaw['keys'])) invalid("JWE missing 'clevis.tang.adv'")
  const advKeys = advRaw['keys'].map((k) => parseEcPublicJwk(k, 'protocol_invalid'))
  const kid = header['kid']
  if (typeof kid !== 'string' || !/^[A-Za-z0-9_-]+$/.test(kid)) invalid("JWE missing 'kid'")
  const serverKey = await findByThumbprint(advKeys, kid)
  if (serverKey === undefined) invalid("JWE 'clevis.tang.adv' has no key with thumbprint 'kid'")
  const epk = parseEcPublicJwk(header['epk'], 'protocol_invalid')
  const decode = (name: string, v: unknown): Uint8Array => {
    if (v === undefined) return new Uint8Array(0)
    const b = typeof v === 'string' ? b64uDecode(v) : undefined
    if (b === undefined) invalid(`JWE ${name} is not base64url`)
    return b
  }
  const iv = decode('iv', ivB64)
  const ciphertext = decode('ciphertext', ctB64)
  const tag = decode('tag', tagB64)
  if (iv.length !== 12) invalid('JWE iv must be 96 bits')
  if (tag.length !== 16) invalid('JWE tag must be 128 bits')
  return {
    info: { url: baseUrl(url), kid, epk, adv: { keys: advKeys }, serverKey, enc },
    protectedB64,
    iv,
    ciphertext,
    tag,
    apu: decode('apu', header['apu']),
    apv: decode('apv', header['apv']),
  }
}

/** Parse and validate a clevis tang JWE's header without contacting anything. Throws `protocol_invalid`. */
export async function inspectTangJwe(jwe: string): Promise<TangJweInfo> {
  return (await parseJwe(jwe)).info
}

async function readBody(res: FetchResponseLike): Promise<string> {
  const text = await res.text()
  if (text.length > MAX_REPLY_CHARS) invalid('tang reply is too large')
  return text
}

function httpFailure(what: string, status: number, url: string): never {
  const details = { status, url }
  if (status === 404)
    throw new UnlockdError('not_found', `${what}: tang server does not know this key (HTTP 404)`, {
      details,
    })
  if (status >= 500 || status === 429)
    throw new UnlockdError('server_unreachable', `${what}: tang server error (HTTP ${status})`, {
      details,
    })
  throw new UnlockdError(
    'protocol_invalid',
    `${what}: tang server refused the request (HTTP ${status})`,
    { details },
  )
}

/**
 * Decrypt a clevis tang JWE (ours or clevis's): parse the header, blind the `epk`, POST the
 * blinded point to `{url}/rec/{kid}` through `fetchRec`, unblind, derive the key, decrypt.
 * Throws `protocol_invalid` (bad JWE or reply), `server_unreachable` (network or 5xx),
 * `not_found` (404: the server no longer has the key), `decryption_failed` (wrong server key or
 * tampered JWE).
 */
export async function tangDecrypt(
  jwe: string,
  fetchRec: FetchLike,
  opts: TangDecryptOptions = {},
): Promise<Uint8Array> {
  const parsed = await parseJwe(jwe)
  const { info } = parsed
  const recovery = startRecovery(info.epk, info.serverKey)
  const recUrl = `${info.url}/rec/${info.kid}`
  let res: FetchResponseLike
  let body: string
  try {
    res = await fetchRec(recUrl, {
      method: 'POST',
      headers: { 'Content-Type': REC_CONTENT_TYPE },
      body: JSON.stringify(recovery.request),
      ...(opts.signal === undefined ? {} : { signal: opts.signal }),
    })
    body = await readBody(res)
  } catch (cause) {
    if (cause instanceof UnlockdError) throw cause
    throw new UnlockdError('server_unreachable', `cannot reach tang server ${info.url}`, {
      cause,
      details: { url: recUrl },
    })
  }
  if (!res.ok) httpFailure('tang recovery', res.status, recUrl)
  let reply: unknown
  try {
    reply = JSON.parse(body) as unknown
  } catch (cause) {
    invalid('tang reply is not JSON', cause)
  }
  const z = recovery.unblind(reply)
  const cek = await concatKdf(z, info.enc, parsed.apu, parsed.apv)
  zeroize(z)
  const key = await importCek(cek, 'decrypt')
  zeroize(cek)
  const sealed = new Uint8Array(parsed.ciphertext.length + 16)
  sealed.set(parsed.ciphertext)
  sealed.set(parsed.tag, parsed.ciphertext.length)
  try {
    return new Uint8Array(
      await globalThis.crypto.subtle.decrypt(
        {
          name: 'AES-GCM',
          iv: parsed.iv as Uint8Array<ArrayBuffer>,
          additionalData: utf8(parsed.protectedB64) as Uint8Array<ArrayBuffer>,
          tagLength: 128,
        },
        key,
        sealed,
      ),
    )
  } catch (cause) {
    throw new UnlockdError(
      'decryption_failed',
      'tang JWE does not decrypt with the recovered key',
      { cause },
    )
  }
}

/**
 * Fetch a Tang advertisement (`GET {url}/adv`, or `/adv/{thp}`) through `fetchAdv` and verify it.
 * Returns the raw JWS text (to pass to {@link tangEncrypt} or store for offline binding) and
 * the verified keys.
 */
export async function fetchTangAdvertisement(
  url: string,
  fetchAdv: FetchLike,
  opts: { trustedThumbprint?: string; signal?: AbortSignal } = {},
): Promise<{ jws: string; adv: VerifiedAdvertisement }> {
  const base = baseUrl(url)
  const advUrl =
    opts.trustedThumbprint === undefined
      ? `${base}/adv`
      : `${base}/adv/${encodeURIComponent(opts.trustedThumbprint)}`
  let res: FetchResponseLike
  let jws: string
  try {
    res = await fetchAdv(advUrl, {
      method: 'GET',
      headers: { Accept: ADV_CONTENT_TYPE },
      ...(opts.signal === undefined ? {} : { signal: opts.signal }),
    })
    jws = await readBody(res)
  } catch (cause) {
    if (cause instanceof UnlockdError) throw cause
    throw new UnlockdError('server_unreachable', `cannot reach tang server ${base}`, {
      cause,
      details: { url: advUrl },
    })
  }
  if (!res.ok) httpFailure('tang advertisement', res.status, advUrl)
  const adv = await verifyAdvertisement(
    jws,
    opts.trustedThumbprint === undefined ? {} : { trustedThumbprint: opts.trustedThumbprint },
  )
  return { jws, adv }
}
