import type { SuiteContext } from './context.ts'
export async function agentSuite(_ctx: SuiteContext): Promise<void> { throw new Error('todo') }
