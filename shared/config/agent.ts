/**
 * agent.json: the host's enrollment record. Parse, then defaults, then validate; pure (the agent
 * reads and writes the file). Written by `unlockd enroll`, read by every host verb and copied
 * into the initramfs.
 */
import * as v from 'valibot'
import { UnlockdError } from '../errors.ts'
import { parseSigningPublicKey, type PublicOkpJwk } from '../crypto/keys.ts'
import { hostId, name, parseWith } from '../protocol/validate.ts'

const digest = v.pipe(
  v.string(),
  v.regex(/^[A-Za-z0-9_-]{43}$/, 'must be a SHA-256 digest (base64url)'),
)
const absPath = v.pipe(
  v.string(),
  v.minLength(1),
  v.maxLength(4096),
  v.check(
    (s) => s.startsWith('/') || /^(UUID|PARTUUID|LABEL)=/.test(s),
    'must be an absolute path or UUID=...',
  ),
)

export const LuksVolumeSchema = v.strictObject({
  name,
  kind: v.literal('luks'),
  device: absPath,
  uuid: v.pipe(v.string(), v.regex(/^[0-9a-fA-F-]{1,64}$/)),
  keyslot: v.pipe(v.number(), v.integer(), v.minValue(0), v.maxValue(31)),
  blobDigest: digest,
})
export const FscryptVolumeSchema = v.strictObject({
  name,
  kind: v.literal('fscrypt'),
  path: absPath,
  mountpoint: absPath,
  keyId: v.pipe(v.string(), v.regex(/^[0-9a-f]{32}$/, 'must be a 16-byte hex key identifier')),
  blobDigest: digest,
})
export const VolumeConfigSchema = v.variant('kind', [LuksVolumeSchema, FscryptVolumeSchema])
export type LuksVolumeConfig = v.InferOutput<typeof LuksVolumeSchema>
export type FscryptVolumeConfig = v.InferOutput<typeof FscryptVolumeSchema>
export type VolumeConfig = LuksVolumeConfig | FscryptVolumeConfig

export const ServerEntrySchema = v.strictObject({
  url: v.pipe(v.string(), v.url('must be a URL'), v.regex(/^https?:\/\//, 'must be http(s)')),
  /** CA or self-signed certificate file (relative to the config dir) to pin; null = system CAs. */
  ca: v.optional(v.nullable(v.pipe(v.string(), v.maxLength(4096))), null),
  /** Optional SHA-256 (base64) of the server key's SPKI, checked on top of the chain. */
  spkiSha256: v.optional(v.nullable(v.pipe(v.string(), v.regex(/^[A-Za-z0-9+/]{43}=$/))), null),
})
export type ServerEntry = v.InferOutput<typeof ServerEntrySchema>

const serverKey = v.pipe(
  v.unknown(),
  v.rawTransform(({ dataset, addIssue, NEVER }) => {
    try {
      return parseSigningPublicKey(dataset.value)
    } catch (e) {
      addIssue({ message: e instanceof Error ? e.message : 'invalid key' })
      return NEVER
    }
  }),
)

export const AgentConfigSchema = v.strictObject({
  version: v.literal(1),
  name,
  hostId,
  servers: v.pipe(
    v.array(ServerEntrySchema),
    v.minLength(1, 'needs at least one server'),
    v.maxLength(8),
  ),
  volumes: v.pipe(v.array(VolumeConfigSchema), v.maxLength(64)),
  /**
   * Pinned server verdict keys (Ed25519 public JWKs): the agent runs its kill switch only on a
   * verdict signed by one of them. Set at enrollment; a host enrolled before signed verdicts
   * has none and pins the key of its next signed release (trust on first use).
   */
  serverKeys: v.optional(v.pipe(v.array(serverKey), v.maxLength(8)), []),
  /** What the kill switch does to LUKS volumes: close the mapping first, or only erase headers. */
  onShred: v.optional(v.picklist(['close-then-erase', 'erase']), 'close-then-erase'),
  /** Longest wait for an approval in one-shot unlocks, seconds. */
  unlockWait: v.optional(v.pipe(v.number(), v.integer(), v.minValue(1), v.maxValue(86400)), 300),
  /** Per-server timeout for one request, milliseconds. */
  requestTimeoutMs: v.optional(
    v.pipe(v.number(), v.integer(), v.minValue(200), v.maxValue(120000)),
    5000,
  ),
})
export type AgentConfig = Omit<v.InferOutput<typeof AgentConfigSchema>, 'serverKeys'> & {
  serverKeys: PublicOkpJwk[]
}

export function parseAgentConfig(text: string, where = 'agent.json'): AgentConfig {
  let raw: unknown
  try {
    raw = JSON.parse(text)
  } catch (cause) {
    throw new UnlockdError('config_invalid', `${where} is not valid JSON`, { cause })
  }
  const c = parseWith(AgentConfigSchema, raw, where, 'config_invalid') as AgentConfig
  const seen = new Set<string>()
  for (const vol of c.volumes) {
    if (seen.has(vol.name))
      throw new UnlockdError('config_invalid', `${where}: volume name ${vol.name} appears twice`)
    seen.add(vol.name)
  }
  return c
}
