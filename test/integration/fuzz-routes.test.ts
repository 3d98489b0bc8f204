/**
 * Fuzz every route of the server with malformed bodies, headers and JWS (fast-check, a fixed
 * seed so a failure replays): 100,000 requests in-process through `app.request`, then a sample
 * of 500 over real HTTP, with the per-address limiter off and no timing assertion. Whatever
 * arrives: no 5xx, no stack trace in any body, no secret (operator token, TOTP secret, keystore
 * passphrase, host private keys, enrollment token, KEK, audit and verdict keys) in any log
 * line, and the server still answers afterwards.
 *
 * The route list is read from the app itself, so a new route is fuzzed without editing this file.
 */
import test from 'ava'
import fc from 'fast-check'
import { createApp } from '../../server/app.ts'
import { signHostRequest } from '../../shared/crypto/jws.ts'
import { JWS_TYP, type JwsPurpose } from '../../shared/crypto/algorithms.ts'
import { b64uEncode, utf8 } from '../../shared/crypto/bytes.ts'
import { generateHostKeys } from '../../shared/client/host-client.ts'
import { startTestServer, TEST_PASSPHRASE } from '../helpers/server.ts'
import { askUnlock, enrollHost } from '../helpers/approval.ts'

const IN_PROCESS_RUNS = 100_000
const HTTP_SAMPLE = 500
const SEED = 0x756e6c6b

/** A stack frame as V8 prints it, or a source path: never in a response body. */
const STACK =
  /\n\s+at [^\n]*[(:]\d+|\bat (?:file:\/\/|node:|\/)[^\s]*:\d+:\d+|node_modules\/|\.ts:\d+:\d+/

const PURPOSES = Object.keys(JWS_TYP) as JwsPurpose[]
const METHODS = ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'HEAD'] as const

interface FuzzRequest {
  method: string
  path: string
  headers: Record<string, string>
  body?: string | undefined
}

/** Printable ASCII without spaces at the ends: what a header value may hold. */
const headerText = fc
  .string({
    unit: fc.mapToConstant({ num: 95, build: (v) => String.fromCharCode(v + 0x20) }),
    maxLength: 80,
  })
  .map((s) => s.trim())

const b64uSegment = fc.uint8Array({ maxLength: 120 }).map((b) => b64uEncode(b))
const jsonB64u = fc.jsonValue({ maxDepth: 3 }).map((j) => b64uEncode(utf8(JSON.stringify(j))))

test('fuzz: malformed bodies, headers and JWS on every route: no 5xx, no stack, no secret in logs', async (t) => {
  t.timeout(20 * 60_000, 'fuzzing on a busy shared machine')
  const srv = await startTestServer(t, { settings: { hostRateLimit: null, pollHold: 0 } })
  const app = createApp(srv.deps)

  // Real things for the fuzz to aim near: a host with keys, an open approval, a token.
  const host = await enrollHost(t, srv, 'fz-host', { approval: 'always' })
  const pending = await askUnlock(srv.transport, host, 'bootid-fuzz-1')
  const approvalId = pending.status === 'released' ? 'ap_none' : pending.approval.id
  const tok = await srv.admin('POST', '/tokens', { host: 'fz-new', ttlSeconds: 3600 })
  t.is(tok.status, 201)
  const enrollToken = tok.body.token as string
  const foreign = await generateHostKeys()

  const secrets = [
    srv.token,
    srv.adminSecret,
    TEST_PASSPHRASE,
    enrollToken,
    host.keys.signing.d,
    host.keys.sealing.d,
    srv.deps.keystore.signingKey().d,
    Buffer.from(srv.deps.keystore.auditKey).toString('hex'),
    b64uEncode(srv.deps.keystore.auditKey),
    Buffer.from(srv.deps.keystore.kek(srv.deps.keystore.currentVersion)).toString('hex'),
    b64uEncode(srv.deps.keystore.kek(srv.deps.keystore.currentVersion)),
    b64uEncode(host.vk),
  ]
  for (const s of secrets) t.true(s.length >= 16, 'every secret is long enough to search for')

  // One well-formed request per purpose, to mutate.
  const now = Math.floor(Date.now() / 1000)
  const good: string[] = []
  for (const p of PURPOSES)
    good.push(
      await signHostRequest(
        p,
        { v: 2, host: host.hostId, nonce: b64uEncode(new Uint8Array(32)), iat: now },
        host.keys.signing,
        host.hostId,
      ),
    )

  const routes = [
    ...new Map(
      app.routes.filter((r) => r.method !== 'ALL').map((r) => [`${r.method} ${r.path}`, r]),
    ).values(),
  ].map((r) => ({ method: r.method, path: r.path }))
  t.true(routes.length >= 40, `the app lists its routes (${routes.length})`)

  const segment = fc.oneof(
    fc.constantFrom(
      'fz-host',
      'fz-new',
      'admin',
      approvalId,
      host.hostId,
      '..',
      '%2e%2e',
      '%00',
      'ap_' + 'A'.repeat(22),
    ),
    fc.string({ maxLength: 40 }).map((s) => encodeURIComponent(s)),
    fc.string({ minLength: 200, maxLength: 600 }).map((s) => encodeURIComponent(s)),
  )
  const path = fc
    .tuple(fc.constantFrom(...routes), fc.array(segment, { minLength: 4, maxLength: 4 }))
    .chain(([r, segs]) =>
      fc
        .oneof(
          fc.constant(''),
          fc.constantFrom('?after=-1', '?limit=99999999', '?after=1e309&limit=NaN', '?x=%ff'),
          fc.string({ maxLength: 30 }).map((q) => `?${encodeURIComponent(q)}=1`),
        )
        .map((q) => {
          let i = 0
          return r.path.replace(/:[a-z]+/g, () => segs[i++ % segs.length] as string) + q
        })
        .map((p) => ({ route: r, path: p })),
    )

  // Really signed requests with arbitrary payloads, by the host or by a stranger claiming its
  // kid: signed once up front (signing is the slow part), then drawn from.
  const signed: string[] = []
  for (const [p, payload, mine] of fc.sample(
    fc.tuple(
      fc.constantFrom(...PURPOSES),
      fc.dictionary(
        fc.constantFrom('v', 'host', 'nonce', 'iat', 'bootId', 'volumes', 'epk', 'challenge'),
        fc.jsonValue({ maxDepth: 2 }),
      ),
      fc.boolean(),
    ),
    { numRuns: 400, seed: SEED },
  ))
    signed.push(
      await signHostRequest(p, payload, mine ? host.keys.signing : foreign.signing, host.hostId),
    )

  const jws = fc.oneof(
    fc.string({ maxLength: 200 }),
    fc.tuple(b64uSegment, b64uSegment, b64uSegment).map((s) => s.join('.')),
    // real header and signature, any payload
    fc.tuple(fc.constantFrom(...good), jsonB64u).map(([g, p]) => {
      const [h, , s] = g.split('.')
      return `${h}.${p}.${s}`
    }),
    // any header, real payload and signature
    fc.tuple(fc.constantFrom(...good), jsonB64u).map(([g, h]) => {
      const [, p, s] = g.split('.')
      return `${h}.${p}.${s}`
    }),
    // one character changed
    fc
      .tuple(fc.constantFrom(...good), fc.nat(), fc.constantFrom('A', '_', '-', '.', '=', '~'))
      .map(([g, i, c]) => {
        const at = i % g.length
        return g.slice(0, at) + c + g.slice(at + 1)
      }),
    // alg none, embedded keys, another kid
    fc
      .tuple(
        fc.constantFrom(...good),
        fc.constantFrom(
          { alg: 'none', typ: 'unlockd-unlock+jws', kid: host.hostId },
          { alg: 'EdDSA', typ: 'unlockd-unlock+jws', kid: host.hostId, jwk: {} },
          { alg: 'HS256', typ: 'unlockd-poll+jws', kid: host.hostId },
          { alg: 'EdDSA', typ: 'unlockd-watch+jws', kid: 'x'.repeat(43) },
        ),
      )
      .map(([g, h]) => {
        const [, p, s] = g.split('.')
        return `${b64uEncode(utf8(JSON.stringify(h)))}.${p}.${s}`
      }),
    // really signed (by the host, or by a stranger claiming its kid), with any payload
    fc.constantFrom(...signed),
  )

  const body = fc.oneof(
    { weight: 4, arbitrary: jws.map((j) => ({ jws: j })) },
    { weight: 2, arbitrary: fc.jsonValue({ maxDepth: 4 }) },
    { weight: 1, arbitrary: fc.string({ maxLength: 300 }).map((s) => ({ raw: s })) },
    {
      weight: 1,
      arbitrary: fc.record({
        code: fc.oneof(fc.stringMatching(/^\d{6}$/), fc.string({ maxLength: 8 })),
        host: fc.constantFrom('fz-host', 'fz-new', 'nope'),
        dryRun: fc.boolean(),
        reason: fc.string({ maxLength: 50 }),
      }),
    },
    { weight: 1, arbitrary: fc.constant({ raw: '{"jws":' + '"A'.repeat(2) }) },
    {
      weight: 1,
      arbitrary: fc.constantFrom(
        { raw: '' },
        { raw: '{"__proto__":{"admin":true},"jws":"a.b.c"}' },
        {
          raw: '[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]',
        },
        { raw: 'x'.repeat(300 * 1024) },
      ),
    },
    { weight: 1, arbitrary: fc.constant(undefined) },
  )

  const headers = fc.record(
    {
      'content-type': fc.constantFrom(
        'application/json',
        'application/json; charset=utf-16',
        'text/plain',
        'application/x-www-form-urlencoded',
        'multipart/form-data; boundary=x',
        'application/jose',
      ),
      authorization: fc.oneof(
        { weight: 4, arbitrary: fc.constant(`Bearer ${srv.token}`) },
        fc.constant(`Bearer ${enrollToken}`),
        headerText.map((s) => `Bearer ${s}`),
        headerText.map((s) => `Basic ${s}`),
        headerText,
      ),
      'x-unlockd-totp': fc.oneof(fc.stringMatching(/^\d{6}$/), headerText),
      'x-forwarded-for': fc.oneof(fc.ipV4(), fc.ipV6(), headerText),
      cookie: headerText.map((s) => `unlockd_page=${s}`),
      accept: fc.constantFrom('application/json', 'text/html', '*/*'),
    },
    { requiredKeys: [] },
  )

  const request = fc
    .record({
      target: path,
      method: fc.option(fc.constantFrom(...METHODS), { freq: 5 }),
      headers,
      body,
    })
    .map(({ target, method, headers: h, body: b }) => ({
      target,
      method: method ?? target.route.method,
      headers: h as Record<string, string>,
      body: b,
    }))

  type Drawn = typeof request extends fc.Arbitrary<infer T> ? T : never
  const DUMMY: Drawn = {
    target: { route: { method: 'POST', path: '/' }, path: '/' },
    method: 'POST',
    headers: {},
    body: undefined,
  }
  const materialize = (d: Drawn): FuzzRequest => {
    let text: string | undefined
    const b = d.body as unknown
    if (b === undefined) text = undefined
    else if (typeof b === 'object' && b !== null && 'raw' in b) text = String(b.raw)
    else text = JSON.stringify(b)
    const method = d.method
    const out: FuzzRequest = { method, path: d.target.path, headers: d.headers }
    if (method !== 'GET' && method !== 'HEAD' && text !== undefined) out.body = text
    return out
  }

  const problems: string[] = []
  const check = (r: FuzzRequest, status: number, text: string, via: string): void => {
    if (status >= 500)
      problems.push(`${via} ${r.method} ${r.path} -> ${status}: ${text.slice(0, 300)}`)
    if (STACK.test(text))
      problems.push(`${via} ${r.method} ${r.path} -> stack trace: ${text.slice(0, 300)}`)
  }

  // Parts drawn by fast-check (seeded), combined by a seeded generator: drawing a whole request
  // per run costs more than answering it, and the combinations still differ run to run.
  const pool = <T>(a: fc.Arbitrary<T>, n: number, seed: number): T[] =>
    fc.sample(a, { numRuns: n, seed })
  const targets = pool(path, 4000, SEED)
  const bodies = pool(body, 6000, SEED + 2).map((b) => materialize({ ...DUMMY, body: b }).body)
  const headerSets = pool(headers, 3000, SEED + 3) as Record<string, string>[]
  const methods = pool(fc.option(fc.constantFrom(...METHODS), { freq: 5 }), 500, SEED + 4)
  let state = SEED >>> 0
  const next = (n: number): number => {
    state ^= state << 13
    state ^= state >>> 17
    state ^= state << 5
    return (state >>> 0) % n
  }
  const pick = <T>(xs: readonly T[]): T => xs[next(xs.length)] as T

  const started = process.hrtime.bigint()
  const statuses = new Map<number, number>()
  for (let i = 0; i < IN_PROCESS_RUNS; i++) {
    const target = pick(targets)
    const method = pick(methods) ?? target.route.method
    const b = pick(bodies)
    const r: FuzzRequest = { method, path: target.path, headers: pick(headerSets) }
    if (method !== 'GET' && method !== 'HEAD' && b !== undefined) r.body = b
    const res = await app.request(`http://127.0.0.1${r.path}`, {
      method: r.method,
      headers: r.headers,
      ...(r.body !== undefined ? { body: r.body } : {}),
    })
    const text = await res.text()
    statuses.set(res.status, (statuses.get(res.status) ?? 0) + 1)
    check(r, res.status, text, 'app.request')
    if (problems.length >= 20) break
  }
  const inProcessSeconds = Number(process.hrtime.bigint() - started) / 1e9
  t.log(
    `${IN_PROCESS_RUNS} in-process requests in ${inProcessSeconds.toFixed(1)} s; statuses ${JSON.stringify(Object.fromEntries(statuses))}`,
  )
  t.true(statuses.size >= 6, 'the fuzz reaches many different answers, not one refusal')

  // A sample over real HTTP: the same generator, through the listening server.
  const sample = fc.sample(request, { numRuns: HTTP_SAMPLE, seed: SEED + 1 })
  let sent = 0
  for (const d of sample) {
    const r = materialize(d)
    let res: Response
    try {
      res = await fetch(`${srv.url}${r.path}`, {
        method: r.method,
        headers: r.headers,
        ...(r.body !== undefined ? { body: r.body } : {}),
        signal: AbortSignal.timeout(120_000),
      })
    } catch (err) {
      // The server may end a connection it refuses (e.g. an oversized body); it must not crash.
      const h = await fetch(`${srv.url}/healthz`)
      if (h.status !== 200) problems.push(`server down after ${r.method} ${r.path}: ${String(err)}`)
      continue
    }
    check(r, res.status, await res.text(), 'http')
    sent++
  }
  t.true(sent > HTTP_SAMPLE * 0.9, `most of the HTTP sample was answered (${sent})`)

  t.deepEqual(problems.slice(0, 20), [])
  const leaks = srv.logs.filter((line) => secrets.some((s) => line.includes(s)))
  t.deepEqual(leaks.slice(0, 5), [], 'no secret in any log line')
  t.true(srv.logs.length > IN_PROCESS_RUNS, 'every request was logged (and searched)')

  // Still answering: health, a nonce, the operator API.
  t.is((await fetch(`${srv.url}/healthz`)).status, 200)
  t.is((await fetch(`${srv.url}/v1/nonce`)).status, 200)
  t.is((await srv.admin('GET', '/hosts')).status, 200)
})
