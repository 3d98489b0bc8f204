/** The client address behind trusted proxies, and the `trustedProxies` setting. */
import test from 'ava'
import { clientAddressOf, parseTrustedProxies } from '../../server/http/client-address.ts'
import { parseServerConfig } from '../../shared/config/server.ts'

const trusted = parseTrustedProxies(['10.0.0.0/8', '2001:db8::/32'])

test('an untrusted peer is the client whatever it forwards', (t) => {
  t.is(clientAddressOf('192.0.2.1', '198.51.100.7', trusted), '192.0.2.1')
  t.is(clientAddressOf('::ffff:192.0.2.1', '198.51.100.7', trusted), '192.0.2.1')
  t.is(clientAddressOf('10.0.0.1', '198.51.100.7', []), '10.0.0.1')
})

test('behind trusted proxies the rightmost untrusted hop is the client', (t) => {
  t.is(clientAddressOf('::ffff:10.0.0.1', '198.51.100.7', trusted), '198.51.100.7')
  t.is(clientAddressOf('10.0.0.1', '198.51.100.7, 203.0.113.9, 10.2.2.2', trusted), '203.0.113.9')
  t.is(clientAddressOf('2001:db8::1', '2001:db9::5, 2001:db8::2', trusted), '2001:db9::5')
  t.is(clientAddressOf('10.0.0.1', '[2001:db9::5]:4711', trusted), '2001:db9::5')
  t.is(clientAddressOf('10.0.0.1', '198.51.100.7:4711', trusted), '198.51.100.7')
  // Every hop trusted: the leftmost one is as far as trust reaches.
  t.is(clientAddressOf('10.0.0.1', '10.9.9.9, 10.2.2.2', trusted), '10.9.9.9')
  // Not an address, or no header: the last trusted hop.
  t.is(clientAddressOf('10.0.0.1', '198.51.100.7, bogus', trusted), '10.0.0.1')
  t.is(clientAddressOf('10.0.0.1', 'bogus, 10.2.2.2', trusted), '10.2.2.2')
  t.is(clientAddressOf('10.0.0.1', undefined, trusted), '10.0.0.1')
})

test('server.json trustedProxies: CIDRs, default absent, bad ones refused', (t) => {
  t.deepEqual(
    parseServerConfig('{"trustedProxies":["10.0.0.5","fd00::/8"]}').settings.trustedProxies,
    ['10.0.0.5/32', 'fd00::/8'],
  )
  t.is(parseServerConfig('{}').settings.trustedProxies, undefined)
  const err = t.throws(() => parseServerConfig('{"trustedProxies":["10.0.0.0/33"]}'))
  t.is((err as { code?: string }).code, 'config_invalid')
})
