/**
 * The Transport used by the agent and the operator CLI: node:http/https with the server's CA
 * (or self-signed certificate) pinned from a file, optional SPKI pin, no redirects, bounded
 * time and size, and errors that say what went wrong (refused, timeout, TLS pin mismatch).
 *
 * One transport keeps one connection: its requests (the agent's nonce, unlock and approval
 * polls to one server) go over a single keep-alive socket, so an exchange pays one TCP and one
 * TLS handshake instead of one per request, and a later connection resumes the TLS session.
 * The idle socket is unref'd (it never holds the process open) and dropped after IDLE_MS, below
 * the server's keep-alive timeout. A request that fails because the server closed the idle
 * socket just as it was reused (reset before any answer byte) is sent again (twice at most): the server never read it, and a signed request carries its single-use nonce, so
 * replay protection is the server's as before.
 */
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http'
import { Agent as HttpsAgent, request as httpsRequest, type RequestOptions } from 'node:https'
import { createHash, X509Certificate } from 'node:crypto'
import type { PeerCertificate } from 'node:tls'
import { UnlockdError } from '../shared/errors.ts'
import type { Transport, TransportRequest, TransportResponse } from '../shared/client/transport.ts'

export interface NodeTransportOptions {
  /** PEM of the CA or self-signed server certificate to trust (instead of the system store). */
  ca?: string | undefined
  /** base64 SHA-256 of the server certificate's SubjectPublicKeyInfo, checked after the chain. */
  spkiSha256?: string | undefined
  timeoutMs?: number
}

const MAX_RESPONSE = 1024 * 1024
/** An idle kept-alive socket closes after this long (the server's keepAliveTimeout is 5 s). */
const IDLE_MS = 2000

function spkiOf(cert: PeerCertificate): string | undefined {
  try {
    const x = new X509Certificate(cert.raw)
    return createHash('sha256')
      .update(x.publicKey.export({ type: 'spki', format: 'der' }))
      .digest('base64')
  } catch {
    return undefined
  }
}

export function nodeTransport(baseUrl: string, opts: NodeTransportOptions = {}): Transport {
  const base = new URL(baseUrl)
  if (base.protocol !== 'http:' && base.protocol !== 'https:')
    throw new UnlockdError('config_invalid', `server URL must be http(s): ${baseUrl}`)
  const prefix = base.pathname.replace(/\/+$/, '')
  const pool = { keepAlive: true, maxFreeSockets: 1, timeout: IDLE_MS, scheduling: 'lifo' as const }
  const agent = base.protocol === 'https:' ? new HttpsAgent(pool) : new HttpAgent(pool)
  const send = (req: TransportRequest, retries: number): Promise<TransportResponse> =>
    new Promise<TransportResponse>((settle, fail) => {
      // Listeners and timers go when the request settles (its 'close' may come a tick later).
      let cleanup = (): void => undefined
      const resolve = (v: TransportResponse): void => {
        cleanup()
        settle(v)
      }
      const reject = (e: unknown): void => {
        cleanup()
        fail(e)
      }
      const body = req.body === undefined ? undefined : Buffer.from(JSON.stringify(req.body))
      const headers: Record<string, string> = {
        ...req.headers,
        accept: 'application/json',
      }
      if (body) {
        headers['content-type'] = 'application/json'
        headers['content-length'] = String(body.byteLength)
      }
      if (req.bearer) headers['authorization'] = `Bearer ${req.bearer}`
      const options: RequestOptions = {
        protocol: base.protocol,
        hostname: base.hostname.replace(/^\[|\]$/g, ''),
        port: base.port || (base.protocol === 'https:' ? 443 : 80),
        path: prefix + req.path,
        method: req.method,
        headers,
        agent,
      }
      if (base.protocol === 'https:') {
        if (opts.ca) options.ca = opts.ca
        options.rejectUnauthorized = true
        options.minVersion = 'TLSv1.2'
        if (opts.spkiSha256) {
          const want = opts.spkiSha256
          options.checkServerIdentity = (_host, cert) => {
            const got = spkiOf(cert)
            if (got !== want)
              return new Error(
                `TLS pin mismatch: server key sha256 ${got ?? '?'} is not the pinned ${want}`,
              )
            return undefined
          }
        }
      }
      const timeout = req.timeoutMs ?? opts.timeoutMs ?? 10_000
      let answered = false
      const r = (base.protocol === 'https:' ? httpsRequest : httpRequest)(
        options,
        (res: IncomingMessage) => {
          answered = true
          const chunks: Buffer[] = []
          let size = 0
          res.on('data', (c: Buffer) => {
            size += c.byteLength
            if (size > MAX_RESPONSE) r.destroy(new Error('response too large'))
            else chunks.push(c)
          })
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8')
            if (res.statusCode !== undefined && res.statusCode >= 300 && res.statusCode < 400) {
              reject(
                new UnlockdError(
                  'protocol_invalid',
                  `server answered a redirect (${res.statusCode}); redirects are not followed`,
                ),
              )
              return
            }
            try {
              resolve({
                status: res.statusCode ?? 0,
                body: text.length ? (JSON.parse(text) as unknown) : undefined,
              })
            } catch (cause) {
              reject(
                new UnlockdError(
                  'protocol_invalid',
                  `server answered ${res.statusCode} with a body that is not JSON`,
                  { cause },
                ),
              )
            }
          })
          res.on('error', (e) => reject(classify(e, baseUrl)))
        },
      )
      const timer = setTimeout(
        () =>
          r.destroy(
            Object.assign(new Error(`timed out after ${timeout} ms`), { code: 'ETIMEDOUT' }),
          ),
        timeout,
      )
      r.on('error', (e: Error & { code?: string }) => {
        if (
          retries > 0 &&
          r.reusedSocket &&
          !answered &&
          (e.code === 'ECONNRESET' || e.code === 'EPIPE')
        ) {
          cleanup()
          settle(send(req, retries - 1))
          return
        }
        reject(classify(e, baseUrl))
      })
      // One long-lived signal (the agent's) spans many requests: each request's listener goes
      // away with the request, or they pile up on the signal.
      const signal = req.signal
      const onAbort = (): void =>
        void r.destroy(Object.assign(new Error('aborted'), { code: 'ABORT_ERR' }))
      cleanup = () => {
        clearTimeout(timer)
        signal?.removeEventListener('abort', onAbort)
      }
      r.on('close', cleanup)
      if (signal) {
        if (signal.aborted) onAbort()
        else signal.addEventListener('abort', onAbort, { once: true })
      }
      r.end(body)
    })
  return (req) => send(req, 2)
}

function classify(e: Error & { code?: string }, url: string): UnlockdError {
  const msg = e.message
  if (/pin mismatch/.test(msg))
    return new UnlockdError('tls_pin_mismatch', `${url}: ${msg}`, { cause: e })
  if (e.code && /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS|HOSTNAME/.test(e.code)) {
    return new UnlockdError(
      'tls_pin_mismatch',
      `${url}: TLS verification failed (${e.code}); check the pinned CA file`,
      { cause: e },
    )
  }
  const why =
    e.code === 'ECONNREFUSED'
      ? 'connection refused'
      : e.code === 'ETIMEDOUT'
        ? msg
        : e.code === 'ABORT_ERR'
          ? 'aborted'
          : `${e.code ?? ''} ${msg}`.trim()
  return new UnlockdError('server_unreachable', `cannot reach ${url}: ${why}`, { cause: e })
}
