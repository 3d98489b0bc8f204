/**
 * The phone approval page in a real browser (headless Chromium through playwright-core): a
 * 390x844 viewport opens /approve/ID, an operator enters name and TOTP code, the page shows the
 * approved state and the waiting host unlocks. Also checks the security headers (CSP without
 * script, no framing, no caching), the SameSite=Strict CSRF cookie, and that posts without
 * the CSRF token, with a forged one, or from another site are refused.
 *
 * Skips loudly when /usr/bin/chromium is missing; fails instead when CI is set.
 */
import test from 'ava'
import { existsSync, mkdirSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { chromium, type Browser } from 'playwright-core'
import { openEscrowBlob } from '../../shared/client/host-client.ts'
import { startTestServer, type TestServer } from '../helpers/server.ts'
import {
  addOperator,
  askUnlock,
  codeNow,
  enrollHost,
  testClock,
  waitForRelease,
  wrongCode,
} from '../helpers/approval.ts'

const CHROMIUM = '/usr/bin/chromium'
const RESULTS = fileURLToPath(new URL('../../test-results/', import.meta.url))
const missing = !existsSync(CHROMIUM)

if (missing) {
  const why = `${CHROMIUM} is missing (apt-get install chromium)`
  if (process.env['CI']) {
    test('approval page in a browser', (t) => t.fail(`${why}: CI must run the browser test`))
  } else {
    console.warn(`\n*** SKIPPING the approval page browser test: ${why} ***\n`)
    test.skip(`approval page in a browser (SKIPPED: ${why})`, () => {})
  }
} else {
  let browser: Browser | undefined
  test.before(async () => {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    })
  })
  test.after.always(async () => {
    await browser?.close()
  })

  async function phone(t: { teardown(fn: () => Promise<void>): void }) {
    const ctx = await (browser as Browser).newContext({
      viewport: { width: 390, height: 844 },
      deviceScaleFactor: 2,
      isMobile: true,
      hasTouch: true,
    })
    t.teardown(() => ctx.close())
    return ctx.newPage()
  }

  async function pending(
    t: Parameters<typeof startTestServer>[0],
    srv: TestServer,
    name: string,
    bootId: string,
  ) {
    const host = await enrollHost(t, srv, name, { approval: 'always' })
    const r = await askUnlock(srv.transport, host, bootId)
    if (r.status === 'released') throw new Error('expected 202')
    return { host, id: r.approval.id }
  }

  test('an operator approves on a phone-sized page; the host unlocks', async (t) => {
    const clock = testClock()
    const srv = await startTestServer(t, {
      now: clock.now,
      settings: { iatSkew: 10_000_000, pollHold: 2 },
    })
    const alice = await addOperator(t, srv, 'alice')
    const { host, id } = await pending(t, srv, 'web-1', 'bootid-page-1')
    const page = await phone(t)
    const consoleErrors: string[] = []
    page.on('console', (m) => {
      if (m.type() === 'error') consoleErrors.push(m.text())
    })

    const res = await page.goto(`${srv.url}/approve/${id}`)
    t.is(res?.status(), 200)
    const h = (await res?.allHeaders()) ?? {}
    t.regex(h['content-security-policy'] ?? '', /default-src 'none'/)
    t.regex(h['content-security-policy'] ?? '', /frame-ancestors 'none'/)
    t.regex(h['content-security-policy'] ?? '', /form-action 'self'/)
    t.notRegex(h['content-security-policy'] ?? '', /script-src|unsafe-inline/)
    t.is(h['x-frame-options'], 'DENY')
    t.is(h['cache-control'], 'no-store')
    t.regex(h['set-cookie'] ?? '', /HttpOnly/i)
    t.regex(h['set-cookie'] ?? '', /SameSite=Strict/i)
    t.false((await page.content()).includes('<script'), 'no script on the page')
    t.is(
      await page.getAttribute('meta[name=viewport]', 'content'),
      'width=device-width, initial-scale=1',
    )

    // the facts an operator decides on
    const facts = await page.textContent('dl')
    for (const s of ['web-1', 'all', '127.0.0.1', 'bootid-page-1', 'approval:always', id])
      t.true(facts?.includes(s), `page shows ${s}`)
    t.regex((await page.textContent('#state')) ?? '', /Waiting for approval \(0 of 1\)/)
    // fits the phone: no horizontal scrolling
    t.true(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth))
    mkdirSync(RESULTS, { recursive: true })
    await page.screenshot({ path: `${RESULTS}approval-page-form.png`, fullPage: true })

    // a wrong code is refused on the page, and the form stays
    await page.fill('#operator', 'alice')
    await page.fill('#token', alice.token)
    await page.fill('#code', wrongCode(alice.secret, clock.now()))
    await Promise.all([page.waitForNavigation(), page.click('button.approve')])
    t.regex(
      (await page.textContent('#notice')) ?? '',
      /Operator name, API token or code is not valid/,
    )
    t.is(await page.inputValue('#operator'), 'alice', 'the operator name is kept')
    // an unknown operator reads the same (no oracle)
    await page.fill('#operator', 'mallory')
    await page.fill('#token', alice.token)
    await page.fill('#code', '123456')
    await Promise.all([page.waitForNavigation(), page.click('button.approve')])
    t.regex(
      (await page.textContent('#notice')) ?? '',
      /Operator name, API token or code is not valid/,
    )

    // the host is waiting while the operator approves
    const waiting = waitForRelease(srv.transport, host, 'bootid-page-1', id)
    await page.fill('#operator', 'alice')
    await page.fill('#token', alice.token)
    await page.fill('#code', codeNow(srv, alice))
    await Promise.all([page.waitForNavigation(), page.click('button.approve')])
    t.regex(
      (await page.textContent('#state')) ?? '',
      /Approved by alice\. web-1 unlocks at its next poll/,
    )
    t.is(await page.$('form'), null, 'no form once decided')
    await page.screenshot({ path: `${RESULTS}approval-page.png`, fullPage: true })
    t.log(`screenshot: ${RESULTS}approval-page.png`)

    const released = await waiting
    if (released.status !== 'released') return t.fail('expected release')
    t.deepEqual(await openEscrowBlob(released.volumes[0]!.blob, host.keys.sealing), host.vk)
    // (the refused codes above log "Failed to load resource: 403", which is expected)
    t.deepEqual(
      consoleErrors.filter((e) => /Content Security Policy|Refused to/i.test(e)),
      [],
      'no CSP violations',
    )
    // audited as coming from the page, with the operator's name
    const entries = (await srv.admin('GET', '/audit')).body.entries as {
      actor: string
      action: string
      detail: Record<string, unknown>
    }[]
    t.truthy(
      entries.find(
        (e) =>
          e.action === 'approval.approve' &&
          e.actor === 'operator:alice' &&
          e.detail['via'] === 'page',
      ),
    )
    t.truthy(entries.find((e) => e.action === 'page.totp_fail' && e.actor === 'operator:alice'))
  })

  test('deny on the page; k=2 shows partial progress', async (t) => {
    const clock = testClock()
    const srv = await startTestServer(t, {
      now: clock.now,
      settings: { iatSkew: 10_000_000, pollHold: 2 },
    })
    const alice = await addOperator(t, srv, 'alice')
    const bob = await addOperator(t, srv, 'bob')
    const k2 = await pending(t, srv, 'vault-1', 'bootid-page-k2')
    t.is((await srv.admin('PATCH', '/hosts/vault-1/policy', { approvers: 2 })).status, 200)
    // the request was opened before the change; a new one carries approvers: 2
    const r = await askUnlock(srv.transport, k2.host, 'bootid-page-k3')
    if (r.status === 'released') return t.fail('expected 202')
    const page = await phone(t)
    await page.goto(`${srv.url}/approve/${r.approval.id}`)
    await page.fill('#operator', 'alice')
    await page.fill('#token', alice.token)
    await page.fill('#code', codeNow(srv, alice))
    await Promise.all([page.waitForNavigation(), page.click('button.approve')])
    t.regex((await page.textContent('#notice')) ?? '', /recorded \(1 of 2\)/)
    t.regex((await page.textContent('#state')) ?? '', /Waiting for approval \(1 of 2\)/)
    await page.fill('#operator', 'bob')
    await page.fill('#token', bob.token)
    await page.fill('#code', codeNow(srv, bob))
    await page.fill('#reason', 'not planned')
    await Promise.all([page.waitForNavigation(), page.click('button.deny')])
    t.regex((await page.textContent('#state')) ?? '', /Denied: not planned/)
    const err = await waitForRelease(srv.transport, k2.host, 'bootid-page-k3', r.approval.id).catch(
      (e: unknown) => e,
    )
    t.regex(String(err), /not planned/)
  })

  test('CSRF: posts without the token, with a forged token, or from another site are refused', async (t) => {
    const clock = testClock()
    const srv = await startTestServer(t, {
      now: clock.now,
      settings: { iatSkew: 10_000_000, pollHold: 2 },
    })
    const alice = await addOperator(t, srv, 'alice')
    const { id } = await pending(t, srv, 'web-9', 'bootid-page-9')
    const url = `${srv.url}/approve/${id}`
    const form = (fields: Record<string, string>) =>
      new URLSearchParams({
        operator: 'alice',
        token: alice.token,
        code: codeNow(srv, alice),
        action: 'approve',
        ...fields,
      }).toString()
    const post = (body: string, headers: Record<string, string> = {}) =>
      fetch(url, {
        method: 'POST',
        redirect: 'manual',
        headers: { 'content-type': 'application/x-www-form-urlencoded', ...headers },
        body,
      })

    // no cookie, no token
    const bare = await post(form({}))
    t.is(bare.status, 403)
    t.regex(await bare.text(), /did not come from this page/)
    t.is(bare.headers.get('x-frame-options'), 'DENY')
    // a real cookie and token from a GET...
    const get = await fetch(url)
    const cookie = (get.headers.get('set-cookie') ?? '').split(';')[0] as string
    const token = /name="csrf" value="([^"]+)"/.exec(await get.text())?.[1] as string
    t.truthy(cookie)
    t.truthy(token)
    // ...but the token left out, or forged
    t.is((await post(form({}), { cookie })).status, 403)
    t.is(
      (
        await post(form({ csrf: token.slice(0, -2) + (token.endsWith('AA') ? 'BB' : 'AA') }), {
          cookie,
        })
      ).status,
      403,
    )
    // a token for another cookie does not transfer
    t.is(
      (await post(form({ csrf: token }), { cookie: 'unlockd_csrf=' + 'A'.repeat(43) })).status,
      403,
    )
    // a cross-site post is refused even with both
    t.is(
      (await post(form({ csrf: token }), { cookie, 'sec-fetch-site': 'cross-site' })).status,
      403,
    )
    // codes are never taken from the URL
    t.is(
      (await fetch(`${url}?operator=alice&code=${codeNow(srv, alice)}&action=approve`)).status,
      200,
    )
    // none of the refused posts decided anything, nor spent alice's code
    t.is((await srv.admin('GET', `/approvals/${id}`)).body.state, 'pending')
    const ok = await post(form({ csrf: token }), { cookie, 'sec-fetch-site': 'same-origin' })
    t.is(ok.status, 200)
    t.regex(await ok.text(), /Approved by alice/)
    // unknown ids are a plain 404 page
    const nf = await fetch(`${srv.url}/approve/ap_${'x'.repeat(22)}`)
    t.is(nf.status, 404)
    t.regex(nf.headers.get('content-security-policy') ?? '', /default-src 'none'/)
  })
}
