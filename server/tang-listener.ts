/**
 * The optional plain-HTTP Tang listener (`tangListener` in server.json): the Tang routes and
 * nothing else, so stock clevis in an initramfs without a CA bundle can reach its Tang hosts.
 * The Tang exchange is blinded (the server only ever sees a random-looking point and answers
 * with another), which is why tangd itself speaks plain HTTP; every other route of unlockd
 * carries bearer tokens, signed requests or released keys and stays on the main listener, where
 * plain HTTP is refused off loopback.
 *
 * `rootHost` also serves that one host at the root (`/adv`, `/adv/THP`, `/rec/KID`), the URLs a
 * tangd being replaced had, so clevis bindings made against it keep their URL. Both forms go
 * through the same route module as the main listener: the same limiter, policy, approvals and
 * audit.
 */
import { Hono } from 'hono'
import { getPath } from 'hono/utils/url'
import type { ServerDeps } from './context.ts'
import { renderError, statusFor } from './http/errors.ts'
import type { Metrics } from './http/metrics.ts'
import type { AppEnv } from './http/middleware.ts'
import { useCommonMiddleware } from './app.ts'
import { tangRoutes } from './routes/tang-api.ts'

export interface TangAppOptions {
  /** The Tang host also served at the root. */
  rootHost?: string | undefined
}

/** Everything here is Tang, so runs of slashes count as one everywhere, as tangd takes them. */
function routingPath(req: Request): string {
  return getPath(req).replace(/\/{2,}/g, '/')
}

export function createTangApp(
  deps: ServerDeps,
  metrics: Metrics,
  opts: TangAppOptions = {},
): Hono<AppEnv> {
  const app = new Hono<AppEnv>({ getPath: routingPath })
  useCommonMiddleware(app, deps, metrics.tangListenerMiddleware)
  app.route('/tang', tangRoutes(deps))
  if (opts.rootHost !== undefined) app.route('/', tangRoutes(deps, { rootHost: opts.rootHost }))
  app.notFound((c) =>
    c.json(
      { error: 'not_found', message: 'no such route (this listener serves only Tang)' },
      statusFor('not_found'),
    ),
  )
  app.onError((err, c) => renderError(c, err, deps.log))
  return app
}
