/**
 * The C library through koffi, for the few calls Node lacks (ioctl for fscrypt, datagram sockets
 * for sd-notify). Callers import koffi lazily themselves, so it is loaded only when one of them
 * runs, and decide what a missing koffi means for them.
 */
import type Koffi from 'koffi'

/** glibc's libc.so.6, else musl's libc.so. */
export function openLibc(koffi: typeof Koffi): ReturnType<typeof Koffi.load> {
  try {
    return koffi.load('libc.so.6')
  } catch {
    return koffi.load('libc.so') // musl
  }
}
