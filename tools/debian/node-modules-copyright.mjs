// Appends a debian/copyright stanza for every npm package carried under node_modules (its
// declared licence, from its own package.json); run by tools/package-deb.sh.
import { readdirSync, readFileSync, existsSync } from 'node:fs'
import { join } from 'node:path'

const root = process.argv[2]
if (!root) throw new Error('usage: node-modules-copyright.mjs NODE_MODULES_DIR')

function* packages(dir) {
  for (const name of readdirSync(dir).sort()) {
    const p = join(dir, name)
    if (name.startsWith('@')) yield* packages(p)
    else if (existsSync(join(p, 'package.json'))) {
      yield p
      if (existsSync(join(p, 'node_modules'))) yield* packages(join(p, 'node_modules'))
    }
  }
}

let out = ''
for (const p of packages(root)) {
  const pkg = JSON.parse(readFileSync(join(p, 'package.json'), 'utf8'))
  const licence = typeof pkg.license === 'string' ? pkg.license : 'see its LICENSE file'
  const author = typeof pkg.author === 'string' ? pkg.author : (pkg.author?.name ?? 'its authors')
  out += `\nFiles: ${p.slice(p.indexOf('usr/lib/'))}/*\nCopyright: ${author}\nLicense: ${licence}\nComment: ${pkg.name} ${pkg.version}, the npm package; its licence text is in that directory.\n`
}
process.stdout.write(out)
