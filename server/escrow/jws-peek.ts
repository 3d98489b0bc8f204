/** Read a compact JWS payload without verifying it, only to find the key that must verify it. */
import { UnlockdError } from '../../shared/errors.ts'
import { b64uDecode, fromUtf8 } from '../../shared/crypto/bytes.ts'

export function decodeJwtPayloadUnverified(compact: string): unknown {
  const part = compact.split('.')[1] ?? ''
  const bytes = b64uDecode(part)
  if (!bytes) throw new UnlockdError('protocol_invalid', 'jws payload is not base64url')
  try {
    return JSON.parse(fromUtf8(bytes)) as unknown
  } catch (cause) {
    throw new UnlockdError('protocol_invalid', 'jws payload is not JSON', { cause })
  }
}
