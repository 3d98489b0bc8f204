/**
 * Node 18 (Debian 12's nodejs) has WebCrypto only as `require('node:crypto').webcrypto`;
 * `globalThis.crypto` arrived in Node 19. shared/ and jose use the global, so the agent entry
 * point imports this module first. It defines the global only when it is missing and never
 * touches warnings or flags. Ed25519 and X25519 are not taken from WebCrypto at all
 * (shared/crypto/okp.ts), because on Node 18 they are experimental.
 */
import { webcrypto } from 'node:crypto'

if (globalThis.crypto === undefined) {
  Object.defineProperty(globalThis, 'crypto', {
    value: webcrypto,
    configurable: true,
    enumerable: false,
    writable: true,
  })
}
