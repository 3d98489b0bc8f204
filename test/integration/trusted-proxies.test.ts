/**
 * Source-address policy behind a reverse proxy, over real HTTP: X-Forwarded-For is believed
 * only when the TCP peer is a configured trusted proxy, and then the client is the rightmost
 * hop that is not a trusted proxy. The test server's peer address is always 127.0.0.1.
 */
import test from 'ava'
import { startTestServer, type TestServer } from '../helpers/server.ts'
import {
  enroll,
  generateHostKeys,
  publicOf,
  requestUnlock,
  sealVolumeKey,
} from '../../shared/client/host-client.ts'
import type { Transport } from '../../shared/client/transport.ts'
import { randomBytes } from '../../shared/crypto/bytes.ts'
import type { HostKeys } from '../../shared/crypto/keys.ts'

/** A transport that sends every request with the given X-Forwarded-For. */
function forwarding(url: string, xff: string | undefined): Transport {
  return async (req) => {
    const headers: Record<string, string> = { accept: 'application/json' }
    if (req.body !== undefined) headers['content-type'] = 'application/json'
    if (req.bearer) headers['authorization'] = `Bearer ${req.bearer}`
    if (xff !== undefined) headers['x-forwarded-for'] = xff
    const res = await fetch(url + req.path, {
      method: req.method,
      headers,
      ...(req.body === undefined ? {} : { body: JSON.stringify(req.body) }),
    })
    const text = await res.text()
    return { status: res.status, body: text ? (JSON.parse(text) as unknown) : undefined }
  }
}

/** An enrolled host whose policy admits only `cidrs`. */
async function hostLimitedTo(
  srv: TestServer,
  cidrs: string[],
): Promise<{ keys: HostKeys; hostId: string }> {
  const tok = await srv.admin('POST', '/tokens', { host: 'web-1', ttlSeconds: 600 })
  const keys = await generateHostKeys()
  const blob = await sealVolumeKey(randomBytes(64), [publicOf(keys.sealing)])
  const r = await enroll(srv.transport, {
    token: tok.body.token as string,
    name: 'web-1',
    keys,
    volumes: [{ name: 'data', kind: 'luks', blob }],
  })
  const p = await srv.admin('PATCH', '/hosts/web-1/policy', { cidrs })
  if (p.status !== 200) throw new Error(`policy patch failed: ${JSON.stringify(p.body)}`)
  return { keys, hostId: r.hostId }
}

/** 'released', or the refusal code. */
async function unlockVia(
  srv: TestServer,
  h: { keys: HostKeys; hostId: string },
  xff: string | undefined,
): Promise<string> {
  try {
    const r = await requestUnlock(forwarding(srv.url, xff), {
      keys: h.keys,
      hostId: h.hostId,
      bootId: 'boot-aaaa',
      volumes: [],
    })
    return r.status
  } catch (err) {
    return (err as { code: string }).code
  }
}

test('without trustedProxies a forged X-Forwarded-For changes nothing', async (t) => {
  const srv = await startTestServer(t)
  const h = await hostLimitedTo(srv, ['198.51.100.0/24'])
  t.is(await unlockVia(srv, h, '198.51.100.7'), 'cidr_denied')
  t.is(await unlockVia(srv, h, undefined), 'cidr_denied')
  await srv.admin('PATCH', '/hosts/web-1/policy', { cidrs: ['127.0.0.0/8'] }, { totp: true })
  t.is(await unlockVia(srv, h, '203.0.113.9'), 'released')
})

test('with the peer a trusted proxy, CIDR policy uses the forwarded address', async (t) => {
  const srv = await startTestServer(t, { settings: { trustedProxies: ['127.0.0.1/32'] } })
  const h = await hostLimitedTo(srv, ['198.51.100.0/24'])
  t.is(await unlockVia(srv, h, '198.51.100.7'), 'released')
  t.is(await unlockVia(srv, h, '203.0.113.9'), 'cidr_denied')
  // No header: the proxy itself is the client.
  t.is(await unlockVia(srv, h, undefined), 'cidr_denied')
  // A hop that is not an address: trust stops at the proxy that wrote it.
  t.is(await unlockVia(srv, h, 'not-an-ip'), 'cidr_denied')
})

test('with several hops the rightmost untrusted one is the client', async (t) => {
  const srv = await startTestServer(t, {
    settings: { trustedProxies: ['127.0.0.1/32', '10.0.0.0/8'] },
  })
  const h = await hostLimitedTo(srv, ['198.51.100.0/24'])
  // client -> 10.1.1.1 (edge proxy) -> 127.0.0.1 (local proxy) -> server
  t.is(await unlockVia(srv, h, '198.51.100.7, 10.1.1.1'), 'released')
  // A client that writes an admitted address on the left gains nothing.
  t.is(await unlockVia(srv, h, '198.51.100.7, 203.0.113.9, 10.1.1.1'), 'cidr_denied')
  t.is(await unlockVia(srv, h, '203.0.113.9, 198.51.100.7'), 'released')
})
