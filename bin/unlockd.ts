/** Entry point of the full `unlockd` executable (server, operator and host verbs). */
import { dispatch } from './dispatch.ts'
import { serverCommands } from '../server/cli/index.ts'
import { agentCommands } from '../agent/cli/index.ts'

process.exitCode = await dispatch(
  'unlockd',
  [...serverCommands, ...agentCommands],
  process.argv.slice(2),
)
