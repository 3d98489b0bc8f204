/**
 * A Tang host's approval is bound to the source the operator saw, over real HTTP with two
 * loopback source addresses (127.0.0.1 and 127.0.0.2, both local on Linux): the operator
 * approves the request from .1; a /rec from .2 does not spend it (refused, audited, and it
 * gets a request of its own), and the /rec from .1 then recovers the key, once.
 */
import test from 'ava'
import {
  fetchTangAdvertisement,
  tangDecrypt,
  tangEncrypt,
  type FetchLike,
} from '../../shared/tang/client.ts'
import { fromUtf8 } from '../../shared/crypto/bytes.ts'
import { requestFrom } from '../helpers/net.ts'
import { startTestServer } from '../helpers/server.ts'

/** clevis' two requests (adv, rec) as plain HTTP from `source`. */
const fetchFrom =
  (source: string): FetchLike =>
  async (url, init) => {
    const r = await requestFrom(source, url, {
      method: init.method,
      headers: init.headers,
      ...(init.body === undefined ? {} : { body: init.body }),
    })
    return { ok: r.status >= 200 && r.status < 300, status: r.status, text: async () => r.text }
  }

test('a Tang approval seen for one source is not spent by a /rec from another', async (t) => {
  const srv = await startTestServer(t)
  const add = await srv.admin('POST', '/hosts', { name: 'vault-1', tang: true }, { totp: true })
  t.is(add.status, 201, JSON.stringify(add.body))
  const url = `${srv.url}${add.body.path as string}`
  const { jws } = await fetchTangAdvertisement(url, fetchFrom('127.0.0.1'))
  const jwe = await tangEncrypt('bound to a source', JSON.parse(jws) as unknown, url)
  t.is((await srv.admin('PATCH', '/hosts/vault-1/policy', { approval: 'always' })).status, 200)

  const here = fetchFrom('127.0.0.1')
  const there = fetchFrom('127.0.0.2')
  await t.throwsAsync(tangDecrypt(jwe, here), undefined, 'the first /rec opens a request')
  const pending = (await srv.admin('GET', '/approvals')).body.approvals as {
    id: string
    source: string
  }[]
  t.is(pending.length, 1)
  t.is(pending[0]?.source, '127.0.0.1', 'the approver is shown the requesting source')
  const ok = await srv.admin('POST', `/approvals/${pending[0]?.id ?? ''}/approve`, {
    code: await srv.adminCode(),
  })
  t.is(ok.status, 200, JSON.stringify(ok.body))

  // Another source does not spend it: refused, and the approval is still there afterwards.
  await t.throwsAsync(tangDecrypt(jwe, there), undefined, 'a /rec from .2 is refused')
  const all = (await srv.admin('GET', '/approvals?all=1')).body.approvals as {
    id: string
    source: string
    state: string
  }[]
  t.is(all.find((a) => a.id === pending[0]?.id)?.state, 'approved', 'not spent by .2')
  const theirs = all.filter((a) => a.source === '127.0.0.2')
  t.deepEqual(
    theirs.map((a) => a.state),
    ['pending'],
    '.2 waits for an approval of its own',
  )
  const audit = (await srv.admin('GET', '/audit?limit=10000')).body.entries as {
    action: string
    detail: Record<string, unknown>
  }[]
  t.true(
    audit.some(
      (e) =>
        e.action === 'approval.source_mismatch' &&
        e.detail['source'] === '127.0.0.2' &&
        e.detail['approvedSource'] === '127.0.0.1',
    ),
  )
  t.false(
    audit.some((e) => e.action === 'unlock.release'),
    'nothing was released yet',
  )

  // The source the operator saw recovers the key, once.
  t.is(fromUtf8(await tangDecrypt(jwe, here)), 'bound to a source')
  await t.throwsAsync(tangDecrypt(jwe, here), undefined, 'the approval was spent')
  await t.throwsAsync(tangDecrypt(jwe, there), undefined, '.2 is still waiting')
})
