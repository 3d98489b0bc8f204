/**
 * What fleet provisioning relies on from the escrow server: one-time enrollment tokens bound to
 * a host name and optional networks, made through `POST /v1/admin/tokens` (the Terraform module)
 * or `unlockd token create` (the Ansible examples), listed and revoked, and a stable error code
 * for every way a token can no longer enroll, `token_used` above all.
 */
import test from 'ava'
import { mkdtemp, rm, writeFile } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { enroll, generateHostKeys } from '../../shared/client/host-client.ts'
import { rejectsWithCode } from '../helpers/errors.ts'
import { startTestServer } from '../helpers/server.ts'
import { cli, requireBuild } from './support.ts'

test('POST /v1/admin/tokens makes a single-use token bound to a host; reuse fails with token_used', async (t) => {
  const srv = await startTestServer(t)
  const res = await srv.admin('POST', '/tokens', {
    host: 'web-1',
    ttlSeconds: 900,
    cidrs: ['127.0.0.0/8'],
  })
  t.is(res.status, 201)
  t.regex(res.body.token, /^ue_[A-Za-z0-9_-]+$/)
  t.regex(res.body.id, /^tok_[A-Za-z0-9_-]{12}$/)
  t.like(res.body, {
    host: 'web-1',
    cidrs: ['127.0.0.0/8'],
    state: 'unused',
    usedAt: null,
    revokedAt: null,
  })
  t.is(res.body.expiresAt - res.body.createdAt, 900)

  // Listing never shows the secret.
  const list = await srv.admin('GET', '/tokens')
  t.is(list.status, 200)
  t.false(JSON.stringify(list.body).includes(res.body.token))
  t.like(
    list.body.tokens.find((x: { id: string }) => x.id === res.body.id),
    { host: 'web-1', state: 'unused' },
  )

  // Bound to its host name.
  t.is(
    (
      await rejectsWithCode(
        t,
        enroll(srv.transport, {
          token: res.body.token,
          name: 'web-2',
          keys: await generateHostKeys(),
          volumes: [],
        }),
        'forbidden',
      )
    )?.details?.['status'],
    403,
  )

  const first = await enroll(srv.transport, {
    token: res.body.token,
    name: 'web-1',
    keys: await generateHostKeys(),
    volumes: [],
  })
  t.is(first.name, 'web-1')
  t.like(
    (await srv.admin('GET', '/tokens')).body.tokens.find(
      (x: { id: string }) => x.id === res.body.id,
    ),
    { state: 'used' },
  )

  // A second host (a copied user-data, a leaked state file) cannot use it again.
  t.is(
    (
      await rejectsWithCode(
        t,
        enroll(srv.transport, {
          token: res.body.token,
          name: 'web-1',
          keys: await generateHostKeys(),
          volumes: [],
        }),
        'token_used',
      )
    )?.details?.['status'],
    403,
  )

  // Once the host is enrolled, a new token for its name is refused: the Terraform module reads this 409.
  const again = await srv.admin('POST', '/tokens', { host: 'web-1', ttlSeconds: 900 })
  t.is(again.status, 409)
  t.is(again.body.error, 'host_exists')
})

test('tokens are refused outside their networks, after revocation and after expiry', async (t) => {
  let now = Math.floor(Date.now() / 1000)
  const srv = await startTestServer(t, { now: () => now })

  const far = await srv.admin('POST', '/tokens', { host: 'db-1', cidrs: ['203.0.113.0/24'] })
  t.is(far.status, 201)
  await rejectsWithCode(
    t,
    enroll(srv.transport, {
      token: far.body.token,
      name: 'db-1',
      keys: await generateHostKeys(),
      volumes: [],
    }),
    'cidr_denied',
  )

  const revoked = await srv.admin('POST', '/tokens', { host: 'db-2' })
  const r = await srv.admin('DELETE', `/tokens/${revoked.body.id}`)
  t.is(r.status, 200)
  t.is(r.body.state, 'revoked')
  await rejectsWithCode(
    t,
    enroll(srv.transport, {
      token: revoked.body.token,
      name: 'db-2',
      keys: await generateHostKeys(),
      volumes: [],
    }),
    'token_revoked',
  )
  const twice = await srv.admin('DELETE', `/tokens/${revoked.body.id}`)
  t.is(twice.status, 409)
  t.is(twice.body.error, 'conflict')

  const short = await srv.admin('POST', '/tokens', { host: 'db-3', ttlSeconds: 60 })
  now += 61
  await rejectsWithCode(
    t,
    enroll(srv.transport, {
      token: short.body.token,
      name: 'db-3',
      keys: await generateHostKeys(),
      volumes: [],
    }),
    'token_expired',
  )
  t.like(
    (await srv.admin('GET', '/tokens')).body.tokens.find(
      (x: { id: string }) => x.id === short.body.id,
    ),
    { state: 'expired' },
  )
})

test('the admin token API needs an operator token and a well-formed body', async (t) => {
  const srv = await startTestServer(t)
  const anon = await srv.transport({
    method: 'POST',
    path: '/v1/admin/tokens',
    body: { host: 'web-1' },
  })
  t.is(anon.status, 401)
  const wrong = await srv.transport({
    method: 'POST',
    path: '/v1/admin/tokens',
    bearer: 'uo_notarealtokennotarealtokennotarealtoken',
    body: { host: 'web-1' },
  })
  t.is(wrong.status, 401)
  for (const body of [
    { host: 'Web 1' },
    { host: 'web-1', ttlSeconds: 10 },
    { host: 'web-1', cidrs: ['not-a-cidr'] },
    { host: 'web-1', extra: 1 },
  ]) {
    const res = await srv.admin('POST', '/tokens', body)
    t.is(res.status, 400, JSON.stringify(body))
    t.is(res.body.error, 'bad_request')
  }
})

test('unlockd token create|list|revoke --json, and unlockd enroll reports token_used with exit 3', async (t) => {
  if (!requireBuild(t)) return
  const srv = await startTestServer(t)
  const dir = await mkdtemp(join(tmpdir(), 'unlockd-tok-'))
  t.teardown(() => rm(dir, { recursive: true, force: true }))
  const tokenFile = join(dir, 'operator-token')
  await writeFile(tokenFile, `${srv.token}\n`, { mode: 0o600 })
  const env = {
    UNLOCKD_URL: srv.url,
    UNLOCKD_TOKEN_FILE: tokenFile,
    UNLOCKD_CONFIG: join(dir, 'none.json'),
  }

  const made = await cli(
    ['token', 'create', '--host', 'app-1', '--ttl', '15m', '--cidr', '127.0.0.0/8', '--json'],
    { env },
  )
  t.is(made.code, 0, made.stderr)
  const tok = JSON.parse(made.stdout) as {
    token: string
    id: string
    host: string
    cidrs: string[]
    state: string
    expiresAt: number
    createdAt: number
  }
  t.like(tok, { host: 'app-1', cidrs: ['127.0.0.0/8'], state: 'unused' })
  t.is(tok.expiresAt - tok.createdAt, 900)

  const listed = await cli(['token', 'list', '--json'], { env })
  t.is(listed.code, 0, listed.stderr)
  t.false(listed.stdout.includes(tok.token))
  t.like(
    (JSON.parse(listed.stdout) as { id: string }[]).find((x) => x.id === tok.id),
    { host: 'app-1', state: 'unused' },
  )

  // The host side: the token goes in on stdin; the second host gets the stable code.
  const ok = await cli(
    [
      'enroll',
      '--json',
      '--server',
      srv.url,
      '--token',
      '-',
      '--name',
      'app-1',
      '--config',
      join(dir, 'host-a'),
    ],
    { input: tok.token },
  )
  t.is(ok.code, 0, ok.stderr)
  t.like(JSON.parse(ok.stdout), { name: 'app-1', changed: true })
  const reused = await cli(
    [
      'enroll',
      '--json',
      '--server',
      srv.url,
      '--token',
      '-',
      '--name',
      'app-1',
      '--config',
      join(dir, 'host-b'),
    ],
    { input: tok.token },
  )
  t.is(reused.code, 3, 'refused by the server')
  t.like(JSON.parse(reused.stdout), { error: 'token_used', status: 403 })
  t.regex(reused.stderr, /unlockd token create/)
  // The token never reaches argv or output.
  t.false(reused.stderr.includes(tok.token) || reused.stdout.includes(tok.token))

  const other = await cli(['token', 'create', '--host', 'app-2', '--json'], { env })
  const otherId = (JSON.parse(other.stdout) as { id: string }).id
  const revoked = await cli(['token', 'revoke', otherId, '--json'], { env })
  t.is(revoked.code, 0, revoked.stderr)
  t.like(JSON.parse(revoked.stdout), { id: otherId, state: 'revoked' })
  const again = await cli(['token', 'revoke', otherId, '--json'], { env })
  t.is(again.code, 1)
  t.like(JSON.parse(again.stdout), { error: 'conflict' })

  const exists = await cli(['token', 'create', '--host', 'app-1', '--json'], { env })
  t.not(exists.code, 0)
  t.like(JSON.parse(exists.stdout), { error: 'host_exists', status: 409 })
})
