/** Host-side verbs of `unlockd` (also the whole of the initramfs bundle). */
import type { Command } from '../../platform/cli.ts'
import { enrollCommand } from './enroll.ts'
import { statusCommand, unlockCommand } from './unlock.ts'
import { agentCommand } from './agent.ts'

export const agentCommands: Command[] = [enrollCommand, unlockCommand, statusCommand, agentCommand]

import { initramfsCheck } from './initramfs-check.ts'
agentCommands.push(initramfsCheck)

import { recoverCommand, recoveryKeyCreateCommand } from './recover.ts'
agentCommands.push(recoverCommand, recoveryKeyCreateCommand)

import { encryptCommand } from './encrypt.ts'
agentCommands.push(encryptCommand)
