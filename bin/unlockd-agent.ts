/** Entry point of the host-only bundle shipped in the initramfs: no server code, no hono. */
import { dispatch } from './dispatch.ts'
import { agentCommands } from '../agent/cli/index.ts'

process.exitCode = await dispatch('unlockd', agentCommands, process.argv.slice(2))
