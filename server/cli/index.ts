/** Server-side and operator verbs of `unlockd`. */
import type { Command } from '../../platform/cli.ts'
import { serverInit, serverStart } from './server-commands.ts'
import { auditList, auditVerify, hostResume, hostSet, hostShow, hostSuspend, hostsList, tokenCreate, tokenList, tokenRevoke } from './admin-commands.ts'

export const serverCommands: Command[] = [
  serverInit, serverStart, hostsList, hostShow, hostSet, hostSuspend, hostResume, tokenCreate, tokenList, tokenRevoke, auditList, auditVerify,
]
