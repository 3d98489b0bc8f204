/**
 * The import matrix of the layers, enforced on the source tree:
 * shared/ is pure (no server/, agent/, platform/, hono, node:fs, node:child_process);
 * agent/ never imports server/ or hono (its bundle goes into every initramfs);
 * server/ never imports agent/; platform/ imports neither side.
 */
import test from 'ava'
import { readdirSync, readFileSync, statSync } from 'node:fs'
import { join, relative } from 'node:path'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('../../', import.meta.url))

function files(dir: string): string[] {
  return readdirSync(join(root, dir)).flatMap((n) => {
    const p = join(dir, n)
    return statSync(join(root, p)).isDirectory() ? files(p) : p.endsWith('.ts') ? [p] : []
  })
}

function imports(file: string): string[] {
  const src = readFileSync(join(root, file), 'utf8')
  return [
    ...src.matchAll(
      /(?:import|export)[^'"]*?from\s+['"]([^'"]+)['"]|import\(\s*['"]([^'"]+)['"]\s*\)/g,
    ),
  ].map((m) => (m[1] ?? m[2]) as string)
}

function resolvesInto(file: string, spec: string, dir: string): boolean {
  if (!spec.startsWith('.')) return false
  return relative(root, join(root, file, '..', spec)).startsWith(dir + '/')
}

const RULES: { from: string; banned: (file: string, spec: string) => boolean; why: string }[] = [
  {
    from: 'shared',
    banned: (f, s) =>
      ['server', 'agent', 'platform'].some((d) => resolvesInto(f, s, d)) ||
      /^(hono|@hono\/|node:fs|node:child_process|fs|child_process|better-sqlite3|pg)(\/|$)/.test(s),
    why: 'shared/ is pure and importable by both sides',
  },
  {
    from: 'agent',
    banned: (f, s) =>
      resolvesInto(f, s, 'server') || /^(hono|@hono\/|better-sqlite3|pg)(\/|$)/.test(s),
    why: 'the agent bundle ships in the initramfs and must not carry server code',
  },
  {
    from: 'server',
    banned: (f, s) => resolvesInto(f, s, 'agent'),
    why: 'the server never runs host code',
  },
  {
    from: 'platform',
    banned: (f, s) => resolvesInto(f, s, 'server') || resolvesInto(f, s, 'agent'),
    why: 'platform/ serves both sides',
  },
]

for (const rule of RULES) {
  test(`${rule.from}/ respects the import matrix`, (t) => {
    const bad = files(rule.from).flatMap((f) =>
      imports(f)
        .filter((s) => rule.banned(f, s))
        .map((s) => `${f} imports ${s}`),
    )
    t.deepEqual(bad, [], rule.why)
  })
}

test('agent/exec.ts is the only agent module that spawns processes', (t) => {
  const spawners = files('agent').filter(
    (f) => f !== 'agent/exec.ts' && imports(f).some((s) => s === 'node:child_process'),
  )
  t.deepEqual(spawners, [])
})
