/**
 * The phone page cannot be used to lock operators out, nor to tell operator names apart:
 * - 50 failed page attempts (wrong tokens, unknown names, wrong codes after a valid token)
 *   leave the operator's API approve and shred with a correct code working;
 * - a name plus a correct code, without the API token, is refused and spends nothing;
 * - a known and an unknown name with a wrong token get byte-identical answers;
 * - page failures back off exponentially per source, and the delay does not refill.
 */
import test from 'ava'
import { startTestServer, type TestServer } from '../helpers/server.ts'
import {
  addOperator,
  askUnlock,
  asOperator,
  codeNow,
  enrollHost,
  testClock,
  wrongCode,
  type TestOperator,
} from '../helpers/approval.ts'
import { PAGE_FREE_FAILURES, pageDelay } from '../../server/approvals/page-auth.ts'

/** A page session: the CSRF cookie and form token from a GET, then form posts. */
async function pageSession(srv: TestServer, id: string) {
  const url = `${srv.url}/approve/${id}`
  const get = await fetch(url)
  const cookie = (get.headers.get('set-cookie') ?? '').split(';')[0] as string
  const csrf = /name="csrf" value="([^"]+)"/.exec(await get.text())?.[1] as string
  return async (fields: Record<string, string>) => {
    const r = await fetch(url, {
      method: 'POST',
      headers: {
        'content-type': 'application/x-www-form-urlencoded',
        'sec-fetch-site': 'same-origin',
        cookie,
      },
      body: new URLSearchParams({ csrf, action: 'approve', ...fields }).toString(),
    })
    return { status: r.status, text: await r.text() }
  }
}

async function setup(t: Parameters<typeof startTestServer>[0]) {
  const clock = testClock()
  const srv = await startTestServer(t, {
    now: clock.now,
    settings: { iatSkew: 10_000_000, pollHold: 2, approvalTtl: 30 * 86400 },
  })
  const alice = await addOperator(t, srv, 'alice')
  const host = await enrollHost(t, srv, 'web-lock', { approval: 'always' })
  const r = await askUnlock(srv.transport, host, 'bootid-lock-1')
  if (r.status === 'released') throw new Error('expected 202')
  return { clock, srv, alice, host, id: r.approval.id }
}

const notice = (html: string): string => /id="notice">([^<]*)</.exec(html)?.[1] ?? ''

test('50 failed page attempts do not stop the operator approving or shredding through the API', async (t) => {
  const { clock, srv, alice, id } = await setup(t)
  const post = await pageSession(srv, id)
  const other: TestOperator = { name: 'alice', token: 'uo_' + 'A'.repeat(43), secret: '' }
  for (let i = 0; i < 50; i++) {
    // each attempt is checked for real: wait out the page's backoff (test clock) and stay
    // under the page's per-address request rate (5/s, wall clock)
    clock.advance(3601)
    await new Promise((r) => setTimeout(r, 250))
    const kind = i % 3
    const r = await post({
      operator: kind === 1 ? `nobody${i}` : 'alice',
      token: kind === 2 ? alice.token : other.token,
      code: wrongCode(alice.secret, clock.now()),
    })
    t.is(r.status, 401, `attempt ${i}: ${notice(r.text)}`)
    t.regex(notice(r.text), /Operator name, API token or code is not valid/)
  }
  // the CLI's lockout saw none of it (its window is shorter than this test's clock travel,
  // so look at its counter too)
  const cliFailures = await srv.deps.store.tx(async (tx) => {
    const op = await tx.getOperatorByName('alice')
    return op ? tx.countTotpFailures(op.id, 0) : -1
  })
  t.is(cliFailures, 0)
  const approve = await asOperator(srv, alice, 'POST', `/approvals/${id}/approve`, {
    code: codeNow(srv, alice),
  })
  t.is(approve.status, 200, JSON.stringify(approve.body))
  t.is(approve.body.state, 'approved')
  clock.advance(30)
  const shred = await asOperator(srv, alice, 'POST', '/shred', {
    host: 'web-lock',
    code: codeNow(srv, alice),
  })
  t.true(shred.status >= 200 && shred.status < 300, JSON.stringify(shred.body))
})

test('a name and a correct code without the API token are refused and spend nothing', async (t) => {
  const { srv, alice, id } = await setup(t)
  const post = await pageSession(srv, id)
  const code = codeNow(srv, alice)
  const r = await post({ operator: 'alice', code })
  t.is(r.status, 400)
  t.regex(notice(r.text), /API token/)
  const wrongToken = await post({ operator: 'alice', token: 'uo_' + 'B'.repeat(43), code })
  t.is(wrongToken.status, 401)
  t.is((await srv.admin('GET', `/approvals/${id}`)).body.state, 'pending')
  // the code was not spent by the refused posts: the API still takes it
  const ok = await asOperator(srv, alice, 'POST', `/approvals/${id}/approve`, { code })
  t.is(ok.status, 200, JSON.stringify(ok.body))
})

test('known and unknown names answer the same; failures back off per source without refilling', async (t) => {
  const { clock, srv, alice, id } = await setup(t)
  const post = await pageSession(srv, id)
  const bad = 'uo_' + 'C'.repeat(43)
  const strip = (s: string) =>
    s.replace(/name="csrf" value="[^"]+"/, '').replace(/\d{4}-\d\d-\d\d [^<]*/g, '')
  const known = await post({ operator: 'alice', token: bad, code: '123456' })
  const unknown = await post({ operator: 'alice', token: bad, code: '123456' })
  const made = await post({ operator: 'zed', token: bad, code: '123456' })
  t.is(known.status, made.status)
  t.is(notice(known.text), notice(made.text))
  // the pages differ only in the name echoed back into the form
  t.is(strip(known.text), strip(unknown.text))
  t.is(strip(known.text).replace(/value="alice"/, ''), strip(made.text).replace(/value="zed"/, ''))

  // past the free failures, the source must wait, and the wait doubles; a wait does not
  // reset the count
  for (let i = 3; i < PAGE_FREE_FAILURES; i++)
    await post({ operator: 'zed', token: bad, code: '123456' })
  const blocked = await post({ operator: 'alice', token: alice.token, code: codeNow(srv, alice) })
  t.is(blocked.status, 403)
  t.regex(notice(blocked.text), /wait \d+ s/)
  clock.advance(pageDelay(PAGE_FREE_FAILURES))
  await post({ operator: 'zed', token: bad, code: '123456' })
  clock.advance(pageDelay(PAGE_FREE_FAILURES))
  const again = await post({ operator: 'alice', token: alice.token, code: codeNow(srv, alice) })
  t.is(again.status, 403, 'the delay grew: the earlier wait is not enough any more')
  t.true(pageDelay(PAGE_FREE_FAILURES + 1) > pageDelay(PAGE_FREE_FAILURES))
  clock.advance(pageDelay(PAGE_FREE_FAILURES + 1))
  const ok = await post({ operator: 'alice', token: alice.token, code: codeNow(srv, alice) })
  t.is(ok.status, 200, notice(ok.text))
})
