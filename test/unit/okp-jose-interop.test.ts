/**
 * shared/crypto/okp.ts writes and reads the same JOSE objects as jose (which uses WebCrypto's
 * Ed25519/X25519, experimental on Node 18): signatures and escrow blobs made by either side
 * verify and open on the other, and tampering is caught.
 */
import test from 'ava'
import {
  CompactSign,
  GeneralEncrypt,
  compactVerify,
  exportJWK,
  generalDecrypt,
  generateKeyPair,
  importJWK,
} from 'jose'
import { openEscrowBlob, sealVolumeKey, type EscrowBlob } from '../../shared/crypto/blob.ts'
import { signHostRequest, verifyHostRequest } from '../../shared/crypto/jws.ts'
import {
  generateHostKeys,
  generateRecoveryKey,
  publicOf,
  thumbprint,
  type PrivateOkpJwk,
} from '../../shared/crypto/keys.ts'
import { randomBytes } from '../../shared/crypto/bytes.ts'

async function joseKey(crv: 'Ed25519' | 'X25519'): Promise<PrivateOkpJwk> {
  const alg = crv === 'Ed25519' ? 'EdDSA' : 'ECDH-ES+A256KW'
  const { privateKey } = await generateKeyPair(alg, { crv, extractable: true })
  return (await exportJWK(privateKey)) as PrivateOkpJwk
}

test('a host signature verifies with jose, and a jose signature verifies here', async (t) => {
  const keys = await generateHostKeys()
  const kid = await thumbprint(keys.signing)
  const jws = await signHostRequest('unlock', { n: 1 }, keys.signing, kid)
  const pub = await importJWK(publicOf(keys.signing), 'EdDSA')
  const res = await compactVerify(jws, pub, { algorithms: ['EdDSA'] })
  t.deepEqual(JSON.parse(new TextDecoder().decode(res.payload)), { n: 1 })

  const other = await joseKey('Ed25519')
  const byJose = await new CompactSign(new TextEncoder().encode('{"n":2}'))
    .setProtectedHeader({ alg: 'EdDSA', typ: 'unlockd-unlock+jws', kid })
    .sign(await importJWK(other, 'EdDSA'))
  t.deepEqual(await verifyHostRequest(byJose, 'unlock', publicOf(other)), { n: 2 })
})

test('a signature fails for another purpose, another key, or a flipped byte', async (t) => {
  const keys = await generateHostKeys()
  const kid = await thumbprint(keys.signing)
  const jws = await signHostRequest('unlock', { n: 1 }, keys.signing, kid)
  const pub = publicOf(keys.signing)
  await t.throwsAsync(verifyHostRequest(jws, 'poll', pub), { message: /does not verify/ })
  const stranger = publicOf((await generateHostKeys()).signing)
  await t.throwsAsync(verifyHostRequest(jws, 'unlock', stranger), { message: /does not verify/ })
  const [h, p, s] = jws.split('.') as [string, string, string]
  const flipped = `${h}.${p}.${s[0] === 'A' ? 'B' : 'A'}${s.slice(1)}`
  await t.throwsAsync(verifyHostRequest(flipped, 'unlock', pub), { message: /does not verify/ })
})

test('a blob sealed here opens with jose for every recipient', async (t) => {
  const host = await generateHostKeys()
  const recovery = await generateRecoveryKey()
  const vk = randomBytes(64)
  const blob = await sealVolumeKey(vk, [publicOf(host.sealing), publicOf(recovery)])
  for (const key of [host.sealing, recovery]) {
    const kid = await thumbprint(key)
    const mine = { ...blob, recipients: blob.recipients.filter((r) => r.header.kid === kid) }
    const { plaintext } = await generalDecrypt(mine, await importJWK(key, 'ECDH-ES+A256KW'))
    t.deepEqual(new Uint8Array(plaintext), vk)
    t.deepEqual(await openEscrowBlob(blob, key), vk)
  }
})

test('a blob sealed by jose (one recipient: epk in the protected header) opens here', async (t) => {
  const key = await joseKey('X25519')
  const vk = randomBytes(32)
  const blob = (await new GeneralEncrypt(vk)
    .setProtectedHeader({ enc: 'A256GCM', cty: 'unlockd-vk' })
    .addRecipient(await importJWK(publicOf(key), 'ECDH-ES+A256KW'))
    .setUnprotectedHeader({ alg: 'ECDH-ES+A256KW', kid: await thumbprint(key) })
    .encrypt()) as EscrowBlob
  t.deepEqual(await openEscrowBlob(blob, key), vk)

  const tampered = {
    ...blob,
    ciphertext: `${blob.ciphertext[0] === 'A' ? 'B' : 'A'}${blob.ciphertext.slice(1)}`,
  }
  await t.throwsAsync(openEscrowBlob(tampered, key), { message: /failed authentication/ })
  const stranger = await joseKey('X25519')
  await t.throwsAsync(openEscrowBlob(blob, stranger), { message: /not sealed to this key/ })
})
