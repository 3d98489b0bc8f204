/**
 * Byte helpers used on both sides. Pure: WebCrypto only.
 */

const encoder = new TextEncoder()
const decoder = new TextDecoder('utf-8', { fatal: true })

export function utf8(text: string): Uint8Array {
  return encoder.encode(text)
}

/** Strict UTF-8 decode; throws TypeError on invalid sequences. */
export function fromUtf8(bytes: Uint8Array): string {
  return decoder.decode(bytes)
}

export function randomBytes(length: number): Uint8Array {
  if (!Number.isInteger(length) || length <= 0 || length > 65536) {
    throw new RangeError('"length" must be an integer in 1..65536')
  }
  return globalThis.crypto.getRandomValues(new Uint8Array(length))
}

const B64U = /^[A-Za-z0-9_-]*$/

export function b64uEncode(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64url')
}

/** Decode base64url; returns undefined for anything that is not canonical base64url. */
export function b64uDecode(text: string): Uint8Array | undefined {
  if (!B64U.test(text) || text.length % 4 === 1) return undefined
  const out = new Uint8Array(Buffer.from(text, 'base64url'))
  // Reject non-canonical encodings (stray bits) so one value has one spelling.
  if (b64uEncode(out) !== text) return undefined
  return out
}

export function hexEncode(bytes: Uint8Array): string {
  return Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('hex')
}

/** Overwrite a secret buffer in place. Best effort: JS cannot promise no copies exist elsewhere. */
export function zeroize(...buffers: (Uint8Array | undefined)[]): void {
  for (const b of buffers) b?.fill(0)
}

/**
 * Constant-time equality for secrets and digests. Lengths are not secret here (digests and
 * tokens have fixed sizes), so a length mismatch returns false early.
 */
export function timingSafeEqual(a: Uint8Array, b: Uint8Array): boolean {
  if (a.byteLength !== b.byteLength) return false
  let diff = 0
  for (let i = 0; i < a.byteLength; i++) diff |= (a[i] as number) ^ (b[i] as number)
  return diff === 0
}

export async function sha256(data: Uint8Array | string): Promise<Uint8Array> {
  const input = typeof data === 'string' ? utf8(data) : data
  return new Uint8Array(
    await globalThis.crypto.subtle.digest('SHA-256', input as Uint8Array<ArrayBuffer>),
  )
}

export async function sha256Hex(data: Uint8Array | string): Promise<string> {
  return hexEncode(await sha256(data))
}

export async function sha256B64u(data: Uint8Array | string): Promise<string> {
  return b64uEncode(await sha256(data))
}
