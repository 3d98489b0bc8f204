/**
 * Tang endpoints of Tang hosts, mounted at /tang: `GET /tang/NAME/adv`,
 * `GET /tang/NAME/adv/THP`, `POST /tang/NAME/rec/KID`, with tangd's content types so stock
 * clevis (`clevis encrypt tang '{"url":"https://server/tang/NAME"}'`) works unchanged.
 * The per-address limiter guards the P-521 work like it guards the host routes.
 */
import { Hono } from 'hono'
import { UnlockdError } from '../../shared/errors.ts'
import { NAME_RE } from '../../shared/protocol/validate.ts'
import { ADV_CONTENT_TYPE, REC_CONTENT_TYPE } from '../../shared/tang/adv.ts'
import type { ServerDeps } from '../context.ts'
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

  const adv = async (name: string, thp?: string): Promise<Response> => {
    const body = await svc.advertisement(hostName(name), thp)
    return new Response(body, { status: 200, headers: { 'Content-Type': ADV_CONTENT_TYPE } })
  }
  r.get('/:host/adv', (c) => adv(c.req.param('host')))
  // clevis asks for `$url/adv/$thp`, i.e. `/adv/` when no thp was given.
  r.get('/:host/adv/', (c) => adv(c.req.param('host')))
  r.get('/:host/adv/:thp', (c) => adv(c.req.param('host'), c.req.param('thp')))

  r.post('/:host/rec/:kid', async (c) => {
    const name = hostName(c.req.param('host'))
    const len = Number(c.req.header('content-length') ?? '0')
    if (len > MAX_REC_BODY)
      throw new UnlockdError('payload_too_large', `request body exceeds ${MAX_REC_BODY} bytes`)
    const buf = await c.req.arrayBuffer()
    if (buf.byteLength > MAX_REC_BODY)
      throw new UnlockdError('payload_too_large', `request body exceeds ${MAX_REC_BODY} bytes`)
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
