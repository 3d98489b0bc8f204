/**
 * Writes the manual pages and shell completion of the CLI from its command table (the same
 * table `--help` prints): dist/man/unlockd.1, unlockd-server.8, unlockd-agent.8 and
 * dist/completion/unlockd.bash and _unlockd (zsh), and the host-only unlockd-agent.bash and
 * _unlockd-agent that the agent package installs. Run by `npm run build`.
 */
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs'
import { agentCommands } from '../agent/cli/index.ts'
import { bashCompletion, manPage, zshCompletion } from '../platform/cli-docs.ts'
import { serverCommands } from '../server/cli/index.ts'

const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as {
  version: string
}
const epoch = Number(process.env['SOURCE_DATE_EPOCH'] ?? '')
const date = (Number.isFinite(epoch) && epoch > 0 ? new Date(epoch * 1000) : new Date())
  .toISOString()
  .slice(0, 10)
const isServer = (name: string): boolean =>
  name.startsWith('server ') || name.startsWith('keystore ')
const common = { version: pkg.version, date }
const EXIT_CODES = {
  heading: 'Exit status',
  paragraphs: [
    '0 success; 1 error; 2 usage error; 3 refused by the server (policy, authentication, approval denied); 4 server unreachable or TLS failure; 5 approval still pending.',
  ],
}

const pages = [
  manPage({
    ...common,
    name: 'unlockd',
    section: 1,
    title: 'unlockd - operate an unlockd escrow server: hosts, approvals, shred, audit',
    description: [
      'unlockd holds the keys of LUKS2 volumes and fscrypt directories of enrolled hosts and releases them at boot after policy checks and, where policy asks, human approval. These commands talk to a running escrow server over its admin API as an operator.',
      'The server URL and operator token come from --url and --token-file, or UNLOCKD_URL and UNLOCKD_TOKEN / UNLOCKD_TOKEN_FILE. Secrets are never taken on the command line.',
      'Host-side commands (enroll, unlock, agent) are described in unlockd-agent(8); running the server in unlockd-server(8).',
    ],
    commands: serverCommands.filter((c) => !isServer(c.name)),
    sections: [EXIT_CODES],
    seeAlso: ['unlockd-server(8)', 'unlockd-agent(8)', 'cryptsetup(8)'],
  }),
  manPage({
    ...common,
    name: 'unlockd-server',
    section: 8,
    title: 'unlockd-server - the unlockd escrow server',
    description: [
      'The escrow server keeps every escrowed key wrapped by a key-encryption key (KEK) from its keystore, which is sealed with an operator passphrase. It stores state in SQLite (the default, in --data) or PostgreSQL (--db), for several instances.',
      'The passphrase comes from --passphrase-file, the UNLOCKD_PASSPHRASE environment variable, or a prompt. The systemd unit unlockd-server.service runs `unlockd server start`.',
    ],
    commands: serverCommands.filter((c) => isServer(c.name)),
    sections: [EXIT_CODES],
    seeAlso: ['unlockd(1)', 'unlockd-agent(8)'],
  }),
  manPage({
    ...common,
    name: 'unlockd-agent',
    section: 8,
    title: 'unlockd-agent - enroll a host and unlock its volumes at boot',
    description: [
      'The agent runs on each host. `unlockd enroll` makes the host keys, adds a keyslot (LUKS2) or a policy (fscrypt) with a fresh random key, and escrows that key with the server. At boot, unlockd-agent.service (and the initramfs hook, for the root volume) asks the server for the keys, signed with the host key, and opens the volumes; a typed passphrase still works at the prompt.',
      'Configuration and host keys live in /etc/unlockd (agent.json, 0600 key files).',
    ],
    commands: agentCommands,
    sections: [EXIT_CODES],
    seeAlso: ['unlockd(1)', 'unlockd-server(8)', 'crypttab(5)', 'cryptsetup(8)'],
  }),
]

mkdirSync('dist/man', { recursive: true })
mkdirSync('dist/completion', { recursive: true })
for (const [name, section, text] of [
  ['unlockd', 1, pages[0]],
  ['unlockd-server', 8, pages[1]],
  ['unlockd-agent', 8, pages[2]],
] as const) {
  writeFileSync(`dist/man/${name}.${section}`, text ?? '')
}
// The full CLI (a checkout's bin/unlockd.mjs), and the host-only one the agent package ships.
const all = [...serverCommands, ...agentCommands]
writeFileSync('dist/completion/unlockd.bash', bashCompletion('unlockd', all))
writeFileSync('dist/completion/_unlockd', zshCompletion('unlockd', all))
writeFileSync('dist/completion/unlockd-agent.bash', bashCompletion('unlockd', agentCommands))
writeFileSync('dist/completion/_unlockd-agent', zshCompletion('unlockd', agentCommands))
