/**
 * Talking to the escrow servers: ask every configured server at once, take the first good
 * answer, and cancel the rest, so one dead server never delays a boot. A denial from any server
 * is final only if no other server releases. Approval waits continue on the server that asked.
 */
import { ERRORS, UnlockdError } from '../shared/errors.ts'
import type { AgentConfig, ServerEntry } from '../shared/config/agent.ts'
import type { HostKeys } from '../shared/crypto/keys.ts'
import {
  newAttempt,
  pollApproval,
  reportEncryption,
  requestUnlock,
  watch,
  report,
  type Attempt,
  type OpenedUnlock,
  type WatchOrder,
} from '../shared/client/host-client.ts'
import { thumbprint, type PublicOkpJwk } from '../shared/crypto/keys.ts'
import type { EncryptionPayload } from '../shared/protocol/encryption.ts'
import type { ReleasedVolume } from '../shared/protocol/messages.ts'
import type { Transport } from '../shared/client/transport.ts'
import { loadConfig, saveConfig, transportFor, type ConfigDir } from './config-dir.ts'
import { bootId } from './boot-id.ts'

export interface Progress {
  (
    event:
      | { kind: 'approval'; approvalId: string; server: string; rule: string }
      | { kind: 'attempt'; server: string; error: UnlockdError }
      | { kind: 'pinned'; server: string; thumbprint: string },
  ): void
}

/** The most informative of several servers' failures: highest ERRORS rank, a decision first. */
export function bestError(errors: UnlockdError[]): UnlockdError {
  return (
    [...errors].sort((a, b) => ERRORS[b.code].rank - ERRORS[a.code].rank)[0] ??
    new UnlockdError('server_unreachable', 'no escrow server configured')
  )
}

interface Answer {
  server: ServerEntry
  transport: Transport
  res: OpenedUnlock
}

/** Name the server in a refused verdict, so the log says where the forgery came from. */
function fromServer(e: UnlockdError, server: ServerEntry): UnlockdError {
  if (e.code !== 'verdict_unsigned') return e
  return new UnlockdError(
    'verdict_unsigned',
    e.message.replace(
      'refused an unsigned shred verdict',
      `refused an unsigned shred verdict from ${server.url}`,
    ),
  )
}

/**
 * Trust on first use for hosts enrolled before signed verdicts: the first release whose answer
 * is signed (for this request) by the key it carries pins that key in agent.json.
 */
async function pinFirstKey(
  c: ConfigDir,
  server: ServerEntry,
  key: PublicOkpJwk | undefined,
  progress?: Progress,
): Promise<void> {
  if (!key) return
  const current = loadConfig(c)
  if (!current || current.serverKeys.length > 0) return
  saveConfig(c, { ...current, serverKeys: [key] })
  progress?.({ kind: 'pinned', server: server.url, thumbprint: await thumbprint(key) })
}

/** One round over all servers. Resolves the first released/approval answer; throws the best error. */
export async function askOnce(
  c: ConfigDir,
  config: AgentConfig,
  keys: HostKeys,
  volumes: string[],
  progress?: Progress,
  attempt?: Attempt,
): Promise<Answer> {
  const ac = new AbortController()
  const errors: UnlockdError[] = []
  const attempts = config.servers.map(async (server): Promise<Answer> => {
    try {
      const transport = transportFor(c, server, config.requestTimeoutMs)
      const res = await requestUnlock(transport, {
        keys,
        hostId: config.hostId,
        bootId: bootId(),
        volumes,
        ...(attempt ? { attempt } : {}),
        signal: ac.signal,
        timeoutMs: config.requestTimeoutMs,
      })
      return { server, transport, res }
    } catch (err) {
      const e =
        err instanceof UnlockdError
          ? fromServer(err, server)
          : new UnlockdError(
              'server_unreachable',
              `${server.url}: ${err instanceof Error ? err.message : String(err)}`,
            )
      if (!ac.signal.aborted) {
        errors.push(e)
        progress?.({ kind: 'attempt', server: server.url, error: e })
      }
      throw e
    }
  })
  try {
    const first = await Promise.any(attempts)
    ac.abort()
    return first
  } catch {
    throw bestError(errors)
  }
}

/**
 * Ask until released, following an approval with long-polls for up to `waitSeconds`.
 * Throws `approval_pending` when the wait runs out, or the server's denial.
 */
export async function obtainRelease(
  c: ConfigDir,
  config: AgentConfig,
  keys: HostKeys,
  volumes: string[],
  waitSeconds: number,
  progress?: Progress,
  signal?: AbortSignal,
): Promise<ReleasedVolume[]> {
  // One ephemeral key per attempt, in memory only: the release is wrapped to it.
  const attempt = await newAttempt(config.serverKeys)
  const first = await askOnce(c, config, keys, volumes, progress, attempt)
  if (first.res.status === 'released') {
    await pinFirstKey(c, first.server, first.res.serverKey, progress)
    return first.res.volumes
  }
  const approval = first.res.approval
  progress?.({
    kind: 'approval',
    approvalId: approval.id,
    server: first.server.url,
    rule: approval.rule,
  })
  const deadline = Date.now() + waitSeconds * 1000
  let failures = 0
  while (Date.now() < deadline && !signal?.aborted) {
    try {
      const res = await pollApproval(first.transport, {
        keys,
        hostId: config.hostId,
        bootId: bootId(),
        approvalId: approval.id,
        attempt,
        holdMs: Math.min(25_000, deadline - Date.now()),
        ...(signal ? { signal } : {}),
      })
      failures = 0
      if (res.status === 'released') {
        await pinFirstKey(c, first.server, res.serverKey, progress)
        return res.volumes
      }
    } catch (err) {
      const e =
        err instanceof UnlockdError
          ? fromServer(err, first.server)
          : new UnlockdError('server_unreachable', String(err))
      // A restarting server is normal: keep waiting with capped backoff. Denials are final.
      if (!ERRORS[e.code].retry) throw e
      progress?.({ kind: 'attempt', server: first.server.url, error: e })
      failures++
      await sleep(Math.min(10_000, 500 * 2 ** Math.min(failures, 5)), signal)
    }
  }
  throw new UnlockdError(
    'approval_pending',
    `still waiting for approval ${approval.id} after ${waitSeconds}s (rule ${approval.rule})`,
    { details: { approval: approval.id } },
  )
}

export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms)
    signal?.addEventListener(
      'abort',
      () => {
        clearTimeout(t)
        resolve()
      },
      { once: true },
    )
  })
}

/** Long-poll the first reachable server for orders (the kill-switch channel). */
export async function watchOnce(
  c: ConfigDir,
  config: AgentConfig,
  keys: HostKeys,
  signal?: AbortSignal,
): Promise<{ server: ServerEntry; res: WatchOrder }> {
  const errors: UnlockdError[] = []
  for (const server of config.servers) {
    try {
      const res = await watch(transportFor(c, server, config.requestTimeoutMs), {
        keys,
        hostId: config.hostId,
        bootId: bootId(),
        serverKeys: config.serverKeys,
        ...(signal ? { signal } : {}),
      })
      return { server, res }
    } catch (err) {
      errors.push(
        err instanceof UnlockdError
          ? fromServer(err, server)
          : new UnlockdError('server_unreachable', String(err)),
      )
    }
  }
  throw bestError(errors)
}

export async function reportTo(
  c: ConfigDir,
  config: AgentConfig,
  keys: HostKeys,
  event: 'shred_done' | 'shred_failed',
  actions: string[],
): Promise<void> {
  for (const server of config.servers) {
    try {
      await report(transportFor(c, server, config.requestTimeoutMs), {
        keys,
        hostId: config.hostId,
        event,
        actions,
      })
      return
    } catch {
      /* try the next server */
    }
  }
}

/** Send one encryption progress report to the first server that takes it; throws the best error. */
export async function reportEncryptionTo(
  c: ConfigDir,
  config: AgentConfig,
  keys: HostKeys,
  r: Omit<EncryptionPayload, 'v' | 'host' | 'nonce' | 'iat'>,
): Promise<void> {
  const errors: UnlockdError[] = []
  for (const server of config.servers) {
    try {
      await reportEncryption(transportFor(c, server, config.requestTimeoutMs), {
        keys,
        hostId: config.hostId,
        report: r,
      })
      return
    } catch (err) {
      errors.push(
        err instanceof UnlockdError ? err : new UnlockdError('server_unreachable', String(err)),
      )
    }
  }
  throw bestError(errors)
}
