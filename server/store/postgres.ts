export const PostgresStore = { async connect(_u: string): Promise<never> { throw new Error('postgres store not built yet') } }
