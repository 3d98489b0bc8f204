// Bundles the CLI with esbuild: dist/unlockd.mjs (everything; npm packages stay external) and
// dist/unlockd-agent.mjs (host side only, self-contained for the initramfs; koffi is loaded
// lazily and only for fscrypt and sd-notify, so it stays external).
import { build } from 'esbuild'
import { statSync, readFileSync } from 'node:fs'
import { execFileSync } from 'node:child_process'

const common = {
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  sourcemap: false,
  legalComments: 'none',
  logLevel: 'warning',
}
const banner = {
  js: "import { createRequire as __cr } from 'node:module'; const require = __cr(import.meta.url);",
}

await build({
  ...common,
  entryPoints: ['bin/unlockd.ts'],
  outfile: 'dist/unlockd.mjs',
  packages: 'external',
})
await build({
  ...common,
  entryPoints: ['bin/unlockd-agent.ts'],
  outfile: 'dist/unlockd-agent.mjs',
  target: 'node18.19',
  external: ['koffi'],
  banner,
  minify: true,
})

// The agent bundle must never carry server code: it goes into every host's initramfs.
const agent = readFileSync('dist/unlockd-agent.mjs', 'utf8')
for (const banned of ['better-sqlite3', 'hono', 'createAdaptorServer', 'pg-pool']) {
  if (agent.includes(banned))
    throw new Error(`agent bundle contains ${banned}: an agent module imports server code`)
}
const size = statSync('dist/unlockd-agent.mjs').size
const BUDGET = 1024 * 1024
if (size > BUDGET) throw new Error(`agent bundle is ${size} bytes, over the ${BUDGET} byte budget`)
console.log(`built dist/unlockd.mjs and dist/unlockd-agent.mjs (${(size / 1024).toFixed(0)} KiB)`)

// Manual pages and shell completion from the same command table as --help.
execFileSync(process.execPath, ['--import', 'tsx/esm', 'tools/gen-docs.ts'], { stdio: 'inherit' })
console.log('built dist/man and dist/completion')
