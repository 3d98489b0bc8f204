/**
 * server.json: parse, then defaults, then validate. Pure: the entry point reads the file.
 */
import * as v from 'valibot'
import { UnlockdError } from '../errors.ts'
import { cidr, NAME_RE, parseWith } from '../protocol/validate.ts'
import { parseDuration } from '../util/duration.ts'

const dur = v.pipe(
  v.string(),
  v.check((s) => parseDuration(s) !== undefined, 'must be a duration such as 90s, 15m, 1h, 30d'),
  v.transform((s) => parseDuration(s) as number),
)

const HOST_PORT_RE = /^(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/

const TANG_LISTENER_SHAPE =
  'must be { "listen": "HOST:PORT", "rootHost": "NAME" } (rootHost optional), e.g. { "listen": "0.0.0.0:80" }'

/**
 * The optional plain-HTTP Tang listener: only the Tang routes, on any address (the exchange is
 * blinded); `rootHost` also serves that Tang host at the root, as tangd's URLs have it.
 */
const TangListener = v.strictObject(
  {
    listen: v.pipe(
      v.string(TANG_LISTENER_SHAPE),
      v.regex(HOST_PORT_RE, 'must be HOST:PORT, e.g. "0.0.0.0:80" (the port tangd usually has)'),
      v.check((s) => Number(s.slice(s.lastIndexOf(':') + 1)) <= 65535, 'port must be 0-65535'),
    ),
    rootHost: v.optional(
      v.pipe(
        v.string('must be the name of a Tang host (`unlockd host add NAME --tang`)'),
        v.regex(
          NAME_RE,
          'must be the name of a Tang host: 1-64 chars of a-z 0-9 _ . - starting with a letter or digit',
        ),
      ),
    ),
  },
  TANG_LISTENER_SHAPE,
)

const Schema = v.strictObject({
  db: v.optional(v.pipe(v.string(), v.minLength(1), v.maxLength(1000))),
  listen: v.optional(v.pipe(v.string(), v.regex(HOST_PORT_RE, 'must be HOST:PORT'))),
  tlsCert: v.optional(v.string()),
  tlsKey: v.optional(v.string()),
  publicUrl: v.optional(v.pipe(v.string(), v.url('must be a URL'))),
  nonceTtl: v.optional(dur),
  iatSkew: v.optional(dur),
  approvalTtl: v.optional(dur),
  pollHold: v.optional(dur),
  kekRotation: v.optional(v.union([dur, v.literal('off')])),
  totpMaxFailures: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(100))),
  totpFailureWindow: v.optional(dur),
  /** Per-source-address limit on the public host and Tang routes, or "off". */
  hostRateLimit: v.optional(
    v.union(
      [
        v.literal('off'),
        v.strictObject({
          perSecond: v.pipe(v.number(), v.minValue(1), v.maxValue(1_000_000)),
          burst: v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(10_000_000)),
        }),
      ],
      'must be "off" or { "perSecond": N, "burst": N }',
    ),
  ),
  /** `GET /metrics` is served only with a scrape token, read from this file (0600). */
  metrics: v.optional(v.strictObject({ tokenFile: v.pipe(v.string(), v.minLength(1)) })),
  /** Reverse proxies whose X-Forwarded-For is believed (CIDRs); absent or empty: none. */
  trustedProxies: v.optional(v.pipe(v.array(cidr), v.maxLength(256))),
  /** Export the audit chain head after this many new entries or this long (`audit head`). */
  auditHead: v.optional(
    v.strictObject({
      everyEntries: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(1e9))),
      every: v.optional(dur),
    }),
  ),
  /** Absent: off. Plain HTTP serving only /tang/* (and rootHost at the root). */
  tangListener: v.optional(TangListener),
  webhook: v.optional(
    v.strictObject({
      url: v.pipe(v.string(), v.url('must be a URL'), v.regex(/^https?:\/\//, 'must be http(s)')),
      secretFile: v.optional(v.string()),
    }),
  ),
})

export interface TangListenerConfig {
  /** HOST:PORT of the plain-HTTP listener. */
  listen: string
  /** The Tang host also served at the root (`/adv`, `/adv/THP`, `/rec/KID`). */
  rootHost?: string
}

export interface ServerConfig {
  db?: string
  listen?: string
  tlsCert?: string
  tlsKey?: string
  webhook?: { url: string; secretFile?: string }
  metrics?: { tokenFile: string }
  tangListener?: TangListenerConfig
  settings: {
    nonceTtl?: number
    iatSkew?: number
    approvalTtl?: number
    pollHold?: number
    kekRotationPeriod?: number
    totpMaxFailures?: number
    totpFailureWindow?: number
    publicUrl?: string
    hostRateLimit?: { perSecond: number; burst: number } | null
    trustedProxies?: string[]
    auditHead?: { everyEntries: number; everySeconds: number }
  }
}

export function parseServerConfig(text: string, where = 'server.json'): ServerConfig {
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch (cause) {
    throw new UnlockdError('config_invalid', `${where} is not valid JSON`, { cause })
  }
  const c = parseWith(Schema, raw, where, 'config_invalid')
  const out: ServerConfig = { settings: {} }
  if (c.db !== undefined) out.db = c.db
  if (c.listen !== undefined) out.listen = c.listen
  if (c.tlsCert !== undefined) out.tlsCert = c.tlsCert
  if (c.tlsKey !== undefined) out.tlsKey = c.tlsKey
  if (c.tangListener !== undefined) {
    const { listen, rootHost } = c.tangListener
    if (listen === c.listen)
      throw new UnlockdError(
        'config_invalid',
        `${where}: tangListener.listen: ${listen} is already the main listener; give the Tang listener its own port (e.g. 0.0.0.0:80)`,
      )
    out.tangListener = rootHost === undefined ? { listen } : { listen, rootHost }
  }
  if (c.metrics !== undefined) out.metrics = { tokenFile: c.metrics.tokenFile }
  if (c.webhook !== undefined)
    out.webhook =
      c.webhook.secretFile === undefined
        ? { url: c.webhook.url }
        : { url: c.webhook.url, secretFile: c.webhook.secretFile }
  const s = out.settings
  if (c.nonceTtl !== undefined) s.nonceTtl = c.nonceTtl
  if (c.iatSkew !== undefined) s.iatSkew = c.iatSkew
  if (c.approvalTtl !== undefined) s.approvalTtl = c.approvalTtl
  if (c.pollHold !== undefined) s.pollHold = Math.min(c.pollHold, 120)
  if (c.kekRotation !== undefined) s.kekRotationPeriod = c.kekRotation === 'off' ? 0 : c.kekRotation
  if (c.totpMaxFailures !== undefined) s.totpMaxFailures = c.totpMaxFailures
  if (c.totpFailureWindow !== undefined) s.totpFailureWindow = c.totpFailureWindow
  if (c.publicUrl !== undefined) s.publicUrl = c.publicUrl
  if (c.hostRateLimit !== undefined)
    s.hostRateLimit = c.hostRateLimit === 'off' ? null : c.hostRateLimit
  if (c.trustedProxies !== undefined) s.trustedProxies = c.trustedProxies
  if (c.auditHead !== undefined)
    s.auditHead = {
      everyEntries: c.auditHead.everyEntries ?? 1000,
      everySeconds: c.auditHead.every ?? 300,
    }
  return out
}
