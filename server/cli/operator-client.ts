/**
 * How operator commands reach the server: URL and API token from flags, the environment
 * (UNLOCKD_URL, UNLOCKD_TOKEN or UNLOCKD_TOKEN_FILE, UNLOCKD_CA) or a config file
 * (`--config`, UNLOCKD_CONFIG, default ~/.config/unlockd/cli.json: {"url","tokenFile","ca"}).
 */
import { readFileSync, existsSync } from 'node:fs'
import { homedir } from 'node:os'
import { join } from 'node:path'
import * as v from 'valibot'
import { UnlockdError } from '../../shared/errors.ts'
import { parseWith } from '../../shared/protocol/validate.ts'
import { errorFromResponse, type Transport } from '../../shared/client/transport.ts'
import {
  ACTION_HEADER,
  ACTION_ID_RE,
  parseActionPending,
  type ActionView,
} from '../../shared/protocol/actions.ts'
import { nodeTransport } from '../../platform/node-transport.ts'
import type { CliIo, Options, Values } from '../../platform/cli.ts'

export const CLIENT_OPTIONS: Options = {
  url: { type: 'string' },
  'token-file': { type: 'string' },
  ca: { type: 'string' },
  config: { type: 'string' },
}

/** `--action ID`: collect the result of an approved quorum action (commands whose result is yours). */
export const ACTION_OPTION: Options = { action: { type: 'string' } }

/**
 * What the CLI says when the server opened a quorum action instead of running the command (the
 * error `approval_pending` exits with the "pending" status).
 */
export function pendingError(a: ActionView): UnlockdError {
  const then = a.collect
    ? `; once approved, run this command again with --action ${a.id} (and a fresh code) to get the result`
    : '; it runs when the last approval arrives'
  return new UnlockdError(
    'approval_pending',
    `${a.summary}: needs ${a.required} approvers (${a.approvedBy.join(', ')} so far). Action ${a.id} waits until ${new Date(a.expiresAt * 1000).toISOString()}; another operator approves it with \`unlockd approve ${a.id}\`${then}`,
  )
}

const ConfigSchema = v.strictObject({
  url: v.optional(v.pipe(v.string(), v.url())),
  tokenFile: v.optional(v.string()),
  ca: v.optional(v.string()),
})

export interface OperatorClient {
  url: string
  /** One admin API call; `reply` checks the success body (a parser from shared/protocol). */
  call<T>(
    method: 'GET' | 'POST' | 'PATCH' | 'DELETE',
    path: string,
    reply: (body: unknown) => T,
    body?: unknown,
    opts?: CallOptions,
  ): Promise<T>
}

export interface CallOptions {
  timeoutMs?: number
  /** The operator's own TOTP code, sent in X-Unlockd-Totp (never argv; see ./totp-code.ts). */
  totp?: string
}

function readText(path: string, what: string): string {
  try {
    return readFileSync(path, 'utf8')
  } catch (cause) {
    throw new UnlockdError('config_invalid', `cannot read ${what} ${path}`, { cause })
  }
}

/** Where the server is and how to reach it: URL, CA, and the API token when one is configured. */
export interface ServerTarget {
  url: string
  token: string | undefined
  transport: Transport
}

export function serverTarget(values: Values, io: CliIo): ServerTarget {
  const cfgPath =
    (values['config'] as string | undefined) ??
    io.env['UNLOCKD_CONFIG'] ??
    join(io.env['HOME'] ?? homedir(), '.config/unlockd/cli.json')
  let cfg: v.InferOutput<typeof ConfigSchema> = {}
  if (existsSync(cfgPath)) {
    let raw: unknown
    try {
      raw = JSON.parse(readText(cfgPath, 'config'))
    } catch (cause) {
      if (cause instanceof UnlockdError) throw cause
      throw new UnlockdError('config_invalid', `${cfgPath} is not valid JSON`, { cause })
    }
    cfg = parseWith(ConfigSchema, raw, cfgPath, 'config_invalid')
  }
  const url = (values['url'] as string | undefined) ?? io.env['UNLOCKD_URL'] ?? cfg.url
  if (!url)
    throw new UnlockdError(
      'usage',
      'no server URL: pass --url, set UNLOCKD_URL, or write "url" in ~/.config/unlockd/cli.json',
    )
  const tokenFile =
    (values['token-file'] as string | undefined) ?? io.env['UNLOCKD_TOKEN_FILE'] ?? cfg.tokenFile
  const token = tokenFile ? readText(tokenFile, 'token file').trim() : io.env['UNLOCKD_TOKEN']
  const caPath = (values['ca'] as string | undefined) ?? io.env['UNLOCKD_CA'] ?? cfg.ca
  const transport = nodeTransport(url, { ca: caPath ? readText(caPath, 'CA file') : undefined })
  return { url, token: token === '' ? undefined : token, transport }
}

export function operatorClient(values: Values, io: CliIo): OperatorClient {
  const { url, token, transport: t } = serverTarget(values, io)
  if (!token)
    throw new UnlockdError(
      'unauthorized',
      'no operator token: set UNLOCKD_TOKEN or UNLOCKD_TOKEN_FILE (never pass tokens as arguments)',
    )
  const action = values['action'] as string | undefined
  if (action !== undefined && !ACTION_ID_RE.test(action))
    throw new UnlockdError(
      'usage',
      '--action must be an action id (qa_..., see `unlockd approvals`)',
    )
  const headers = (totp: string | undefined): Record<string, string> => ({
    ...(totp ? { 'x-unlockd-totp': totp } : {}),
    ...(action ? { [ACTION_HEADER]: action } : {}),
  })
  return {
    url,
    async call(method, path, reply, body, opts = {}) {
      const res = await t({
        method,
        path: `/v1/admin${path}`,
        bearer: token,
        ...(body === undefined ? {} : { body }),
        ...(opts.timeoutMs ? { timeoutMs: opts.timeoutMs } : {}),
        headers: headers(opts.totp),
      })
      if (res.status < 200 || res.status >= 300) throw errorFromResponse(res, `${method} ${path}`)
      // 202 { action }: the server opened a quorum action instead of running the command.
      if (
        res.status === 202 &&
        typeof res.body === 'object' &&
        res.body !== null &&
        'action' in res.body
      )
        throw pendingError(parseActionPending(res.body).action)
      return reply(res.body)
    },
  }
}
