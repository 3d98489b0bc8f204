/**
 * The host's config directory (default /etc/unlockd, 0700): agent.json, signing.jwk and
 * sealing.jwk (0600), and an optional pinned CA. All writes are atomic.
 */
import { existsSync, readFileSync, statSync } from 'node:fs'
import { isAbsolute, join } from 'node:path'
import { UnlockdError } from '../shared/errors.ts'
import { parseAgentConfig, type AgentConfig, type ServerEntry } from '../shared/config/agent.ts'
import { parsePrivateKey, type HostKeys } from '../shared/crypto/keys.ts'
import { ensurePrivateDir, readFileIfExists, writeFileAtomic } from '../platform/atomic-file.ts'
import { nodeTransport } from '../platform/node-transport.ts'
import type { Transport } from '../shared/client/transport.ts'

export const DEFAULT_CONFIG_DIR = '/etc/unlockd'

export interface ConfigDir {
  dir: string
  configPath: string
  signingPath: string
  sealingPath: string
}

export function configDir(dir = DEFAULT_CONFIG_DIR): ConfigDir {
  return {
    dir,
    configPath: join(dir, 'agent.json'),
    signingPath: join(dir, 'signing.jwk'),
    sealingPath: join(dir, 'sealing.jwk'),
  }
}

function readJson(path: string, what: string): unknown {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as unknown
  } catch (cause) {
    throw new UnlockdError('config_invalid', `cannot read ${what} ${path}`, { cause })
  }
}

/** Refuse key files that others can read: they are the host's identity. */
function checkPrivate(path: string): void {
  const mode = statSync(path).mode & 0o777
  if (mode & 0o077)
    throw new UnlockdError(
      'config_invalid',
      `${path} is readable by group/others (mode ${mode.toString(8)}); run: chmod 600 ${path}`,
    )
}

export function loadKeys(c: ConfigDir): HostKeys | undefined {
  if (!existsSync(c.signingPath) && !existsSync(c.sealingPath)) return undefined
  for (const p of [c.signingPath, c.sealingPath]) {
    if (!existsSync(p))
      throw new UnlockdError(
        'config_invalid',
        `${p} is missing (the other host key exists): restore it from backup or re-enroll with a new config dir`,
      )
    checkPrivate(p)
  }
  return {
    signing: parsePrivateKey(readJson(c.signingPath, 'signing key'), 'signing'),
    sealing: parsePrivateKey(readJson(c.sealingPath, 'sealing key'), 'sealing'),
  }
}

export function saveKeys(c: ConfigDir, keys: HostKeys): void {
  ensurePrivateDir(c.dir)
  writeFileAtomic(c.sealingPath, JSON.stringify(keys.sealing) + '\n', 0o600)
  writeFileAtomic(c.signingPath, JSON.stringify(keys.signing) + '\n', 0o600)
}

export function loadConfig(c: ConfigDir): AgentConfig | undefined {
  const raw = readFileIfExists(c.configPath)
  if (!raw) return undefined
  return parseAgentConfig(raw.toString('utf8'), c.configPath)
}

export function requireEnrolled(c: ConfigDir): { config: AgentConfig; keys: HostKeys } {
  const config = loadConfig(c)
  const keys = loadKeys(c)
  if (!config || !keys)
    throw new UnlockdError(
      'not_enrolled',
      `this host is not enrolled (no ${config ? 'host keys' : 'agent.json'} in ${c.dir})`,
    )
  return { config, keys }
}

export function saveConfig(c: ConfigDir, config: AgentConfig): void {
  ensurePrivateDir(c.dir)
  // Round-trip through the parser so we never write a config we could not read back.
  const text = JSON.stringify(config, null, 2) + '\n'
  parseAgentConfig(text, c.configPath)
  writeFileAtomic(c.configPath, text, 0o600)
}

export function transportFor(c: ConfigDir, s: ServerEntry, timeoutMs: number): Transport {
  let ca: string | undefined
  if (s.ca) {
    const p = isAbsolute(s.ca) ? s.ca : join(c.dir, s.ca)
    try {
      ca = readFileSync(p, 'utf8')
    } catch (cause) {
      throw new UnlockdError('config_invalid', `cannot read pinned CA ${p}`, { cause })
    }
  }
  return nodeTransport(s.url, { ca, spkiSha256: s.spkiSha256 ?? undefined, timeoutMs })
}
