/**
 * LUKS image fixtures: a file formatted with a fast PBKDF (pbkdf2, 1000 iterations), so
 * luksFormat takes ~0.1 s instead of ~15 s. The key goes to cryptsetup on stdin.
 *
 * @example
 * ```ts
 * const dir = await tempDir(t)
 * const img = await makeLuksImage(dir, key)              // LUKS2, 32 MiB
 * const old = await makeLuksImage(dir, key, { type: 'luks1', name: 'old.img' })
 * ```
 */
import { writeFile, truncate } from 'node:fs/promises'
import { join } from 'node:path'
import { mustRun } from './root.ts'

export interface LuksImageOptions {
  type?: 'luks1' | 'luks2'
  /** Image size; LUKS2 needs 16 MiB of header, so at least 20. Default 32. */
  sizeMiB?: number
  /** File name inside `dir`. Default `disk.img`. */
  name?: string
}

/** Fast, insecure PBKDF for fixtures only. Same as agent/volumes/luks.ts FAST_TEST_PBKDF. */
export const FIXTURE_PBKDF = ['--pbkdf', 'pbkdf2', '--pbkdf-force-iterations', '1000'] as const

/** Create `dir/name` and luksFormat it with `key` as keyslot 0; returns its path. */
export async function makeLuksImage(
  dir: string,
  key: Uint8Array,
  opts: LuksImageOptions = {},
): Promise<string> {
  const path = join(dir, opts.name ?? 'disk.img')
  await writeFile(path, '', { mode: 0o600, flag: 'wx' })
  await truncate(path, (opts.sizeMiB ?? 32) * 1024 * 1024)
  await mustRun(
    'cryptsetup',
    [
      'luksFormat',
      '--type',
      opts.type ?? 'luks2',
      '--batch-mode',
      ...FIXTURE_PBKDF,
      '--key-file',
      '-',
      path,
    ],
    key,
  )
  return path
}

/** `cryptsetup luksDump --dump-json-metadata` of `path`, parsed (for assertions). */
export async function luksMetadata(
  path: string,
): Promise<{ keyslots: Record<string, unknown>; tokens: Record<string, unknown> }> {
  return JSON.parse(await mustRun('cryptsetup', ['luksDump', '--dump-json-metadata', path])) as {
    keyslots: Record<string, unknown>
    tokens: Record<string, unknown>
  }
}
