/**
 * The phone page for one approval request (`/approve/ID`) and the passkey registration page
 * (`/approve/register/TOKEN`): plain HTML, one stylesheet and one small script for the
 * WebAuthn calls. What keeps it safe:
 * - Authentication is the operator's passkey (approval-page-bound challenge, see
 *   passkeys.ts), or an API-token login followed by a TOTP code (page-auth.ts: the page's own
 *   failure counters, never the CLI's). Secrets travel only in POST bodies, never in URLs.
 * - CSRF: a random value in a SameSite=Strict, HttpOnly cookie, and in the form an HMAC of
 *   (approval id, that value) under a key derived from the server KEK: a forged cross-site POST
 *   has neither the cookie nor a token it could compute. `Sec-Fetch-Site` is checked as well.
 * - A strict CSP (only the one script, by a fresh nonce per response; the stylesheet by its
 *   hash; fetches to this origin only), frame-ancestors
 *   'none' with X-Frame-Options DENY against clickjacking, and no caching.
 */
import { createHash, createHmac } from 'node:crypto'
import { b64uEncode, randomBytes, timingSafeEqual, utf8 } from '../../shared/crypto/bytes.ts'
import type { ApprovalView } from '../../shared/protocol/messages.ts'
import { formatDuration } from '../../shared/util/duration.ts'
import type { Keystore } from '../keys/keystore.ts'

const STYLE = `
*{box-sizing:border-box}
body{margin:0;font:16px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;background:#f3f4f6;color:#111827}
main{max-width:30rem;margin:0 auto;padding:1rem}
h1{font-size:1.35rem;margin:.25rem 0 .75rem}
.card{background:#fff;border-radius:12px;padding:1rem;box-shadow:0 1px 3px rgba(0,0,0,.12);margin-bottom:1rem}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.35rem .75rem;margin:0}
dt{color:#6b7280}
dd{margin:0;overflow-wrap:anywhere}
code{font:.9em ui-monospace,SFMono-Regular,Menlo,monospace}
.banner{border-radius:10px;padding:.75rem 1rem;margin-bottom:1rem;font-weight:600}
.pending{background:#fef3c7;color:#92400e}
.approved,.used{background:#d1fae5;color:#065f46}
.denied,.expired,.error{background:#fee2e2;color:#991b1b}
label{display:block;font-weight:600;margin:.75rem 0 .25rem}
input{width:100%;font-size:1.1rem;padding:.7rem;border:1px solid #d1d5db;border-radius:8px;background:#fff}
input#code{letter-spacing:.3em;font-variant-numeric:tabular-nums}
.actions{display:flex;gap:.75rem;margin-top:1rem}
button{flex:1;font-size:1.1rem;font-weight:600;padding:.85rem;border:0;border-radius:8px;color:#fff}
button.approve{background:#047857}
button.deny{background:#b91c1c}
button.passkey{background:#1d4ed8;width:100%}
.hint{color:#6b7280;font-size:.85rem;margin:.5rem 0 0}
`

const STYLE_HASH = `'sha256-${createHash('sha256').update(STYLE).digest('base64')}'`

/** The page's own CSP: no script at all, the one inline stylesheet by hash, forms to self only. */
export const PAGE_CSP = `default-src 'none'; style-src ${STYLE_HASH}; form-action 'self'; frame-ancestors 'none'; base-uri 'none'`

/** The CSP of a page that carries the passkey script: that script by nonce, fetches to self. */
export function pageCspWithScript(nonce: string): string {
  return `default-src 'none'; style-src ${STYLE_HASH}; script-src 'nonce-${nonce}'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'`
}

export function newNonce(): string {
  return b64uEncode(randomBytes(18))
}

/**
 * The WebAuthn glue, the same on both pages: fetch options as JSON, convert the base64url
 * fields, call navigator.credentials.create/get, send the result back, reload on success.
 * Configuration comes from data attributes on #passkey.
 */
const SCRIPT = `(() => {
const box = document.getElementById('passkey')
if (!box) return
const say = (t, result) => { document.getElementById('passkey-status').textContent = t; if (result) box.dataset.result = result }
if (!window.PublicKeyCredential) { say('This browser has no passkey support; use the form below.'); return }
const dec = (s) => Uint8Array.from(atob(s.replace(/-/g, '+').replace(/_/g, '/') + '==='.slice((s.length + 3) % 4)), (c) => c.charCodeAt(0))
const enc = (b) => btoa(String.fromCharCode(...new Uint8Array(b))).replace(/\\+/g, '-').replace(/\\//g, '_').replace(/=+$/, '')
const creds = (l) => (l || []).map((c) => ({ type: 'public-key', id: dec(c.id), transports: c.transports }))
const post = async (url, body) => {
  const r = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify(body), credentials: 'same-origin' })
  let j = {}
  try { j = await r.json() } catch { j = { message: 'The server did not answer.' } }
  return { ok: r.ok, j }
}
document.getElementById('passkey-go').addEventListener('click', async () => {
  const base = { csrf: box.dataset.csrf || '' }
  const nameInput = document.getElementById('passkey-operator')
  if (nameInput && nameInput.value.trim()) base.operator = nameInput.value.trim().toLowerCase()
  say('Asking the server…')
  const o = await post(box.dataset.options, base)
  if (!o.ok) return say(o.j.message || 'Refused.', 'refused')
  const opt = o.j.options
  try {
    say('Waiting for your passkey…')
    let response
    if (box.dataset.mode === 'register') {
      const c = await navigator.credentials.create({ publicKey: { ...opt, challenge: dec(opt.challenge), user: { ...opt.user, id: dec(opt.user.id) }, excludeCredentials: creds(opt.excludeCredentials) } })
      response = { id: c.id, rawId: enc(c.rawId), type: c.type, clientExtensionResults: c.getClientExtensionResults(), authenticatorAttachment: c.authenticatorAttachment || undefined,
        response: { clientDataJSON: enc(c.response.clientDataJSON), attestationObject: enc(c.response.attestationObject), transports: c.response.getTransports ? c.response.getTransports() : [] } }
    } else {
      const c = await navigator.credentials.get({ publicKey: { ...opt, challenge: dec(opt.challenge), allowCredentials: creds(opt.allowCredentials) } })
      response = { id: c.id, rawId: enc(c.rawId), type: c.type, clientExtensionResults: c.getClientExtensionResults(), authenticatorAttachment: c.authenticatorAttachment || undefined,
        response: { clientDataJSON: enc(c.response.clientDataJSON), authenticatorData: enc(c.response.authenticatorData), signature: enc(c.response.signature), userHandle: c.response.userHandle ? enc(c.response.userHandle) : undefined } }
    }
    const v = await post(box.dataset.verify, { ...base, credential: response })
    say(v.j.message || (v.ok ? 'Done.' : 'Refused.'), v.ok ? 'ok' : 'refused')
    if (v.ok && box.dataset.mode !== 'register') location.reload()
  } catch (e) {
    say('No passkey was used (' + (e && e.name ? e.name : 'error') + ').', 'error')
  }
})
})()`

export const CSRF_COOKIE = 'unlockd_csrf'
export const CSRF_COOKIE_SECURE = '__Host-unlockd_csrf'
const CSRF_VALUE_RE = /^[A-Za-z0-9_-]{43}$/

/** A fresh cookie value (256 random bits). */
export function newCsrfCookie(): string {
  return b64uEncode(randomBytes(32))
}

export function csrfCookieOk(v: string | undefined): v is string {
  return typeof v === 'string' && CSRF_VALUE_RE.test(v)
}

/** The form token: HMAC(key derived from the current KEK, approval id | cookie value). */
export function csrfToken(keystore: Keystore, approvalId: string, cookie: string): string {
  const key = createHmac('sha256', keystore.kek(keystore.currentVersion))
    .update('unlockd/v1/approve-page-csrf')
    .digest()
  return b64uEncode(
    new Uint8Array(createHmac('sha256', key).update(`${approvalId}|${cookie}`).digest()),
  )
}

export function csrfValid(
  keystore: Keystore,
  approvalId: string,
  cookie: string | undefined,
  token: string | undefined,
): boolean {
  if (!csrfCookieOk(cookie) || typeof token !== 'string' || token.length !== 43) return false
  return timingSafeEqual(utf8(csrfToken(keystore, approvalId, cookie)), utf8(token))
}

const esc = (s: string): string =>
  s.replace(
    /[&<>"']/g,
    (ch) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[ch] as string,
  )

const when = (at: number, now: number): string => {
  const iso = new Date(at * 1000).toISOString().replace('.000Z', 'Z').replace('T', ' ')
  const d = at - now
  if (Math.abs(d) < 1) return `${iso} (now)`
  return d < 0 ? `${iso} (${formatDuration(-d)} ago)` : `${iso} (in ${formatDuration(d)})`
}

export interface PageNotice {
  kind: 'error' | 'pending'
  text: string
}

function stateLine(a: ApprovalView): { cls: string; text: string } {
  switch (a.state) {
    case 'pending':
      return {
        cls: 'pending',
        text: `Waiting for approval (${a.approvedBy.length} of ${a.required})`,
      }
    case 'approved':
      return {
        cls: 'approved',
        text: `Approved by ${a.approvedBy.join(', ')}. ${a.host} unlocks at its next poll.`,
      }
    case 'used':
      return {
        cls: 'used',
        text: `Approved by ${a.approvedBy.join(', ')}. Keys released to ${a.host}.`,
      }
    case 'denied':
      return {
        cls: 'denied',
        text: `Denied${a.reason ? `: ${a.reason}` : ''}. ${a.host} will not unlock.`,
      }
    case 'expired':
      return { cls: 'expired', text: 'Expired; the host must ask again' }
  }
}

function layout(title: string, body: string): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="robots" content="noindex, nofollow">
<meta name="referrer" content="no-referrer">
<title>${esc(title)}</title>
<style>${STYLE}</style>
</head>
<body>
<main>
${body}
</main>
</body>
</html>
`
}

export function renderApprovalPage(
  a: ApprovalView,
  now: number,
  csrf: string,
  notice?: PageNotice,
  operator = '',
  nonce?: string,
): string {
  const s = stateLine(a)
  const rows: [string, string][] = [
    ['Host', esc(a.host)],
    ['Volumes', esc(a.volumes.length ? a.volumes.join(', ') : 'all')],
    ['From', `<code>${esc(a.source)}</code>`],
    ['Boot id', `<code>${esc(a.bootId)}</code>`],
    ['Rule', esc(a.rule)],
    [
      'Approvers',
      `${a.approvedBy.length ? esc(a.approvedBy.join(', ')) : 'none yet'} (${a.required} needed)`,
    ],
    ['Requested', esc(when(a.createdAt, now))],
    ['Expires', esc(when(a.expiresAt, now))],
    ['Request', `<code>${esc(a.id)}</code>`],
  ]
  const noticeHtml = notice
    ? `<p class="banner ${notice.kind}" role="status" id="notice">${esc(notice.text)}</p>\n`
    : ''
  const passkey =
    a.state !== 'pending' || nonce === undefined
      ? ''
      : `<section class="card" id="passkey" data-mode="approve" data-csrf="${esc(csrf)}" data-options="${esc(a.id)}/passkey/options" data-verify="${esc(a.id)}/passkey/verify">
<label for="passkey-operator">Operator (optional)</label>
<input id="passkey-operator" value="${esc(operator)}" maxlength="64" autocomplete="username webauthn" autocapitalize="none" autocorrect="off" spellcheck="false">
<div class="actions"><button type="button" id="passkey-go" class="passkey">Approve with passkey</button></div>
<p class="hint" id="passkey-status" role="status">Your phone asks for your fingerprint, face or screen lock.</p>
</section>
<script nonce="${esc(nonce)}">${SCRIPT}</script>
`
  const form =
    a.state !== 'pending'
      ? ''
      : `<form class="card" method="post" action="${esc(a.id)}" autocomplete="off">
<p class="hint">Without a passkey: sign in with your API token, then your TOTP code.</p>
<input type="hidden" name="csrf" value="${esc(csrf)}">
<label for="operator">Operator</label>
<input id="operator" name="operator" value="${esc(operator)}" required maxlength="64" autocomplete="username" autocapitalize="none" autocorrect="off" spellcheck="false">
<label for="token">API token</label>
<input id="token" name="token" type="password" required maxlength="64" autocomplete="current-password">
<label for="code">TOTP code</label>
<input id="code" name="code" required inputmode="numeric" pattern="[0-9]{6}" maxlength="6" autocomplete="one-time-code">
<label for="reason">Reason (if you deny; optional)</label>
<input id="reason" name="reason" maxlength="200">
<div class="actions">
<button type="submit" name="action" value="approve" class="approve">Approve</button>
<button type="submit" name="action" value="deny" class="deny">Deny</button>
</div>
<p class="hint">Each code works once. Repeated failures here make you wait longer each time; the CLI is not affected.</p>
</form>
`
  return layout(
    `Unlock request: ${a.host}`,
    `<h1>Unlock request: ${esc(a.host)}</h1>
${noticeHtml}<p class="banner ${s.cls}" id="state">${esc(s.text)}</p>
<section class="card"><dl>
${rows.map(([k, val]) => `<dt>${k}</dt><dd>${val}</dd>`).join('\n')}
</dl></section>
${passkey}${form}`,
  )
}

export function renderMessagePage(title: string, text: string): string {
  return layout(
    title,
    `<h1>${esc(title)}</h1>\n<p class="banner error" id="notice">${esc(text)}</p>\n`,
  )
}

/** The one-time passkey registration page for `operator`. */
export function renderRegisterPage(operator: string, token: string, nonce: string): string {
  return layout(
    'Register a passkey',
    `<h1>Register a passkey</h1>
<section class="card"><dl><dt>Operator</dt><dd>${esc(operator)}</dd></dl></section>
<section class="card" id="passkey" data-mode="register" data-options="${esc(token)}/options" data-verify="${esc(token)}/verify">
<div class="actions"><button type="button" id="passkey-go" class="passkey">Create passkey</button></div>
<p class="hint" id="passkey-status" role="status">This link works once. The passkey stays on this phone and works only on this server.</p>
</section>
<script nonce="${esc(nonce)}">${SCRIPT}</script>
`,
  )
}
