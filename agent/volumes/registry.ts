/**
 * The one place that maps a volume kind to its VolumeBackend. Everything else in the agent asks
 * the backend of a volume or request (`backendFor`) and never tests `kind` itself; a new kind is
 * a new backend module plus one line here.
 */
import type { LuksVolumeConfig, VolumeConfig } from '../../shared/config/agent.ts'
import type { VolumeBackend, VolumeKind, VolumeRequest } from './backend.ts'
import { luksBackend } from './luks-backend.ts'

type Loaders = { [K in VolumeKind]: () => Promise<VolumeBackend<K>> }

const loaders: Loaders = {
  luks: () => Promise.resolve(luksBackend),
  // Evaluated on first use only: the fscrypt module is the one that loads koffi, which a host
  // (or an initramfs) without fscrypt volumes never needs.
  fscrypt: async () => (await import('./fscrypt-backend.ts')).fscryptBackend,
}

/** The backend of a configured volume or of an enrollment request, by its kind. */
export function backendFor<V extends VolumeConfig | VolumeRequest>(
  v: V,
): Promise<VolumeBackend<V['kind']>> {
  return loaders[v.kind as V['kind']]()
}

/** Whether `vol` and `req` name the same device or directory (of the same kind). */
export async function sameTarget(vol: VolumeConfig, req: VolumeRequest): Promise<boolean> {
  if (vol.kind !== req.kind) return false
  const b = await backendFor(vol)
  return b.target(vol) === b.target(req)
}

/**
 * LUKS volumes are the ones cryptsetup opens itself when it asks for a passphrase (crypttab in
 * the initramfs, systemd ask-password) and the ones whose key is such a passphrase, so the agent
 * can answer for them or print the key (`unlock --key-stdout`).
 */
export function isLuksVolume(v: VolumeConfig): v is LuksVolumeConfig {
  return v.kind === 'luks'
}
