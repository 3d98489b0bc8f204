/**
 * Passkeys on the phone page in a real browser (headless Chromium through playwright-core)
 * with a CDP virtual authenticator. WebAuthn needs a secure context and a domain as
 * relying-party id, so the page is opened as http://localhost:PORT (the server's publicUrl);
 * http://other.localhost:PORT reaches the same server from another origin.
 *
 * An operator registers a passkey from a CLI-issued one-time link, approves a pending boot on
 * a 390x844 page and the waiting host unlocks; a ceremony from another origin and a passkey
 * of another operator are refused. Screenshots go to test-results/.
 */
import test, { type ExecutionContext } from 'ava'
import { existsSync, mkdirSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import { chromium, type Browser, type Page } from 'playwright-core'
import { openEscrowBlob } from '../../shared/client/host-client.ts'
import { startTestServer, type TestServer } from '../helpers/server.ts'
import {
  addOperator,
  askUnlock,
  asOperator,
  codeNow,
  enrollHost,
  testClock,
  waitForRelease,
  type TestOperator,
} from '../helpers/approval.ts'

const CHROMIUM = '/usr/bin/chromium'

/** In the page: options for bob, but let the authenticator answer with any key (alice's). */
const OTHER_OPERATOR_ATTEMPT = `(async () => {
  const box = document.getElementById('passkey')
  const dec = (s) => Uint8Array.from(atob(s.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((s.length + 3) % 4)), (c) => c.charCodeAt(0))
  const enc = (b) => btoa(String.fromCharCode(...new Uint8Array(b))).replace(/[+]/g, '-').replace(/[/]/g, '_').replace(/=+$/, '')
  const post = (url, body) => fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body) })
  const csrf = box.dataset.csrf
  const o = await (await post(box.dataset.options, { csrf, operator: 'bob' })).json()
  const c = await navigator.credentials.get({ publicKey: { challenge: dec(o.options.challenge), rpId: o.options.rpId, userVerification: 'required' } })
  const r = c.response
  const v = await post(box.dataset.verify, { csrf, credential: { id: c.id, rawId: enc(c.rawId), type: c.type, clientExtensionResults: {},
    response: { clientDataJSON: enc(r.clientDataJSON), authenticatorData: enc(r.authenticatorData), signature: enc(r.signature) } } })
  return { status: v.status, body: await v.json() }
})()`
const RESULTS = fileURLToPath(new URL('../../test-results/', import.meta.url))

if (!existsSync(CHROMIUM)) {
  const why = `${CHROMIUM} is missing (apt-get install chromium)`
  if (process.env['CI']) test('passkey approval in a browser', (t) => t.fail(why))
  else test.skip(`passkey approval in a browser (SKIPPED: ${why})`, () => {})
} else {
  let browser: Browser | undefined
  test.before(async () => {
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-sync'],
    })
  })
  test.after.always(async () => {
    await browser?.close()
  })

  /** A phone-sized page with its own virtual platform authenticator (user verified). */
  async function phone(t: ExecutionContext): Promise<Page> {
    const ctx = await (browser as Browser).newContext({
      viewport: { width: 390, height: 844 },
      deviceScaleFactor: 2,
      isMobile: true,
      hasTouch: true,
    })
    t.teardown(() => ctx.close())
    const page = await ctx.newPage()
    const cdp = await ctx.newCDPSession(page)
    await cdp.send('WebAuthn.enable')
    await cdp.send('WebAuthn.addVirtualAuthenticator', {
      options: {
        protocol: 'ctap2',
        transport: 'internal',
        hasResidentKey: true,
        hasUserVerification: true,
        isUserVerified: true,
      },
    })
    return page
  }

  async function server(t: ExecutionContext) {
    const clock = testClock()
    const srv = await startTestServer(t, {
      now: clock.now,
      settings: { iatSkew: 10_000_000, pollHold: 2 },
    })
    const port = new URL(srv.url).port
    srv.deps.settings.publicUrl = `http://localhost:${port}`
    return { srv, base: `http://localhost:${port}`, other: `http://other.localhost:${port}` }
  }

  async function passkeyLink(srv: TestServer, op: TestOperator): Promise<string> {
    const r = await asOperator(srv, op, 'POST', `/operators/${op.name}/passkey`, {
      code: codeNow(srv, op),
    })
    if (r.status !== 201) throw new Error(JSON.stringify(r.body))
    return r.body.url as string
  }

  /** Open a registration link (optionally on another origin) and press the button. */
  async function register(page: Page, url: string): Promise<string> {
    await page.goto(url)
    await page.click('#passkey-go')
    await page
      .waitForSelector('#passkey[data-result]', { state: 'attached', timeout: 10000 })
      .catch(() => {})
    return (await page.textContent('#passkey-status')) ?? ''
  }

  async function pending(t: ExecutionContext, srv: TestServer, name: string, bootId: string) {
    const host = await enrollHost(t, srv, name, { approval: 'always' })
    const r = await askUnlock(srv.transport, host, bootId)
    if (r.status === 'released') throw new Error('expected 202')
    return { host, id: r.approval.id }
  }

  test('register a passkey from the CLI link, approve on a phone; the host unlocks', async (t) => {
    const { srv, base } = await server(t)
    const alice = await addOperator(t, srv, 'alice')
    const page = await phone(t)
    mkdirSync(RESULTS, { recursive: true })

    const link = await passkeyLink(srv, alice)
    t.regex(link, new RegExp(`^${base}/approve/register/[A-Za-z0-9_-]{43}$`))
    await page.goto(link)
    const h = (await page.context().request.get(link)).headers()
    t.regex(h['content-security-policy'] ?? '', /script-src 'nonce-[A-Za-z0-9_-]+'/)
    t.notRegex(h['content-security-policy'] ?? '', /unsafe-inline|unsafe-eval/)
    await page.screenshot({ path: `${RESULTS}passkey-register.png`, fullPage: true })
    t.regex(await register(page, link), /Passkey registered for alice/)
    // the link works once
    await page.goto(link)
    t.regex((await page.textContent('#notice')) ?? '', /used, has expired/)

    const { host, id } = await pending(t, srv, 'web-pk', 'bootid-pk-1')
    const waiting = waitForRelease(srv.transport, host, 'bootid-pk-1', id)
    await page.goto(`${base}/approve/${id}`)
    t.true(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth))
    await page.screenshot({ path: `${RESULTS}passkey-approval-form.png`, fullPage: true })
    await page.fill('#passkey-operator', 'alice')
    await Promise.all([page.waitForNavigation(), page.click('#passkey-go')])
    t.regex((await page.textContent('#state')) ?? '', /Approved by alice/)
    await page.screenshot({ path: `${RESULTS}passkey-approval.png`, fullPage: true })

    const released = await waiting
    if (released.status !== 'released') return t.fail('expected release')
    t.deepEqual(await openEscrowBlob(released.volumes[0]!.blob, host.keys.sealing), host.vk)
    const entries = (await srv.admin('GET', '/audit')).body.entries as {
      actor: string
      action: string
    }[]
    t.truthy(entries.find((e) => e.action === 'passkey.use' && e.actor === 'operator:alice'))
    t.truthy(entries.find((e) => e.action === 'approval.approve' && e.actor === 'operator:alice'))
  })

  test('another origin and another operator are refused', async (t) => {
    const { srv, base, other } = await server(t)
    const alice = await addOperator(t, srv, 'alice')
    await addOperator(t, srv, 'bob')
    const page = await phone(t)
    mkdirSync(RESULTS, { recursive: true })

    // registering from another origin fails (the browser refuses the rp id, or the server the
    // origin), and the link is not spent by it
    const link = await passkeyLink(srv, alice)
    const onOther = link.replace(base, other)
    t.regex(await register(page, onOther), /not accepted|SecurityError/)
    await page.screenshot({ path: `${RESULTS}passkey-other-origin.png`, fullPage: true })
    t.regex(await register(page, link), /Passkey registered for alice/)

    const { id } = await pending(t, srv, 'web-pk2', 'bootid-pk-2')
    // approving from another origin with alice's passkey is refused by the server
    await page.goto(`${other}/approve/${id}`)
    await page.click('#passkey-go')
    await page.waitForSelector('#passkey[data-result]', { state: 'attached' })
    t.regex((await page.textContent('#passkey-status')) ?? '', /not accepted|SecurityError/)
    t.is((await srv.admin('GET', `/approvals/${id}`)).body.state, 'pending')

    // alice's passkey does not answer a ceremony started for bob: the server refuses it even
    // when a script strips the allow list and lets the authenticator pick alice's key
    await page.goto(`${base}/approve/${id}`)
    // (a string: the test runner's transpiler would add helpers the page does not have)
    const res = (await page.evaluate(OTHER_OPERATOR_ATTEMPT)) as {
      status: number
      body: { message: string }
    }
    t.is(res.status, 403)
    t.regex(res.body.message, /another operator/)
    t.is((await srv.admin('GET', `/approvals/${id}`)).body.state, 'pending')
  })
}
