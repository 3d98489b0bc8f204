/**
 * Private temporary directories for tests: mode 0700 under os.tmpdir(), removed at teardown.
 *
 * @example
 * ```ts
 * const dir = await tempDir(t)
 * ```
 */
import type { ExecutionContext } from 'ava'
import { chmod, mkdtemp, readFile, rm } from 'node:fs/promises'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

/** Mount points at or below `dir` (from /proc/self/mountinfo). */
async function mountsUnder(dir: string): Promise<string[]> {
  const text = await readFile('/proc/self/mountinfo', 'utf8').catch(() => '')
  return text
    .split('\n')
    .map((line) =>
      (line.split(' ')[4] ?? '').replace(/\\([0-7]{3})/g, (_, o: string) =>
        String.fromCharCode(parseInt(o, 8)),
      ),
    )
    .filter((mp) => mp === dir || mp.startsWith(`${dir}/`))
}

/**
 * Make a fresh 0700 directory and remove it when the test ends. Teardowns run last-in
 * first-out, so register unmounts after calling this. If something is still mounted below
 * it, the directory is left in place (with a warning) rather than deleting into a mount.
 */
export async function tempDir(
  t: Pick<ExecutionContext<unknown>, 'teardown'>,
  prefix = 'unlockd-test-',
): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), prefix))
  await chmod(dir, 0o700) // mkdtemp already uses 0700; make the intent explicit
  t.teardown(async () => {
    const mounts = await mountsUnder(dir)
    if (mounts.length > 0) {
      console.warn(`tempDir: not removing ${dir}, still mounted: ${mounts.join(', ')}`)
      return
    }
    await rm(dir, { recursive: true, force: true })
  })
  return dir
}
