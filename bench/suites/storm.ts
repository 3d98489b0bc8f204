import type { SuiteContext } from './context.ts'
export async function stormSuite(_ctx: SuiteContext): Promise<void> { throw new Error('todo') }
