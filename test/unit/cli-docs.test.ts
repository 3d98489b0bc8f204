/**
 * Man pages and shell completion come from the command table: every command appears, man(1)
 * renders each page without a warning, bash completes verbs, sub-verbs, options and file
 * names, and the zsh function parses.
 */
import test, { type ExecutionContext } from 'ava'
import { writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { agentCommands } from '../../agent/cli/index.ts'
import { bashCompletion, manPage, zshCompletion } from '../../platform/cli-docs.ts'
import { serverCommands } from '../../server/cli/index.ts'
import { findBin, tool } from '../helpers/root.ts'
import { tempDir } from '../helpers/tmp.ts'

const all = [...serverCommands, ...agentCommands]
const inCi = (process.env['CI'] ?? '') !== ''
const needs = (bin: string) => (findBin(bin) !== undefined || inCi ? test : test.skip)

needs('man')('man renders the page without warnings, with every command and option', async (t) => {
  const dir = await tempDir(t)
  const page = manPage({
    name: 'unlockd-agent',
    section: 8,
    title: 'unlockd-agent - test page',
    description: ['A paragraph with a leading .dot and a back\\slash.'],
    commands: agentCommands,
    sections: [{ heading: 'Exit status', paragraphs: ['0 ok'] }],
    seeAlso: ['unlockd(1)'],
    version: '0.0.0',
    date: '2026-01-01',
  })
  const file = join(dir, 'unlockd-agent.8')
  await writeFile(file, page)
  const r = await tool('env', ['MANWIDTH=2000', 'man', '--warnings', '-l', file])
  t.is(r.code, 0, r.stderr)
  t.is(r.stderr, '', 'man reports no warning')
  const text = r.stdout.replace(/\s+/g, ' ')
  for (const c of agentCommands) {
    t.true(text.includes(c.usage.replace(/\s+/g, ' ')), `synopsis has ${c.usage}`)
    for (const o of Object.keys(c.options)) t.true(text.includes(`--${o}`), `${c.name} --${o}`)
  }
  t.true(text.includes('A paragraph with a leading .dot and a back\\slash.'))
})

async function complete(t: ExecutionContext, words: string[]) {
  const dir = await tempDir(t)
  const file = join(dir, 'unlockd.bash')
  await writeFile(file, bashCompletion('unlockd', all))
  await writeFile(join(dir, 'unlockd.key'), '')
  const script = [
    `source ${JSON.stringify(file)}`,
    `cd ${JSON.stringify(dir)}`,
    `COMP_WORDS=(${words.map((w) => JSON.stringify(w)).join(' ')})`,
    `COMP_CWORD=${words.length - 1}`,
    '_unlockd',
    'printf "%s\\n" "${COMPREPLY[@]}"',
  ].join('\n')
  const r = await tool('bash', ['-c', script])
  t.is(r.code, 0, r.stderr)
  return r.stdout.split('\n').filter((l) => l !== '')
}

needs('bash')('bash completes verbs, sub-verbs, options and file arguments', async (t) => {
  t.deepEqual(await complete(t, ['unlockd', 'sh']), ['shred'])
  t.deepEqual((await complete(t, ['unlockd', 'host', 's'])).sort(), ['set', 'show', 'suspend'])
  t.deepEqual((await complete(t, ['unlockd', 'shred', '--ho'])).sort(), ['--host'])
  t.deepEqual((await complete(t, ['unlockd', 'audit', '--h'])).sort(), ['--help', '--host'])
  t.true((await complete(t, ['unlockd', 'enroll', '--'])).includes('--existing-key-file'))
  t.deepEqual(
    (await complete(t, ['unlockd', 'enroll', '--existing-key-file', 'unlockd.'])).sort(),
    ['unlockd.bash', 'unlockd.key'],
  )
})

needs('zsh')('the zsh completion function parses', async (t) => {
  const dir = await tempDir(t)
  const file = join(dir, '_unlockd')
  const text = zshCompletion('unlockd', all)
  t.true(text.startsWith('#compdef unlockd\n'))
  await writeFile(file, text)
  const r = await tool('zsh', ['-n', file])
  t.is(r.code, 0, r.stderr)
  for (const c of all) t.true(text.includes(c.name.split(' ').at(-1) ?? ''), c.name)
})
