/**
 * The escrow server as a value: `createApp(deps)` wires routes and error handling and does no
 * I/O. `server/main.ts` is what listens.
 */
import { Hono } from 'hono'
import type { ServerDeps } from './context.ts'
import { renderError } from './http/errors.ts'
import { accessLog, type AppEnv } from './http/middleware.ts'
import { adminRoutes } from './routes/admin-api.ts'
import { hostRoutes } from './routes/host-api.ts'
import { approvePageRoutes } from './routes/approve-page.ts'
import { installNotifier } from './approvals/notify.ts'
import { watchRoutes } from './routes/watch-api.ts'
import { tangRoutes } from './routes/tang-api.ts'

export function createApp(deps: ServerDeps): Hono<AppEnv> {
  const app = new Hono<AppEnv>()
  app.use('*', accessLog(deps))
  app.use('*', async (c, next) => {
    await next()
    c.header('X-Content-Type-Options', 'nosniff')
    c.header('Referrer-Policy', 'no-referrer')
    if (!c.res.headers.has('Content-Security-Policy'))
      c.header('Content-Security-Policy', "default-src 'none'; frame-ancestors 'none'")
  })
  app.get('/healthz', (c) => c.json({ status: 'ok' }))
  app.route('/v1', hostRoutes(deps))
  app.route('/v1/admin', adminRoutes(deps))
  app.route('/approve', approvePageRoutes(deps))
  installNotifier(deps) // webhook on every new approval request (listener only, no I/O here)
  app.route('/v1', watchRoutes(deps))
  // Tang hosts: stock clevis against /tang/NAME, with per-host policy and shred.
  app.route('/tang', tangRoutes(deps))
  app.notFound((c) => c.json({ error: 'not_found', message: 'no such route' }, 404))
  app.onError((err, c) => renderError(c, err, deps.log))
  return app
}
