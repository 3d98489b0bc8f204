import test from 'ava'
import { startTestServer } from '../helpers/server.ts'
import {
  enroll,
  requestUnlock,
  hostIdOf,
  generateHostKeys,
  publicOf,
  sealVolumeKey,
  openEscrowBlob,
} from '../../shared/client/host-client.ts'
import { randomBytes } from '../../shared/crypto/bytes.ts'

test('a host enrolls, unlocks, and opens its blob to the exact volume key; state survives a restart', async (t) => {
  const srv = await startTestServer(t)
  const tok = await srv.admin('POST', '/tokens', { host: 'web-1', ttlSeconds: 600 })
  t.is(tok.status, 201)
  const keys = await generateHostKeys()
  const vk = randomBytes(64)
  const blob = await sealVolumeKey(vk, [publicOf(keys.sealing)])
  const res = await enroll(srv.transport, {
    token: tok.body.token,
    name: 'web-1',
    keys,
    volumes: [{ name: 'data', kind: 'luks', blob }],
  })
  t.is(res.hostId, await hostIdOf(keys))
  const un = await requestUnlock(srv.transport, {
    keys,
    hostId: res.hostId,
    bootId: 'boot-0001',
    volumes: [],
  })
  t.is(un.status, 'released')
  if (un.status !== 'released') return
  t.deepEqual(await openEscrowBlob(un.volumes[0]!.blob, keys.sealing), vk)

  const srv2 = await srv.restart()
  const un2 = await requestUnlock(srv2.transport, {
    keys,
    hostId: res.hostId,
    bootId: 'boot-0002',
    volumes: ['data'],
  })
  t.is(un2.status, 'released')
  if (un2.status === 'released')
    t.deepEqual(await openEscrowBlob(un2.volumes[0]!.blob, keys.sealing), vk)
})
