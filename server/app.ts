/**
 * The escrow server as a value: `createApp(deps)` wires routes and error handling and does no
 * I/O. `server/main.ts` is what listens.
 */
import { Hono, type MiddlewareHandler } from 'hono'
import { getPath } from 'hono/utils/url'
import type { ServerDeps } from './context.ts'
import { renderError, statusFor } from './http/errors.ts'
import { createMetrics, type Metrics } from './http/metrics.ts'
import { declaredBodyLimit } from './http/body.ts'
import { clientAddress } from './http/client-address.ts'
import { accessLog, MAX_BODY, sourceAddress, type AppEnv } from './http/middleware.ts'
import { auditAuthFailure } from './escrow/auth-failure-audit.ts'
import { adminRoutes } from './routes/admin-api.ts'
import { hostRoutes } from './routes/host-api.ts'
import { operatorEnrollRoutes } from './routes/operator-enroll-api.ts'
import { approvePageRoutes } from './routes/approve-page.ts'
import { installNotifier } from './approvals/notify.ts'
import { watchRoutes } from './routes/watch-api.ts'
import { tangRoutes } from './routes/tang-api.ts'

/**
 * The routing path of a request. Under /tang/ runs of slashes count as one, as tangd's parser
 * takes them: clevis given a URL with a trailing slash asks for `/tang/NAME//adv`.
 */
function routingPath(req: Request): string {
  const path = getPath(req)
  return path.startsWith('/tang/') ? path.replace(/\/{2,}/g, '/') : path
}

/**
 * What every listener does before its routes: the client address, the access log, the body
 * bound, the response headers and the unlock counters.
 */
export function useCommonMiddleware(
  app: Hono<AppEnv>,
  deps: ServerDeps,
  counters: MiddlewareHandler<AppEnv>,
): void {
  app.use('*', clientAddress(deps.settings.trustedProxies))
  app.use('*', accessLog(deps))
  // Routes read bodies through readBoundedBody with their own (smaller) bounds.
  app.use('*', declaredBodyLimit(MAX_BODY))
  app.use('*', async (c, next) => {
    await next()
    c.header('X-Content-Type-Options', 'nosniff')
    c.header('Referrer-Policy', 'no-referrer')
    if (!c.res.headers.has('Content-Security-Policy'))
      c.header('Content-Security-Policy', "default-src 'none'; frame-ancestors 'none'")
  })
  app.use('*', counters)
}

/** `metrics` is shared with the Tang listener when there is one, so counters add up. */
export function createApp(deps: ServerDeps, metrics: Metrics = createMetrics(deps)): Hono<AppEnv> {
  const app = new Hono<AppEnv>({ getPath: routingPath })
  useCommonMiddleware(app, deps, metrics.middleware)
  // Host authentication failures become rate-limited audit summaries.
  app.use('/v1/*', async (c, next) => {
    await next()
    if (c.error !== undefined && !c.req.path.startsWith('/v1/admin/'))
      await auditAuthFailure(deps, c.error, sourceAddress(c))
  })
  app.get('/healthz', (c) => c.json({ status: 'ok' }))
  app.get('/metrics', metrics.handler)
  app.route('/v1', hostRoutes(deps))
  app.route('/v1', operatorEnrollRoutes(deps))
  app.route('/v1/admin', adminRoutes(deps))
  app.route('/approve', approvePageRoutes(deps))
  installNotifier(deps) // webhook on every new approval request (listener only, no I/O here)
  app.route('/v1', watchRoutes(deps))
  // Tang hosts: stock clevis against /tang/NAME, with per-host policy and shred.
  app.route('/tang', tangRoutes(deps))
  app.notFound((c) =>
    c.json({ error: 'not_found', message: 'no such route' }, statusFor('not_found')),
  )
  app.onError((err, c) => renderError(c, err, deps.log))
  return app
}
