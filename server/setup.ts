/**
 * Server data directory: create it (`server init`) and open it (`server start` and the offline
 * admin commands). Layout: keystore.json (+ .bak), unlockd.db (SQLite, default) and
 * server.json (settings). Files 0600, directory 0700.
 */
import { EventEmitter } from 'node:events'
import { existsSync, readFileSync, statSync } from 'node:fs'
import { join } from 'node:path'
import { UnlockdError } from '../shared/errors.ts'
import { ensurePrivateDir, writeFileAtomic } from '../platform/atomic-file.ts'
import { parseServerConfig, type ServerConfig } from '../shared/config/server.ts'
import { DEFAULT_SETTINGS, type ServerDeps } from './context.ts'
import { newTotpSecret, otpauthUri } from './approvals/totp.ts'
import { audit } from './escrow/audit-log.ts'
import { hashToken, newId, newToken } from './escrow/secrets.ts'
import { Keystore } from './keys/keystore.ts'
import { completeRotation } from './keys/rotation.ts'
import type { Logger } from './log.ts'
import { openStore } from './store/open.ts'

export const KEYSTORE_FILE = 'keystore.json'
export const DB_FILE = 'unlockd.db'
export const CONFIG_FILE = 'server.json'

export function nowSeconds(): number {
  return Math.floor(Date.now() / 1000)
}

export interface InitResult {
  operator: string
  token: string
  /** The first operator's TOTP secret as an otpauth:// URI, shown once. */
  otpauthUri: string
  dataDir: string
  store: string
}

export async function initDataDir(
  dataDir: string,
  passphrase: string,
  opts: { operator: string; db?: string | undefined; log: Logger },
): Promise<InitResult> {
  ensurePrivateDir(dataDir)
  const ksPath = join(dataDir, KEYSTORE_FILE)
  if (existsSync(ksPath))
    throw new UnlockdError('conflict', `${dataDir} is already initialized (keystore.json exists)`)
  const cfgPath = join(dataDir, CONFIG_FILE)
  const config: ServerConfig = parseServerConfig(JSON.stringify(opts.db ? { db: opts.db } : {}))
  const store = await openStore(config.db ?? join(dataDir, DB_FILE))
  try {
    const now = nowSeconds()
    // Check the database before writing anything, so a refused init leaves no half-made data dir.
    if ((await store.tx((t) => t.listOperators())).length > 0)
      throw new UnlockdError(
        'conflict',
        'this database already has operators (it belongs to another unlockd data dir)',
      )
    const ks = Keystore.create(ksPath, passphrase, now)
    const auditKey = Uint8Array.from(ks.auditKey)
    // The first operator gets its second factor at once: no operator ever exists without one.
    const id = newId('op', 9)
    let totp: ReturnType<typeof newTotpSecret>
    try {
      totp = newTotpSecret({ keystore: ks }, id)
    } finally {
      ks.close()
    }
    store.useAuditKey(() => auditKey)
    if (!existsSync(cfgPath))
      writeFileAtomic(
        cfgPath,
        JSON.stringify(opts.db ? { db: opts.db } : {}, null, 2) + '\n',
        0o600,
      )
    const token = newToken('uo')
    const tokenHash = await hashToken(token)
    await store.tx(async (t) => {
      if ((await t.listOperators()).length > 0)
        throw new UnlockdError('conflict', 'this database already has operators')
      await t.insertOperator({
        id,
        name: opts.operator,
        tokenHash,
        ...totp.stored,
        createdAt: now,
        removedAt: null,
      })
      await t.setMeta('kek_rotated_at', String(now))
      await audit(t, now, 'system', 'server.init', null, { operator: opts.operator, totp: true })
    })
    return {
      operator: opts.operator,
      token,
      otpauthUri: otpauthUri(opts.operator, totp.secret),
      dataDir,
      store: store.kind,
    }
  } finally {
    await store.close()
  }
}

export function loadServerConfig(dataDir: string): ServerConfig {
  const cfgPath = join(dataDir, CONFIG_FILE)
  const text = existsSync(cfgPath) ? readFileSync(cfgPath, 'utf8') : '{}'
  return parseServerConfig(text, cfgPath)
}

/**
 * The scrape token from `metrics.tokenFile`: 32-128 characters of A-Z a-z 0-9 _ -, in a file
 * no one but the server's user can read. Only its hash is kept.
 */
async function scrapeTokenHash(file: string): Promise<string> {
  let text: string
  try {
    if ((statSync(file).mode & 0o077) !== 0)
      throw new UnlockdError(
        'config_invalid',
        `${file} is readable by others: chmod 600 ${file} (it holds the metrics scrape token)`,
      )
    text = readFileSync(file, 'utf8').trim()
  } catch (cause) {
    if (cause instanceof UnlockdError) throw cause
    throw new UnlockdError('config_invalid', `cannot read the metrics token file ${file}`, {
      cause,
    })
  }
  if (!/^[A-Za-z0-9_-]{32,128}$/.test(text))
    throw new UnlockdError(
      'config_invalid',
      `${file} must hold one token of 32-128 characters A-Z a-z 0-9 _ - (e.g. openssl rand -hex 32)`,
    )
  return hashToken(text)
}

export async function openDeps(
  dataDir: string,
  passphrase: string,
  log: Logger,
  overrides: { db?: string | undefined } = {},
): Promise<ServerDeps> {
  const config = loadServerConfig(dataDir)
  const keystore = Keystore.open(join(dataDir, KEYSTORE_FILE), passphrase)
  const store = await openStore(overrides.db ?? config.db ?? join(dataDir, DB_FILE))
  store.useAuditKey(() => keystore.auditKey)
  const deps: ServerDeps = {
    store,
    keystore,
    log,
    now: nowSeconds,
    settings: {
      ...DEFAULT_SETTINGS,
      ...config.settings,
      metricsTokenHash: config.metrics ? await scrapeTokenHash(config.metrics.tokenFile) : null,
    },
    events: new EventEmitter().setMaxListeners(0),
  }
  await resumeRotation(deps)
  return deps
}

/**
 * Before anything serves: finish a KEK rotation a crash interrupted (after a shred, the old KEK
 * must not outlive a restart). A failure is logged and left pending for the maintenance job,
 * rather than keeping the server down: the shredded blobs themselves are already gone.
 */
async function resumeRotation(deps: ServerDeps): Promise<void> {
  try {
    const r = await completeRotation(deps)
    if (r)
      deps.log.log('warn', 'finished an interrupted KEK rotation', {
        kek: r.current,
        destroyed: r.destroyed.join(','),
        reasons: r.reasons.join(','),
      })
  } catch (err) {
    deps.log.log('error', 'cannot finish the pending KEK rotation; retrying in the background', {
      err: err instanceof Error ? err.message : String(err),
    })
  }
}

export async function closeDeps(deps: ServerDeps): Promise<void> {
  await deps.store.close()
  deps.keystore.close()
}
