/**
 * The initramfs refresh after agent.json changed: the rebuild tool the system has is run
 * (update-initramfs first, then dracut), a failure or a missing tool ends in the exact commands
 * to run by hand, and nothing runs inside the initramfs itself.
 */
import test from 'ava'
import { refreshInitramfs, type RefreshDeps } from '../../agent/initramfs-refresh.ts'

function fake(o: {
  tools?: string[]
  code?: number
  throws?: boolean
  initramfs?: boolean
}): RefreshDeps & { ran: string[] } {
  const ran: string[] = []
  return {
    ran,
    which: (n) => (o.tools?.includes(n) ? `/usr/sbin/${n}` : undefined),
    run: async (cmd, args) => {
      ran.push([cmd, ...args].join(' '))
      if (o.throws) throw new Error('spawn failed')
      return { code: o.code ?? 0, stderr: o.code ? 'no space left on device' : '' }
    },
    inInitramfs: () => o.initramfs === true,
  }
}

const MANUAL = /update-initramfs -u \(Debian, Ubuntu\) or dracut -f/

test('update-initramfs is run when present (before dracut)', async (t) => {
  const d = fake({ tools: ['update-initramfs', 'dracut'] })
  const lines: string[] = []
  t.is(await refreshInitramfs('pinned', (l) => lines.push(l), d), 'rebuilt')
  t.deepEqual(d.ran, ['/usr/sbin/update-initramfs -u'])
  t.true(lines.some((l) => /initramfs rebuilt/.test(l)))
})

test('dracut -f is run when it is the only tool', async (t) => {
  const d = fake({ tools: ['dracut'] })
  t.is(await refreshInitramfs('pinned', () => {}, d), 'rebuilt')
  t.deepEqual(d.ran, ['/usr/sbin/dracut -f'])
})

test('without either tool nothing runs and the operator is told the exact commands', async (t) => {
  const d = fake({})
  const lines: string[] = []
  t.is(await refreshInitramfs('pinned', (l) => lines.push(l), d), 'told')
  t.deepEqual(d.ran, [])
  t.regex(lines.join('\n'), MANUAL)
})

test('a failing or unrunnable rebuild is reported with the commands to run', async (t) => {
  for (const o of [{ code: 1 }, { throws: true }]) {
    const d = fake({ tools: ['update-initramfs'], ...o })
    const lines: string[] = []
    t.is(await refreshInitramfs('pinned', (l) => lines.push(l), d), 'told')
    t.is(d.ran.length, 1)
    t.regex(lines.join('\n'), o.code ? /failed \(exit 1\): no space left/ : /could not run/)
    t.regex(lines.join('\n'), MANUAL)
  }
})

test('inside the initramfs nothing is run', async (t) => {
  const d = fake({ tools: ['update-initramfs'], initramfs: true })
  t.is(await refreshInitramfs('pinned', () => {}, d), 'skipped')
  t.deepEqual(d.ran, [])
})
