/**
 * The one place where algorithms are chosen. Nothing is negotiated: every verify and decrypt
 * passes these allow-lists, so a message that names another algorithm is rejected.
 */
export const SIGNING_ALG = 'EdDSA' as const
export const SIGNING_CRV = 'Ed25519' as const
export const SEALING_ALG = 'ECDH-ES+A256KW' as const
export const SEALING_CRV = 'X25519' as const
export const CONTENT_ENC = 'A256GCM' as const

/** JWS `typ` values; a signature made for one purpose never verifies for another. */
export const JWS_TYP = {
  unlock: 'unlockd-unlock+jws',
  enroll: 'unlockd-enroll+jws',
  poll: 'unlockd-poll+jws',
  watch: 'unlockd-watch+jws',
  report: 'unlockd-report+jws',
  volumes: 'unlockd-volumes+jws',
  /** Server → host: a signed verdict (shred order, final denial, release proof). */
  verdict: 'unlockd-verdict+jws',
  encryption: 'unlockd-encryption+jws',
} as const
export type JwsPurpose = keyof typeof JWS_TYP

/** Content type of an escrow blob's plaintext (a raw volume key). */
export const BLOB_CTY = 'unlockd-vk'

/** Content type of a released blob wrapped once more to an unlock attempt's ephemeral key. */
export const RELEASE_CTY = 'unlockd-release'
