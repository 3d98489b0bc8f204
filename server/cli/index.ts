/** Server-side and operator verbs of `unlockd`. */
import type { Command } from '../../platform/cli.ts'
import { serverInit, serverStart } from './server-commands.ts'
import { operatorPasskey } from './passkey-commands.ts'
import { operatorEnroll } from './operator-enroll-command.ts'
import { hostAdd, hostRotateTang } from './tang-commands.ts'
import {
  approvalsList,
  approveCommand,
  denyCommand,
  operatorAdd,
  operatorList,
  operatorRemove,
  operatorTotp,
} from './approval-commands.ts'
import {
  auditList,
  auditHead,
  auditVerify,
  hostResume,
  hostSet,
  hostShow,
  hostSuspend,
  hostsList,
  tokenCreate,
  tokenList,
  tokenRevoke,
} from './admin-commands.ts'
import {
  escrowExportCommand,
  kekRotateCommand,
  kekStatusCommand,
  keystorePasswdCommand,
  shredCommand,
} from './shred-commands.ts'

export const serverCommands: Command[] = [
  serverInit,
  serverStart,
  hostsList,
  hostShow,
  hostSet,
  hostSuspend,
  hostResume,
  tokenCreate,
  tokenList,
  tokenRevoke,
  auditList,
  auditHead,
  auditVerify,
  approvalsList,
  approveCommand,
  denyCommand,
  operatorAdd,
  operatorEnroll,
  operatorList,
  operatorRemove,
  operatorTotp,
  operatorPasskey,
  shredCommand,
  kekStatusCommand,
  kekRotateCommand,
  escrowExportCommand,
  keystorePasswdCommand,
  hostAdd,
  hostRotateTang,
]
