/**
 * Request bodies read with a hard bound, whatever the framing: a declared Content-Length over the
 * bound is refused before a byte is read, and a chunked (or undeclared) body is read chunk by
 * chunk and abandoned as soon as the running total passes the bound. At most `max` bytes plus one
 * socket chunk are ever held. Every route that reads a body goes through here.
 */
import type { Context, MiddlewareHandler } from 'hono'
import { UnlockdError } from '../../shared/errors.ts'

export function payloadTooLarge(max: number): UnlockdError {
  return new UnlockdError(
    'payload_too_large',
    `request body exceeds ${max} bytes; send a smaller body`,
  )
}

function declaredTooLarge(c: Context, max: number): boolean {
  const declared = c.req.header('content-length')
  if (declared === undefined) return false
  const n = Number(declared)
  // A malformed length never gets this far (node's parser rejects it); refuse it anyway.
  return !Number.isSafeInteger(n) || n > max
}

/** The whole body as bytes, or `payload_too_large` once more than `max` bytes have arrived. */
export async function readBoundedBody(c: Context, max: number): Promise<Uint8Array> {
  if (declaredTooLarge(c, max)) throw payloadTooLarge(max)
  const stream = c.req.raw.body
  if (stream === null) return new Uint8Array(0)
  const reader = stream.getReader()
  const chunks: Uint8Array[] = []
  let size = 0
  for (;;) {
    const { done, value } = await reader.read()
    if (done) break
    size += value.byteLength
    if (size > max) {
      // Stop pulling; the HTTP layer drains or drops what the client still sends.
      reader.cancel().catch(() => undefined)
      throw payloadTooLarge(max)
    }
    chunks.push(value)
  }
  if (chunks.length === 1) return chunks[0] as Uint8Array
  const out = new Uint8Array(size)
  let at = 0
  for (const ch of chunks) {
    out.set(ch, at)
    at += ch.byteLength
  }
  return out
}

/**
 * App-wide guard: a declared Content-Length over `max` is refused on every route, including
 * those that never read a body, before the handler runs.
 */
export function declaredBodyLimit(max: number): MiddlewareHandler {
  return async (c, next) => {
    if (declaredTooLarge(c, max)) throw payloadTooLarge(max)
    await next()
  }
}
