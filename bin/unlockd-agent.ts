/**
 * Entry point of the host-only bundle shipped in the initramfs: no server code, no hono.
 * Runs on Node 18.19+ (Debian 12's nodejs) as well as 20+: webcrypto-global comes first.
 */
import '../platform/webcrypto-global.ts'
import { dispatch } from './dispatch.ts'
import { agentCommands } from '../agent/cli/index.ts'

process.exitCode = await dispatch('unlockd', agentCommands, process.argv.slice(2))
