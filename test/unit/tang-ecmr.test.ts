/**
 * The server-side McCallum-Relyea implementations of the Tang endpoints (server/tang/ecmr-node.ts
 * on node:crypto, server/tang/ecmr-libcrypto.ts on the system OpenSSL) against the reference in
 * shared/tang/mcr.ts: byte-identical replies, the same refusals. Also the `hostRateLimit`
 * setting of server.json.
 */
import test from 'ava'
import { existsSync } from 'node:fs'
import { generateExchangeKey, publicJwk } from '../../shared/tang/adv.ts'
import { provision, recover, startRecovery } from '../../shared/tang/mcr.ts'
import { parseServerConfig } from '../../shared/config/server.ts'
import { createNodeEcmrServer } from '../../server/tang/ecmr-node.ts'
import { createFastEcmrServer, ecmrBackend } from '../../server/tang/ecmr-libcrypto.ts'
import { rejectsWithCode } from '../helpers/errors.ts'

test('node:crypto ECMR replies equal the reference byte for byte and unblind to the ECDH point', async (t) => {
  for (let k = 0; k < 3; k++) {
    const exch = generateExchangeKey()
    const pub = publicJwk(exch)
    const srv = createNodeEcmrServer(exch)
    t.deepEqual({ x: srv.publicJwk.x, y: srv.publicJwk.y }, { x: pub.x, y: pub.y })
    for (let i = 0; i < 4; i++) {
      const p = provision(pub)
      const r = startRecovery(p.epk, pub)
      const reply = await srv.recover(r.request)
      t.is(JSON.stringify(reply), JSON.stringify(recover(exch, r.request)))
      t.deepEqual(Buffer.from(r.unblind(reply)), Buffer.from(p.sharedX))
    }
  }
})

test('system libcrypto ECMR (the default on Debian) replies equal the reference byte for byte', async (t) => {
  const backend = await ecmrBackend()
  if (
    existsSync('/usr/lib/x86_64-linux-gnu/libcrypto.so.3') ||
    existsSync('/usr/lib/aarch64-linux-gnu/libcrypto.so.3')
  )
    t.is(backend, 'libcrypto')
  else t.log(`no system libcrypto.so.3: the Tang endpoints use ${backend}`)
  const exch = generateExchangeKey()
  const pub = publicJwk(exch)
  const srv = await createFastEcmrServer(exch)
  for (let i = 0; i < 6; i++) {
    const p = provision(pub)
    const r = startRecovery(p.epk, pub)
    const reply = await srv.recover(r.request)
    t.is(JSON.stringify(reply), JSON.stringify(recover(exch, r.request)))
    t.deepEqual(Buffer.from(r.unblind(reply)), Buffer.from(p.sharedX))
  }
  const good = startRecovery(provision(pub).epk, pub).request
  for (const bad of [{ ...good, y: good.x }, { ...good, alg: 'ES512' }, null]) {
    await rejectsWithCode(t, srv.recover(bad), 'bad_request')
  }
})

test('node:crypto ECMR refuses what tangd refuses, with bad_request', async (t) => {
  const exch = generateExchangeKey()
  const srv = createNodeEcmrServer(exch)
  const good = startRecovery(provision(publicJwk(exch)).epk, publicJwk(exch)).request
  const y = Buffer.from(good.y, 'base64url')
  y[65] = (y[65] ?? 0) ^ 1
  for (const bad of [
    { ...good, y: y.toString('base64url') },
    { ...good, crv: 'P-256' },
    { ...good, alg: 'ES512' },
    { ...good, key_ops: ['sign'] },
    { ...good, use: 'sig' },
    { ...good, x: 'AA' },
    null,
    'x',
    [],
  ]) {
    await rejectsWithCode(t, srv.recover(bad), 'bad_request')
  }
})

test('node:crypto ECMR rejects an exchange key that is not one', (t) => {
  const exch = generateExchangeKey()
  t.throws(() => createNodeEcmrServer({ ...exch, alg: 'ES512' }), { message: /ECMR/ })
  t.throws(() => createNodeEcmrServer({ ...exch, d: exch.x }))
})

test('server.json hostRateLimit: object, "off", or refused', (t) => {
  t.deepEqual(
    parseServerConfig('{"hostRateLimit":{"perSecond":5000,"burst":20000}}').settings.hostRateLimit,
    { perSecond: 5000, burst: 20000 },
  )
  t.is(parseServerConfig('{"hostRateLimit":"off"}').settings.hostRateLimit, null)
  t.is(parseServerConfig('{}').settings.hostRateLimit, undefined)
  t.throws(() => parseServerConfig('{"hostRateLimit":{"perSecond":0,"burst":1}}'))
  t.throws(() => parseServerConfig('{"hostRateLimit":true}'))
})
