/**
 * A lost enroll reply: the server committed, the host rolled back and sends the same token
 * again. Over real HTTP: the same key, name and volumes get the same answer (the host stays
 * enrolled once and unlocks); another key, name or volume set with that used token is refused.
 */
import test from 'ava'
import { startTestServer } from '../helpers/server.ts'
import {
  enroll,
  generateHostKeys,
  publicOf,
  requestUnlock,
  sealVolumeKey,
} from '../../shared/client/host-client.ts'
import { randomBytes } from '../../shared/crypto/bytes.ts'

test('a retried enrollment by the same host key finishes it; any other use of the token is token_used', async (t) => {
  const srv = await startTestServer(t)
  const keys = await generateHostKeys()
  const blob = await sealVolumeKey(randomBytes(32), [publicOf(keys.sealing)])
  const tok = await srv.admin('POST', '/tokens', { host: 'h-1', ttlSeconds: 600 })
  const req = {
    token: tok.body.token as string,
    name: 'h-1',
    keys,
    volumes: [{ name: 'd', kind: 'luks' as const, blob }],
  }
  const first = await enroll(srv.transport, req)
  const again = await enroll(srv.transport, req)
  t.deepEqual(again, first, 'the retry gets the first answer')
  t.is((await srv.admin('GET', '/hosts')).body.hosts.length, 1, 'enrolled once')
  const released = await requestUnlock(srv.transport, {
    keys,
    hostId: first.hostId,
    bootId: 'boot-aaaa',
    volumes: ['d'],
  })
  t.is(released.status, 'released')

  const codeOf = async (p: Promise<unknown>): Promise<unknown> =>
    ((await t.throwsAsync(p)) as { code?: string } | undefined)?.code
  const other = await generateHostKeys()
  t.is(await codeOf(enroll(srv.transport, { ...req, keys: other })), 'token_used')
  t.is(
    await codeOf(
      enroll(srv.transport, {
        ...req,
        volumes: [...req.volumes, { name: 'e', kind: 'luks', blob }],
      }),
    ),
    'token_used',
    'same key, different volumes: not the same enrollment',
  )
  const actions = (await srv.admin('GET', '/audit')).body.entries.map(
    (e: { action: string }) => e.action,
  )
  t.is(actions.filter((a: string) => a === 'host.enroll').length, 1)
  t.is(actions.filter((a: string) => a === 'host.enroll_retry').length, 1)
})
