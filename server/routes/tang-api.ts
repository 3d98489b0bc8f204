/**
 * Tang endpoints of Tang hosts, mounted at /tang: `GET /tang/NAME/adv`,
 * `GET /tang/NAME/adv/THP`, `POST /tang/NAME/rec/KID`, with tangd's content types and JWS form
 * so stock clevis (`clevis encrypt tang '{"url":"https://server/tang/NAME"}'`) works unchanged.
 * A URL given with a trailing slash (`.../tang/NAME/`) makes clevis ask for `NAME//adv`, which
 * tangd serves: runs of slashes in the path are taken as one, as tangd does.
 * `?form=general` asks for the general JWS serialization even with one signature.
 * The per-address limiter guards the P-521 work like it guards the host routes.
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

export function tangRoutes(deps: ServerDeps): Hono<AppEnv> {
  const r = new Hono<AppEnv>()
  const svc = tangService(deps)
  r.use('*', hostRateLimiter(deps))

  const adv = async (name: string, form: string | undefined, thp?: string): Promise<Response> => {
    const f: AdvertisementForm = form === 'general' ? 'general' : 'tangd'
    const body = await svc.advertisement(hostName(name), thp, f)
    return new Response(body, { status: 200, headers: { 'Content-Type': ADV_CONTENT_TYPE } })
  }
  r.get('/:host/adv', (c) => adv(c.req.param('host'), c.req.query('form')))
  // clevis asks for `$url/adv/$thp`, i.e. `/adv/` when no thp was given.
  r.get('/:host/adv/', (c) => adv(c.req.param('host'), c.req.query('form')))
  r.get('/:host/adv/:thp', (c) => adv(c.req.param('host'), c.req.query('form'), c.req.param('thp')))

  r.post('/:host/rec/:kid', async (c) => {
    const name = hostName(c.req.param('host'))
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
