/**
 * What goes into the initramfs so the root volume unlocks at boot, and whether everything is
 * there: Node, the agent bundle, agent.json, the host keys, pinned CAs, and a crypttab entry
 * (initramfs-tools) for every LUKS volume the boot scripts answer.
 *
 * The initramfs-tools hook and the dracut module both run `unlockd initramfs check --format lines`
 * and copy exactly what the plan lists, so this file is the one place that decides the image's
 * contents; `unlockd initramfs check` shows the same plan to a person, with the reason for each file.
 * Every problem is found at image build time: a missing file must never surface at boot.
 */
import { accessSync, constants, existsSync, readFileSync, statSync } from 'node:fs'
import { isAbsolute, join, resolve } from 'node:path'
import { UnlockdError, describeError } from '../shared/errors.ts'
import type { AgentConfig, LuksVolumeConfig } from '../shared/config/agent.ts'
import { configDir, requireEnrolled } from './config-dir.ts'
import { run } from './exec.ts'
import { isLuksVolume } from './volumes/registry.ts'

export type Flavour = 'initramfs-tools' | 'dracut'

/** Where the boot scripts expect things inside the image (fixed: the scripts hard-code them). */
export const IMAGE_CONFIG_DIR = '/etc/unlockd'
export const IMAGE_NODE = '/usr/bin/node'
export const IMAGE_BUNDLE = '/usr/lib/unlockd/unlockd-agent.mjs'
/** Host-side settings for the boot scripts (KEY=VALUE lines, also sourced by the shell scripts). */
export const INITRAMFS_CONF = 'initramfs.conf'
export const DEFAULT_BUNDLE = '/usr/lib/unlockd/unlockd-agent.mjs'
/** The agent bundle's Node floor: Debian 12's nodejs (the server needs 20.19, package.json "engines"). */
const MIN_NODE: readonly [number, number] = [18, 19]

export type PlanKind = 'exec' | 'file' | 'secret'

export interface PlanFile {
  /** exec: a program, copied with its shared libraries; secret: mode 0600; file: as is. */
  kind: PlanKind
  source: string
  dest: string
  why: string
}

export interface PlanVolume {
  name: string
  uuid: string
  device: string
  /** The crypttab entry that makes cryptsetup ask for this volume in the initramfs, if any. */
  crypttab: { name: string; options: string[] } | null
  /** True when the boot scripts will be asked for this volume. */
  atBoot: boolean
}

export interface InitramfsPlan {
  flavour: Flavour
  configDir: string
  files: PlanFile[]
  volumes: PlanVolume[]
  settings: InitramfsSettings
  warnings: string[]
  problems: string[]
}

export interface InitramfsSettings {
  node: string
  bundle: string
  /** Seconds the boot scripts keep trying (server unreachable, approval pending) before leaving it to the typed passphrase. */
  timeout: number
  /** Bring the interfaces the scripts configured down again before switch_root. */
  ifdown: boolean
  /** `no` turns the hook off without uninstalling it. */
  enabled: boolean
}

export interface CrypttabEntry {
  name: string
  source: string
  key: string
  options: string[]
  line: number
}

/** Parse crypttab(5): `name source [key [options]]`, `#` comments. */
export function parseCrypttab(text: string): CrypttabEntry[] {
  const out: CrypttabEntry[] = []
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/#.*$/, '').trim()
    if (line === '') return
    const [name, source, key, options] = line.split(/\s+/)
    if (name === undefined || source === undefined) return
    out.push({
      name,
      source,
      key: key ?? 'none',
      options: options ? options.split(',').filter((o) => o !== '') : [],
      line: i + 1,
    })
  })
  return out
}

/**
 * Parse the KEY=VALUE file the shell scripts also source. Only plain assignments of UNLOCKD_*
 * are accepted, so sourcing it can never run anything.
 */
export function parseShellConf(text: string, where: string): Record<string, string> {
  const out: Record<string, string> = {}
  text.split('\n').forEach((raw, i) => {
    const line = raw.trim()
    if (line === '' || line.startsWith('#')) return
    const m = /^(UNLOCKD_[A-Z_]+)=(?:"([^"`$\\]*)"|'([^']*)'|([^\s"'`$\\;&|<>()]*))$/.exec(line)
    if (!m)
      throw new UnlockdError(
        'config_invalid',
        `${where}:${i + 1}: expected UNLOCKD_NAME=value (no spaces, quotes only around the whole value)`,
      )
    out[m[1] as string] = m[2] ?? m[3] ?? m[4] ?? ''
  })
  return out
}

export function settingsFrom(conf: Record<string, string>, where: string): InitramfsSettings {
  const yesNo = (key: string, dflt: boolean): boolean => {
    const v = conf[key]
    if (v === undefined || v === '') return dflt
    if (/^(y|yes|1|true)$/i.test(v)) return true
    if (/^(n|no|0|false)$/i.test(v)) return false
    throw new UnlockdError('config_invalid', `${where}: ${key} must be yes or no (got ${v})`)
  }
  const t = conf['UNLOCKD_TIMEOUT'] ?? '300'
  if (!/^[1-9][0-9]{0,4}$/.test(t))
    throw new UnlockdError(
      'config_invalid',
      `${where}: UNLOCKD_TIMEOUT must be a whole number of seconds, 1-99999 (got ${t})`,
    )
  return {
    node: conf['UNLOCKD_NODE'] || '',
    bundle: conf['UNLOCKD_BUNDLE'] || '',
    timeout: Number(t),
    ifdown: yesNo('UNLOCKD_IFDOWN', true),
    enabled: yesNo('UNLOCKD_INITRAMFS', true),
  }
}

function sameUuid(a: string, b: string): boolean {
  return a.toLowerCase() === b.toLowerCase()
}

/** Does crypttab `source` name this volume? */
export function sourceMatches(
  source: string,
  vol: Pick<LuksVolumeConfig, 'uuid' | 'device'>,
): boolean {
  const m = /^UUID=(.+)$/i.exec(source) ?? /^\/dev\/disk\/by-uuid\/(.+)$/.exec(source)
  if (m && sameUuid(m[1] as string, vol.uuid)) return true
  return source === vol.device
}

/** The device-mapper name of the root filesystem according to fstab, if it is a mapping. */
export function rootMapping(fstab: string): string | undefined {
  for (const raw of fstab.split('\n')) {
    const f = raw.replace(/#.*$/, '').trim().split(/\s+/)
    if (f[1] !== '/') continue
    const m = /^\/dev\/mapper\/(.+)$/.exec(f[0] ?? '')
    return m ? m[1] : undefined
  }
  return undefined
}

/** Whether `path` is a regular file this process may access with `mode` (R_OK, X_OK). */
function fileWith(path: string, mode: number): boolean {
  try {
    accessSync(path, mode)
    return statSync(path).isFile()
  } catch {
    return false
  }
}

const readable = (path: string): boolean => fileWith(path, constants.R_OK)
const executable = (path: string): boolean => fileWith(path, constants.X_OK)

/** Find `name` in PATH (plus the sbin directories a root shell has). */
export function which(name: string, pathEnv: string | undefined): string | undefined {
  const dirs = [...(pathEnv ?? '').split(':'), '/usr/local/bin', '/usr/bin', '/bin'].filter(
    (d) => d !== '',
  )
  for (const d of dirs) {
    const p = join(d, name)
    if (executable(p)) return p
  }
  return undefined
}

function versionOk(v: string): boolean {
  const m = /^v?(\d+)\.(\d+)/.exec(v.trim())
  if (!m) return false
  const [maj, min] = [Number(m[1]), Number(m[2])]
  return maj > MIN_NODE[0] || (maj === MIN_NODE[0] && min >= MIN_NODE[1])
}

export interface PlanOptions {
  configDir: string
  flavour: Flavour
  crypttabPath: string
  fstabPath: string
  /** Overrides of initramfs.conf (command line). */
  node?: string | undefined
  bundle?: string | undefined
  /** PATH to search for node when nothing names it. */
  pathEnv?: string | undefined
  /** The bundle that is running now, used when nothing else names one. */
  selfBundle?: string | undefined
}

/** Build the plan and collect every problem (never stops at the first one). */
export async function planInitramfs(o: PlanOptions): Promise<InitramfsPlan> {
  const c = configDir(o.configDir)
  const problems: string[] = []
  const warnings: string[] = []
  const files: PlanFile[] = []

  const confPath = join(c.dir, INITRAMFS_CONF)
  let settings: InitramfsSettings = {
    node: '',
    bundle: '',
    timeout: 300,
    ifdown: true,
    enabled: true,
  }
  if (existsSync(confPath)) {
    try {
      settings = settingsFrom(parseShellConf(readFileSync(confPath, 'utf8'), confPath), confPath)
      files.push({
        kind: 'file',
        source: confPath,
        dest: join(IMAGE_CONFIG_DIR, INITRAMFS_CONF),
        why: 'boot-time settings (UNLOCKD_TIMEOUT, UNLOCKD_IFDOWN)',
      })
    } catch (e) {
      problems.push(describeError(e))
    }
  }

  // Node: named on the command line, in initramfs.conf, or found in PATH.
  const node = o.node || settings.node || which('node', o.pathEnv) || ''
  if (node === '') {
    problems.push(
      'Node.js was not found: install nodejs (18.19 or newer) or set UNLOCKD_NODE=/path/to/node in ' +
        confPath,
    )
  } else if (!executable(node)) {
    problems.push(
      `Node.js ${node} does not exist or is not executable: fix UNLOCKD_NODE in ${confPath}`,
    )
  } else {
    const version =
      resolve(node) === resolve(process.execPath) ? process.version : await nodeVersion(node)
    if (version === undefined || !versionOk(version)) {
      problems.push(
        `${node} is Node.js ${version ?? '(unknown version)'}; the agent needs 18.19 or newer: install a newer nodejs or set UNLOCKD_NODE`,
      )
    } else {
      files.push({
        kind: 'exec',
        source: node,
        dest: IMAGE_NODE,
        why: `Node.js ${version} runs the agent (copied with its shared libraries)`,
      })
      for (const f of await sharedBuiltins(node))
        files.push({
          kind: 'file',
          source: f,
          dest: f,
          why: 'a builtin module this Node.js loads from outside its binary (Debian libnode)',
        })
    }
  }

  const bundle =
    o.bundle ||
    settings.bundle ||
    (o.selfBundle && /unlockd-agent\.mjs$/.test(o.selfBundle) ? o.selfBundle : '') ||
    DEFAULT_BUNDLE
  if (!readable(bundle)) {
    problems.push(
      `the agent bundle ${bundle} is missing: install unlockd (npm run build makes dist/unlockd-agent.mjs) or set UNLOCKD_BUNDLE in ${confPath}`,
    )
  } else {
    files.push({
      kind: 'file',
      source: bundle,
      dest: IMAGE_BUNDLE,
      why: 'the agent (host verbs only, one file, no npm packages needed)',
    })
  }

  // Enrollment: agent.json and both host keys (requireEnrolled checks they parse and are 0600).
  let config: AgentConfig | undefined
  try {
    const enrolled = requireEnrolled(c)
    config = enrolled.config
    files.push(
      {
        kind: 'secret',
        source: c.configPath,
        dest: join(IMAGE_CONFIG_DIR, 'agent.json'),
        why: `enrollment of host ${config.name}: servers and volumes`,
      },
      {
        kind: 'secret',
        source: c.signingPath,
        dest: join(IMAGE_CONFIG_DIR, 'signing.jwk'),
        why: 'host signing key: signs the unlock requests',
      },
      {
        kind: 'secret',
        source: c.sealingPath,
        dest: join(IMAGE_CONFIG_DIR, 'sealing.jwk'),
        why: 'host sealing key: opens the released volume key',
      },
    )
  } catch (e) {
    problems.push(
      `${describeError(e)}${e instanceof UnlockdError && e.code === 'not_enrolled' ? ' (run unlockd enroll first)' : ''}`,
    )
  }

  for (const s of config?.servers ?? []) {
    if (!s.ca) {
      if (s.url.startsWith('https:'))
        warnings.push(
          `${s.url} has no pinned CA: the initramfs has no system CA store, so TLS to it will fail; enroll with --ca`,
        )
      continue
    }
    const source = isAbsolute(s.ca) ? s.ca : join(c.dir, s.ca)
    if (!readable(source))
      problems.push(
        `the pinned CA ${source} of ${s.url} is missing: copy the server's CA certificate there`,
      )
    else
      files.push({
        kind: 'file',
        source,
        dest: isAbsolute(s.ca) ? s.ca : join(IMAGE_CONFIG_DIR, s.ca),
        why: `pinned CA of ${s.url}`,
      })
  }

  const volumes = planVolumes(o, config, problems, warnings)
  // The hooks read the plan as tab-separated lines.
  for (const f of files)
    if (/[\t\n]/.test(f.source + f.dest))
      problems.push(`path ${JSON.stringify(f.source)} contains a tab or newline: rename it`)
  return {
    flavour: o.flavour,
    configDir: c.dir,
    files,
    volumes,
    settings: { ...settings, node, bundle },
    warnings,
    problems,
  }
}

function planVolumes(
  o: PlanOptions,
  config: AgentConfig | undefined,
  problems: string[],
  warnings: string[],
): PlanVolume[] {
  if (!config) return []
  const luks = config.volumes.filter(isLuksVolume)
  if (luks.length === 0) {
    problems.push(
      'agent.json has no LUKS volume: nothing to unlock in the initramfs (enroll one with unlockd enroll --luks DEVICE)',
    )
    return []
  }
  let crypttab: CrypttabEntry[] = []
  if (existsSync(o.crypttabPath)) crypttab = parseCrypttab(readFileSync(o.crypttabPath, 'utf8'))
  else if (o.flavour === 'initramfs-tools')
    problems.push(
      `${o.crypttabPath} does not exist: cryptsetup-initramfs only unlocks volumes listed there`,
    )
  const root = existsSync(o.fstabPath) ? rootMapping(readFileSync(o.fstabPath, 'utf8')) : undefined

  const out: PlanVolume[] = luks.map((v) => {
    const entry = crypttab.find((e) => sourceMatches(e.source, v))
    const p: PlanVolume = {
      name: v.name,
      uuid: v.uuid,
      device: v.device,
      crypttab: entry ? { name: entry.name, options: entry.options } : null,
      atBoot: false,
    }
    if (!entry) return p
    const keyscript = entry.options.find((x) => x.startsWith('keyscript='))
    if (keyscript && keyscript !== 'keyscript=/lib/cryptsetup/askpass') {
      problems.push(
        `${o.crypttabPath}:${entry.line}: ${entry.name} uses ${keyscript}, so no passphrase prompt is shown and the agent cannot answer it: remove the keyscript option`,
      )
      return p
    }
    if (entry.key !== 'none' && entry.key !== '-') {
      warnings.push(
        `${o.crypttabPath}:${entry.line}: ${entry.name} has key file ${entry.key}; cryptsetup asks for a passphrase only when that file fails`,
      )
    }
    // dracut asks for every LUKS device it unlocks (crypttab or rd.luks.uuid=); cryptsetup-initramfs
    // only for the root filesystem's device and entries marked `initramfs`.
    p.atBoot = o.flavour === 'dracut' || entry.options.includes('initramfs') || entry.name === root
    if (!p.atBoot) {
      warnings.push(
        `${o.crypttabPath}:${entry.line}: ${entry.name} (volume ${v.name}) is not the root filesystem in fstab and has no initramfs option; it is unlocked after boot unless the root is on it through LVM (add the initramfs option to be sure)`,
      )
    }
    return p
  })

  if (o.flavour === 'dracut') {
    // Without a crypttab entry, dracut still unlocks what rd.luks.uuid= on the kernel command line names.
    for (const v of out) v.atBoot = true
    if (crypttab.length === 0)
      warnings.push(
        `${o.crypttabPath} lists no volume: dracut will unlock only what rd.luks.uuid= on the kernel command line names`,
      )
  } else if (!out.some((v) => v.crypttab)) {
    const first = luks[0] as LuksVolumeConfig
    problems.push(
      `no ${o.crypttabPath} entry names a volume of agent.json; add one, e.g.: cryptroot UUID=${first.uuid} none luks,initramfs`,
    )
  } else if (!out.some((v) => v.atBoot)) {
    warnings.push(
      'no crypttab entry of a volume the agent knows is marked for the initramfs: the image will not ask the agent for anything',
    )
  }
  return out
}

async function nodeVersion(node: string): Promise<string | undefined> {
  try {
    const r = await run(node, ['--version'], { timeoutMs: 20_000 })
    return r.code === 0 ? r.stdout.toString('utf8').trim() : undefined
  } catch {
    return undefined
  }
}

/**
 * Debian's nodejs links libnode and loads some builtins at start-up from /usr/share/nodejs
 * (acorn, acorn-walk, cjs-module-lexer, undici) instead of carrying them; their paths are
 * compiled into libnode. Returns the ones that exist, so the image gets them next to node.
 * A node with everything built in (upstream builds) gives an empty list.
 */
async function sharedBuiltins(node: string): Promise<string[]> {
  let libs: string[]
  try {
    const r = await run('ldd', [node], { timeoutMs: 20_000 })
    libs = [...r.stdout.toString('utf8').matchAll(/=>\s+(\/\S*libnode\.so[^\s]*)/g)].map(
      (m) => m[1] as string,
    )
  } catch {
    return []
  }
  const found = new Set<string>()
  for (const lib of libs) {
    let text: string
    try {
      text = readFileSync(lib).toString('latin1')
    } catch {
      continue
    }
    for (const m of text.matchAll(/\/usr\/share\/nodejs\/[A-Za-z0-9_.@/-]+\.js/g))
      if (readable(m[0])) found.add(m[0])
  }
  return [...found].sort()
}

/** Tab-separated lines for the hooks: `exec|file|secret SRC DEST`, then `volume UUID NAME`. */
export function planLines(p: InitramfsPlan): string {
  const lines = p.files.map((f) => `${f.kind}\t${f.source}\t${f.dest}`)
  for (const v of p.volumes) if (v.atBoot) lines.push(`volume\t${v.uuid.toLowerCase()}\t${v.name}`)
  return lines.map((l) => `${l}\n`).join('')
}
