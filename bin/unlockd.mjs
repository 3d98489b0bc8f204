#!/usr/bin/env node
// Runs the bundled CLI (npm run build makes dist/unlockd.mjs).
import { existsSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
const bundle = fileURLToPath(new URL('../dist/unlockd.mjs', import.meta.url))
if (!existsSync(bundle)) {
  process.stderr.write(
    '[ERROR] unlockd: dist/unlockd.mjs is missing; run `npm run build` in the unlockd checkout\n',
  )
  process.exit(1)
}
await import(bundle)
