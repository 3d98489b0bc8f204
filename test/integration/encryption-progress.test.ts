/**
 * Encryption progress over real HTTP: a host's signed reports (POST /v1/encryption) become the
 * latest state per volume in `unlockd host show` / `unlockd hosts` (the real CLI), the
 * `unlockd_encryption_progress_ratio` gauge, the audit log, and webhook announcements of start,
 * completion and failure (failure urgent; plain progress is not announced). A replayed report
 * is refused.
 */
import test from 'ava'
import { createServer, type IncomingHttpHeaders } from 'node:http'
import type { AddressInfo } from 'node:net'
import { fetchNonce, reportEncryption } from '../../shared/client/host-client.ts'
import { signHostRequest } from '../../shared/crypto/jws.ts'
import { PROTOCOL_VERSION } from '../../shared/protocol/messages.ts'
import type { EncryptionPayload } from '../../shared/protocol/encryption.ts'
import { hashToken } from '../../server/escrow/secrets.ts'
import { startTestServer } from '../helpers/server.ts'
import { enrollHost } from '../helpers/approval.ts'
import { runCli } from '../helpers/cli.ts'

const GiB = 1024 ** 3
const SCRAPE = 'scrape_' + 'e'.repeat(40)

async function receiver(t: { teardown(fn: () => Promise<void>): void }) {
  const received: { headers: IncomingHttpHeaders; body: any }[] = []
  const srv = createServer((req, res) => {
    let body = ''
    req.on('data', (d: Buffer) => (body += d.toString()))
    req.on('end', () => {
      // Audit chain heads go to the same webhook; this test is about encryption events.
      if (req.headers['x-unlockd-event'] !== 'audit.head')
        received.push({ headers: req.headers, body: JSON.parse(body) })
      res.writeHead(200).end()
    })
  })
  await new Promise<void>((resolve) => srv.listen(0, '127.0.0.1', resolve))
  t.teardown(async () => {
    srv.closeAllConnections()
    await new Promise<void>((resolve) => srv.close(() => resolve()))
  })
  return { url: `http://127.0.0.1:${(srv.address() as AddressInfo).port}/topic`, received }
}

async function until(cond: () => boolean, what: string, maxMs = 30_000): Promise<void> {
  for (let waited = 0; !cond(); waited += 50) {
    if (waited > maxMs) throw new Error(`timed out waiting for ${what}`)
    await new Promise((r) => setTimeout(r, 50))
  }
}

type Report = Omit<EncryptionPayload, 'v' | 'host' | 'nonce' | 'iat'>
const base: Report = {
  volume: 'data',
  kind: 'luks',
  event: 'started',
  phase: 'encrypting',
  doneBytes: 0,
  totalBytes: Math.round(2.8 * GiB),
  bytesPerSecond: null,
  etaSeconds: null,
  message: null,
}

test('signed reports show in host show / hosts, the gauge and the webhook', async (t) => {
  const hook = await receiver(t)
  const srv = await startTestServer(t, {
    settings: {
      webhook: { url: hook.url, secret: null },
      metricsTokenHash: await hashToken(SCRAPE),
      hostRateLimit: null,
    },
  })
  const h = await enrollHost(t, srv, 'web-7')
  const send = (r: Partial<Report>): Promise<void> =>
    reportEncryption(srv.transport, { keys: h.keys, hostId: h.hostId, report: { ...base, ...r } })
  const env = { UNLOCKD_URL: srv.url, UNLOCKD_TOKEN: srv.token }

  await send({ event: 'started' })
  await until(() => hook.received.length >= 1, 'the start announcement')
  await send({
    event: 'progress',
    doneBytes: Math.round(1.2 * GiB),
    bytesPerSecond: 4 * 1024 * 1024,
    etaSeconds: 290,
  })

  const show = await runCli(['host', 'show', 'web-7', '--json'], env)
  t.is(show.code, 0, show.stderr)
  t.like(show.json.encryption[0], {
    volume: 'data',
    kind: 'luks',
    state: 'running',
    doneBytes: Math.round(1.2 * GiB),
    totalBytes: Math.round(2.8 * GiB),
    etaSeconds: 290,
  })
  const text = await runCli(['host', 'show', 'web-7'], env)
  t.regex(text.stdout, /data: encrypting data 42% \(1\.2 GiB of 2\.8 GiB, ETA 5m\)/)
  const list = await runCli(['hosts'], env)
  t.regex(list.stdout, /ENCRYPTION/)
  t.regex(list.stdout, /web-7 .*data: encrypting data 42%/)

  const metrics = await (
    await fetch(`${srv.url}/metrics`, { headers: { Authorization: `Bearer ${SCRAPE}` } })
  ).text()
  const m = /unlockd_encryption_progress_ratio\{host="web-7",volume="data"\} ([\d.]+)/.exec(metrics)
  t.truthy(m, metrics)
  t.true(Math.abs(Number(m?.[1]) - 1.2 / 2.8) < 0.001)

  await send({ event: 'done', doneBytes: Math.round(2.8 * GiB), etaSeconds: 0 })
  await send({ volume: 'srv', kind: 'fscrypt', event: 'started', phase: 'copying', totalBytes: 0 })
  await send({
    volume: 'srv',
    kind: 'fscrypt',
    event: 'failed',
    phase: 'copying',
    totalBytes: 0,
    message: 'copying /srv failed: No space left on device',
  })
  await until(() => hook.received.length >= 4, 'four announcements')
  const events = hook.received.map((r) => r.headers['x-unlockd-event'])
  t.deepEqual(
    [...events].sort(),
    ['encryption.done', 'encryption.failed', 'encryption.started', 'encryption.started'],
    'start, done and failure are announced; progress is not',
  )
  const failed = hook.received.find((r) => r.headers['x-unlockd-event'] === 'encryption.failed')
  t.is(failed?.headers['priority'], 'urgent')
  t.regex(failed?.body.message, /No space left on device/)
  t.is(failed?.body.host, 'web-7')
  const done = hook.received.find((r) => r.headers['x-unlockd-event'] === 'encryption.done')
  t.not(done?.headers['priority'], 'urgent')
  t.is(done?.headers['title'], 'unlockd: volume data on web-7 is encrypted')

  const after = await srv.admin('GET', '/hosts/web-7')
  const byVol = Object.fromEntries(
    (after.body.encryption as { volume: string; state: string }[]).map((e) => [e.volume, e.state]),
  )
  t.deepEqual(byVol, { data: 'done', srv: 'failed' })
  const list2 = await runCli(['hosts'], env)
  t.regex(list2.stdout, /srv: encryption failed: copying \/srv failed/)
  t.notRegex(list2.stdout, /data: encrypted/, 'the list shows only unfinished conversions')

  const audit = await srv.admin('GET', '/audit?limit=500')
  const actions = (audit.body.entries as { action: string }[]).map((e) => e.action)
  t.is(actions.filter((a) => a === 'encryption.started').length, 2)
  t.true(actions.includes('encryption.done'))
  t.true(actions.includes('encryption.failed'))
  t.false(actions.includes('encryption.progress'))
})

test('a replayed report is refused; a report must name its signer', async (t) => {
  const srv = await startTestServer(t, { settings: { hostRateLimit: null } })
  const h = await enrollHost(t, srv, 'web-8')
  const other = await enrollHost(t, srv, 'web-9')
  const payload = {
    v: PROTOCOL_VERSION,
    host: h.hostId,
    nonce: await fetchNonce(srv.transport),
    iat: Math.floor(Date.now() / 1000),
    ...base,
  }
  const jws = await signHostRequest('encryption', payload, h.keys.signing, h.hostId)
  const post = (body: unknown) =>
    fetch(`${srv.url}/v1/encryption`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    })
  t.is((await post({ jws })).status, 200)
  const again = await post({ jws })
  t.is(again.status, 403, await again.text())
  // Signed by web-9 but naming web-8: refused.
  const forged = await signHostRequest(
    'encryption',
    { ...payload, nonce: await fetchNonce(srv.transport) },
    other.keys.signing,
    other.hostId,
  )
  const r = await post({ jws: forged })
  t.true(r.status >= 400 && r.status < 500)
  // An unlock signature is not an encryption report.
  const wrongPurpose = await signHostRequest(
    'unlock',
    { ...payload, nonce: await fetchNonce(srv.transport) },
    h.keys.signing,
    h.hostId,
  )
  const w = await post({ jws: wrongPurpose })
  t.true(w.status >= 400 && w.status < 500)
  const shown = await srv.admin('GET', '/hosts/web-9')
  t.deepEqual(shown.body.encryption, [], 'nothing recorded for the forger')
})
