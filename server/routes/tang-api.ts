/**
 * Tang endpoints of Tang hosts, mounted at /tang: `GET /tang/NAME/adv`,
 * `GET /tang/NAME/adv/THP`, `POST /tang/NAME/rec/KID`, with tangd's content types and JWS form
 * so stock clevis (`clevis encrypt tang '{"url":"https://server/tang/NAME"}'`) works unchanged.
 * A URL given with a trailing slash (`.../tang/NAME/`) makes clevis ask for `NAME//adv`, which
 * tangd serves: runs of slashes in the path are taken as one, as tangd does.
 * `?form=general` asks for the general JWS serialization even with one signature.
 * The per-address limiter guards the P-521 work like it guards the host routes.
 *
 * `tangRoutes(deps, { rootHost })` serves one host's endpoints at the mount point itself
 * (`/adv`, `/adv/THP`, `/rec/KID`), the URLs a tangd being replaced had; the plain-HTTP Tang
 * listener mounts it at its root. Both forms run the same handlers, limiter and policy path.
 */
import { Hono } from 'hono'
import { UnlockdError } from '../../shared/errors.ts'
import { NAME_RE } from '../../shared/protocol/validate.ts'
import {
  ADV_CONTENT_TYPE,
  REC_CONTENT_TYPE,
  type AdvertisementForm,
} from '../../shared/tang/adv.ts'
import type { ServerDeps } from '../context.ts'
import { readBoundedBody } from '../http/body.ts'
import { hostRateLimiter, sourceAddress, type AppEnv } from '../http/middleware.ts'
import { tangService } from '../tang/service.ts'

/** A recovery request is one P-521 JWK (~250 bytes); anything much larger is not one. */
const MAX_REC_BODY = 4096

function hostName(v: string): string {
  // Unknown and malformed names look the same to a client: tangd's 404.
  if (!NAME_RE.test(v)) throw new UnlockdError('not_found', 'no such Tang host')
  return v
}

export interface TangRoutesOptions {
  /** Serve this host at the mount point instead of every host under `/NAME`. */
  rootHost?: string | undefined
}

export function tangRoutes(deps: ServerDeps, opts: TangRoutesOptions = {}): Hono<AppEnv> {
  const r = new Hono<AppEnv>()
  const svc = tangService(deps)
  // On each route rather than '*': mounted at a listener's root, '*' would reach every path.
  const limit = hostRateLimiter(deps)
  const root = opts.rootHost
  const prefix = root === undefined ? '/:host' : ''
  const hostOf = (c: { req: { param(k: string): string | undefined } }): string =>
    root ?? c.req.param('host') ?? ''

  const adv = async (name: string, form: string | undefined, thp?: string): Promise<Response> => {
    const f: AdvertisementForm = form === 'general' ? 'general' : 'tangd'
    const body = await svc.advertisement(hostName(name), thp, f)
    return new Response(body, { status: 200, headers: { 'Content-Type': ADV_CONTENT_TYPE } })
  }
  r.get(`${prefix}/adv`, limit, (c) => adv(hostOf(c), c.req.query('form')))
  // clevis asks for `$url/adv/$thp`, i.e. `/adv/` when no thp was given.
  r.get(`${prefix}/adv/`, limit, (c) => adv(hostOf(c), c.req.query('form')))
  r.get(`${prefix}/adv/:thp`, limit, (c) => adv(hostOf(c), c.req.query('form'), c.req.param('thp')))

  r.post(`${prefix}/rec/:kid`, limit, async (c) => {
    const name = hostName(hostOf(c))
    const buf = await readBoundedBody(c, MAX_REC_BODY)
    let text: string
    try {
      text = new TextDecoder('utf-8', { fatal: true }).decode(buf)
    } catch (cause) {
      throw new UnlockdError('bad_request', 'request body is not UTF-8', { cause })
    }
    const reply = await svc.recover(name, c.req.param('kid'), text, sourceAddress(c))
    return new Response(JSON.stringify(reply), {
      status: 200,
      headers: { 'Content-Type': REC_CONTENT_TYPE, 'Cache-Control': 'no-store' },
    })
  })
  return r
}
