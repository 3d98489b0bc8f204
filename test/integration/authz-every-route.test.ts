/**
 * Authorization on every route, enumerated from the app itself (so a new route cannot be
 * forgotten): every /v1/admin route refuses a missing or wrong operator token with 401, and
 * every host route refuses an unsigned or wrongly signed request with a 4xx, never a 2xx or 500.
 */
import test from 'ava'
import { createApp } from '../../server/app.ts'
import { startTestServer } from '../helpers/server.ts'

test('every admin route needs an operator token; every host route needs a signature', async (t) => {
  const srv = await startTestServer(t)
  const app = createApp(srv.deps)
  const routes = [
    ...new Set(app.routes.filter((r) => r.method !== 'ALL').map((r) => `${r.method} ${r.path}`)),
  ]
  const admin = routes.filter((r) => r.split(' ')[1]!.startsWith('/v1/admin/'))
  t.true(admin.length >= 20, `found ${admin.length} admin routes`)
  const concrete = (path: string): string =>
    path
      .replace(/:name/g, 'web-1')
      .replace(/:id/g, 'ap_AAAAAAAAAAAAAAAAAAAAAA')
      .replace(/:[a-z]+/g, 'x')
  for (const r of admin) {
    const [method, path] = r.split(' ') as [string, string]
    for (const auth of [
      undefined,
      'Bearer uo_' + 'A'.repeat(43),
      'Bearer ue_' + 'A'.repeat(43),
      'Basic YWRtaW46YWRtaW4=',
    ]) {
      const res = await fetch(srv.url + concrete(path), {
        method,
        headers: { 'content-type': 'application/json', ...(auth ? { authorization: auth } : {}) },
        ...(method === 'GET' ? {} : { body: '{}' }),
      })
      t.is(res.status, 401, `${r} with ${auth ?? 'no token'}`)
    }
  }
  const hostPosts = routes.filter((r) => r.startsWith('POST /v1/') && !r.includes('/v1/admin/'))
  t.true(hostPosts.length >= 5)
  for (const r of hostPosts) {
    const path = r.split(' ')[1] as string
    for (const body of ['{}', JSON.stringify({ jws: 'eyJhbGciOiJFZERTQSJ9.e30.AAAA' })]) {
      const res = await fetch(srv.url + path, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body,
      })
      t.true(res.status >= 400 && res.status < 500, `${r} ${body} → ${res.status}`)
    }
  }
})
