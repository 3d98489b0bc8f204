/**
 * The Tang endpoints in the shapes tangd's clients expect: the advertisement in the flattened
 * JWS serialization tangd sends for one signature (the general one on request or with several
 * signatures), and a clevis URL given with a trailing slash, which makes clevis ask for
 * `/tang/NAME//adv` and `/tang/NAME//rec/KID`.
 */
import test, { type ExecutionContext } from 'ava'
import { jwkThumbprint, verifyAdvertisement } from '../../shared/tang/adv.ts'
import { findBin, tool } from '../helpers/root.ts'
import { startTestServer } from '../helpers/server.ts'

const missing = ['clevis', 'jose', 'curl'].filter((b) => findBin(b) === undefined)
const clevisTest =
  missing.length === 0 || (process.env['CI'] ?? '') !== '' ? test.serial : test.skip
if (missing.length > 0 && (process.env['CI'] ?? '') === '')
  console.warn(`\n!! SKIPPING clevis trailing-slash test: needs ${missing.join(', ')}\n`)

async function tangHost(t: ExecutionContext, name: string) {
  const srv = await startTestServer(t)
  const res = await srv.admin('POST', '/hosts', { name, tang: true }, { totp: true })
  t.is(res.status, 201, JSON.stringify(res.body))
  return { srv, url: `${srv.url}/tang/${name}` }
}

test('the default advertisement is the flattened JWS, ?form=general the general one; both verify', async (t) => {
  const { url } = await tangHost(t, 'nas-flat')
  const flat = (await (await fetch(`${url}/adv`)).json()) as Record<string, unknown>
  t.deepEqual(Object.keys(flat).sort(), ['payload', 'protected', 'signature'])
  const general = (await (await fetch(`${url}/adv?form=general`)).json()) as Record<string, unknown>
  t.deepEqual(Object.keys(general).sort(), ['payload', 'signatures'])
  t.is(general['payload'], flat['payload'])
  const a = await verifyAdvertisement(flat)
  const b = await verifyAdvertisement(general)
  t.deepEqual(a.exchangeKeys, b.exchangeKeys)
  t.is(a.exchangeKeys.length, 1)

  // Asked for by its signing key's thumbprint, the same key signs once: flattened again.
  const signer = a.signingKeys[0]
  t.truthy(signer)
  const thp = await jwkThumbprint(signer!, 'S256')
  const byThp = (await (await fetch(`${url}/adv/${thp}`)).json()) as Record<string, unknown>
  t.true('signature' in byThp && !('signatures' in byThp))
  await t.notThrowsAsync(verifyAdvertisement(byThp))
})

test('runs of slashes in a /tang/ path are one slash; elsewhere they are not rewritten', async (t) => {
  const { srv, url } = await tangHost(t, 'nas-slash')
  const res = await fetch(`${url}//adv`)
  t.is(res.status, 200)
  t.is(res.headers.get('content-type'), 'application/jose+json')
  t.is((await fetch(`${url}//adv/`)).status, 200)
  t.is((await fetch(`${srv.url}//healthz`)).status, 404)
})

clevisTest('stock clevis with a trailing-slash URL encrypts and decrypts', async (t) => {
  t.deepEqual(missing, [], 'clevis, jose and curl are installed (apt-get install clevis jose curl)')
  const { url } = await tangHost(t, 'nas-clevis')
  const enc = await tool(
    'clevis',
    ['encrypt', 'tang', JSON.stringify({ url: `${url}/` }), '-y'],
    Buffer.from('trailing slash'),
  )
  t.is(enc.code, 0, enc.stderr)
  const dec = await tool('clevis', ['decrypt'], Buffer.from(enc.stdout))
  t.is(dec.code, 0, dec.stderr)
  t.is(dec.stdout, 'trailing slash')
})
