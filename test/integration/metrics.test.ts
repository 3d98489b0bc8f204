/**
 * GET /metrics over real HTTP: off unless a scrape token is configured, refused without it or
 * with an operator token, and, with it, Prometheus text that Prometheus's own Python parser
 * (Debian's python3-prometheus-client) reads, with counters that match what happened.
 */
import test from 'ava'
import { chmod, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { hashToken } from '../../server/escrow/secrets.ts'
import { closeDeps, openDeps } from '../../server/setup.ts'
import { memoryLogger } from '../../server/log.ts'
import { askUnlock, enrollHost } from '../helpers/approval.ts'
import { tool } from '../helpers/root.ts'
import { startTestServer, TEST_PASSPHRASE } from '../helpers/server.ts'

const SCRAPE = 'scrape_' + 'x'.repeat(40)

interface Sample {
  name: string
  labels: Record<string, string>
  value: number
}

/** Parse the exposition text with prometheus_client.parser; throws if it does not parse. */
async function parseProm(text: string): Promise<Sample[]> {
  const py = [
    'import json, sys',
    'from prometheus_client.parser import text_string_to_metric_families as parse',
    'out = [dict(name=s.name, labels=s.labels, value=s.value)',
    '       for f in parse(sys.stdin.read()) for s in f.samples]',
    'print(json.dumps(out))',
  ].join('\n')
  const r = await tool('/usr/bin/python3', ['-c', py], Buffer.from(text))
  if (r.code !== 0) throw new Error(`prometheus parser refused the text: ${r.stderr}`)
  return JSON.parse(r.stdout) as Sample[]
}

function value(samples: Sample[], name: string, labels: Record<string, string> = {}): number {
  const s = samples.filter(
    (x) => x.name === name && Object.entries(labels).every(([k, v]) => x.labels[k] === v),
  )
  return s.reduce((a, x) => a + x.value, 0)
}

test('without a configured scrape token /metrics does not exist', async (t) => {
  const srv = await startTestServer(t)
  const res = await fetch(`${srv.url}/metrics`, { headers: { Authorization: `Bearer ${SCRAPE}` } })
  t.is(res.status, 404)
})

test('the scrape token is required; an operator token is not one; counters match', async (t) => {
  const srv = await startTestServer(t, {
    settings: { metricsTokenHash: await hashToken(SCRAPE), hostRateLimit: null },
  })
  const scrape = (token?: string) =>
    fetch(`${srv.url}/metrics`, token ? { headers: { Authorization: `Bearer ${token}` } } : {})
  t.is((await scrape()).status, 401)
  t.is((await scrape(srv.token)).status, 401, 'an operator token does not read metrics')
  t.is((await scrape('scrape_' + 'y'.repeat(40))).status, 401)

  const a = await enrollHost(t, srv, 'web-1')
  const b = await enrollHost(t, srv, 'web-2')
  for (let i = 0; i < 3; i++)
    t.is((await askUnlock(srv.transport, a, 'boot-aaaa-1')).status, 'released')
  t.is((await askUnlock(srv.transport, b, 'boot-bbbb-1')).status, 'released')
  t.is((await srv.admin('POST', '/hosts/web-2/suspend', { reason: 'test' })).status, 200)
  await t.throwsAsync(askUnlock(srv.transport, b, 'boot-bbbb-1'), { message: /suspended/ })

  const res = await scrape(SCRAPE)
  t.is(res.status, 200)
  t.regex(res.headers.get('content-type') ?? '', /^text\/plain/)
  const samples = await parseProm(await res.text())
  t.is(value(samples, 'unlockd_releases_total', { route: 'unlock' }), 4)
  t.is(value(samples, 'unlockd_denials_total', { route: 'unlock', code: 'host_suspended' }), 1)
  t.is(value(samples, 'unlockd_unlock_duration_seconds_count', { route: 'unlock' }), 5)
  t.is(value(samples, 'unlockd_hosts', { state: 'active' }), 1)
  t.is(value(samples, 'unlockd_hosts', { state: 'suspended' }), 1)
  t.is(value(samples, 'unlockd_approvals_pending'), 0)
  t.true(value(samples, 'unlockd_kek_age_seconds') >= 0)
})

test('metrics.tokenFile: read at start, refused when others can read it or it is malformed', async (t) => {
  const srv = await startTestServer(t)
  await srv.close()
  const tokenFile = join(srv.dataDir, 'metrics.token')
  await writeFile(join(srv.dataDir, 'server.json'), JSON.stringify({ metrics: { tokenFile } }))
  await writeFile(tokenFile, `${SCRAPE}\n`, { mode: 0o600 })
  const deps = await openDeps(srv.dataDir, TEST_PASSPHRASE, memoryLogger())
  t.is(deps.settings.metricsTokenHash, await hashToken(SCRAPE))
  await closeDeps(deps)
  await chmod(tokenFile, 0o644)
  await t.throwsAsync(openDeps(srv.dataDir, TEST_PASSPHRASE, memoryLogger()), {
    message: /chmod 600/,
  })
  await chmod(tokenFile, 0o600)
  await writeFile(tokenFile, 'short')
  await t.throwsAsync(openDeps(srv.dataDir, TEST_PASSPHRASE, memoryLogger()), {
    message: /32-128 characters/,
  })
})
