/**
 * server/escrow/jws-verify.ts (node:crypto, cached KeyObjects) accepts exactly what
 * shared/crypto/jws.ts verifyHostRequest accepts for host requests signed by the host client.
 */
import test from 'ava'
import { signHostRequest, verifyHostRequest } from '../../shared/crypto/jws.ts'
import { generateHostKeys, publicOf, thumbprint } from '../../shared/crypto/keys.ts'
import { verifyHostJws } from '../../server/escrow/jws-verify.ts'
import { throwsWithCode } from '../helpers/errors.ts'

test('a host-signed request verifies and yields its payload, like verifyHostRequest', async (t) => {
  const keys = await generateHostKeys()
  const kid = await thumbprint(publicOf(keys.signing))
  const payload = {
    v: 1,
    host: kid,
    volumes: ['root'],
    nonce: 'n'.repeat(43),
    bootId: 'boot-0001',
    iat: 1_700_000_000,
  }
  const jws = await signHostRequest('unlock', payload, keys.signing, kid)
  const stored = JSON.stringify(publicOf(keys.signing))
  t.deepEqual(verifyHostJws(jws, stored), payload)
  t.deepEqual(
    verifyHostJws(jws, stored),
    await verifyHostRequest(jws, 'unlock', publicOf(keys.signing)),
    'cached key, same answer',
  )
})

test('tampering, another key, a malformed signature or an unusable stored key are refused', async (t) => {
  const keys = await generateHostKeys()
  const other = await generateHostKeys()
  const kid = await thumbprint(publicOf(keys.signing))
  const jws = await signHostRequest('unlock', { a: 1 }, keys.signing, kid)
  const [h, p, s] = jws.split('.') as [string, string, string]
  const stored = JSON.stringify(publicOf(keys.signing))
  const refuse = (
    compact: string,
    key = stored,
    code: 'bad_signature' | 'protocol_invalid' = 'bad_signature',
  ): void => {
    throwsWithCode(t, () => verifyHostJws(compact, key), code)
  }
  refuse(`${h}.${Buffer.from('{"a":2}').toString('base64url')}.${s}`)
  refuse(jws, JSON.stringify(publicOf(other.signing)))
  refuse(`${h}.${p}.${s.slice(0, -2)}`)
  refuse(`${h}.${p}.${s}A`)
  refuse(`${h}.${p}.`)
  refuse(jws, '{}', 'protocol_invalid')
  refuse(jws, 'not json', 'protocol_invalid')
})
