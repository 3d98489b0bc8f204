/**
 * A tangd key directory mirrored into an unlockd Tang host, for running tang's own test scripts
 * against unlockd. tangd keeps its keys as files (`NAME.jwk` advertised, `.NAME.jwk` rotated)
 * and reads the directory on every request; unlockd keeps KEK-wrapped pairs in the store. The
 * scripts edit the directory between requests (new keys, rotation, an emptied directory), so
 * before each connection the directory is read the way tangd reads it and the host's key rows
 * are replaced when it changed. Everything the scripts see over HTTP comes from unlockd.
 *
 * tangd's rules kept here: files ending in `.jwk`, unparsable ones skipped, a leading dot means
 * rotated (not advertised, still usable), and a directory with no advertised file gets a fresh
 * signing and exchange key named by their SHA-256 thumbprints (mode 0440).
 *
 * unlockd stores keys in pairs (one signing, one exchange). When the directory holds more keys
 * of one kind than of the other in a state, each surplus key is paired with a stand-in key of
 * the other kind that no file names, made once per surplus key and reused, so repeated reads of
 * an unchanged directory change nothing.
 */
import { chmod, readdir, readFile, writeFile } from 'node:fs/promises'
import path from 'node:path'
import type { ServerDeps } from '../../server/context.ts'
import { keyViewOf, tangRows, wrapTangRow, type TangKeyMaterial } from '../../server/tang/keys.ts'
import {
  generateExchangeKey,
  generateSigningKey,
  generateTangKeys,
  jwkThumbprint,
  keyAllows,
  publicJwk,
} from '../../shared/tang/adv.ts'
import { parseEcPrivateJwk, type EcPrivateJwk } from '../../shared/tang/mcr.ts'

interface DirKey {
  jwk: EcPrivateJwk
  thp: string
}

export interface KeyDirMirror {
  /** Read the directory and bring the host's key rows in line with it. */
  sync(): Promise<void>
}

const thpOf = (jwk: EcPrivateJwk): Promise<string> => jwkThumbprint(publicJwk(jwk), 'S256')

async function readKeyFiles(dir: string): Promise<{ name: string; jwk: EcPrivateJwk }[]> {
  const out: { name: string; jwk: EcPrivateJwk }[] = []
  for (const name of (await readdir(dir)).sort()) {
    if (!name.endsWith('.jwk')) continue
    try {
      out.push({
        name,
        jwk: parseEcPrivateJwk(JSON.parse(await readFile(path.join(dir, name), 'utf8')) as unknown),
      })
    } catch {
      // tangd skips files that are not keys
    }
  }
  return out
}

/** tangd's answer to an empty directory: a fresh pair, as files named by thumbprint. */
async function createKeys(dir: string): Promise<void> {
  const pair = generateTangKeys()
  for (const jwk of [pair.signing, pair.exchange]) {
    const file = path.join(dir, `${await thpOf(jwk)}.jwk`)
    await writeFile(file, JSON.stringify(jwk))
    await chmod(file, 0o440)
  }
}

export function mirrorKeyDir(deps: ServerDeps, hostName: string, dir: string): KeyDirMirror {
  const standIns = new Map<string, EcPrivateJwk>()
  const standIn = (thp: string, make: () => EcPrivateJwk): EcPrivateJwk => {
    let k = standIns.get(thp)
    if (k === undefined) {
      k = make()
      standIns.set(thp, k)
    }
    return k
  }

  async function pairs(
    keys: DirKey[],
    state: 'advertised' | 'retired',
  ): Promise<{ keys: TangKeyMaterial; state: 'advertised' | 'retired' }[]> {
    const signing = keys.filter((k) => keyAllows(k.jwk, 'sign'))
    const exchange = keys.filter((k) => !keyAllows(k.jwk, 'sign') && keyAllows(k.jwk, 'deriveKey'))
    const out: { keys: TangKeyMaterial; state: 'advertised' | 'retired' }[] = []
    for (let i = 0; i < Math.max(signing.length, exchange.length); i++) {
      const s = signing[i]
      const e = exchange[i]
      const sj = s?.jwk ?? standIn(e?.thp ?? '', generateSigningKey)
      const ej = e?.jwk ?? standIn(s?.thp ?? '', generateExchangeKey)
      out.push({
        state,
        keys: {
          pair: { signing: sj, exchange: ej },
          signingThp: s?.thp ?? (await thpOf(sj)),
          exchangeThp: e?.thp ?? (await thpOf(ej)),
        },
      })
    }
    return out
  }

  return {
    async sync() {
      let files = await readKeyFiles(dir)
      if (!files.some((f) => !f.name.startsWith('.'))) {
        await createKeys(dir)
        files = await readKeyFiles(dir)
      }
      const keyed = await Promise.all(
        files.map(async (f) => ({
          hidden: f.name.startsWith('.'),
          jwk: f.jwk,
          thp: await thpOf(f.jwk),
        })),
      )
      const wanted = [
        ...(await pairs(
          keyed.filter((k) => !k.hidden),
          'advertised',
        )),
        ...(await pairs(
          keyed.filter((k) => k.hidden),
          'retired',
        )),
      ]
      const refs = (xs: string[]): string => xs.sort().join(',')
      const wantedRefs = refs(
        wanted.map((w) => `${w.state}:${w.keys.exchangeThp}:${w.keys.signingThp}`),
      )
      await deps.store.tx(async (t) => {
        const host = await t.getHostByName(hostName)
        if (host === undefined || host === null) throw new Error(`no host ${hostName}`)
        const rows = tangRows(await t.listVolumes(host.id))
        const have = refs(
          rows.map((r) => {
            const v = keyViewOf(r)
            return `${v.state}:${v.exchange}:${v.signing}`
          }),
        )
        if (have === wantedRefs) return
        await t.deleteVolumes(
          host.id,
          rows.map((r) => r.name),
        )
        const now = deps.now()
        for (const w of wanted)
          await t.upsertVolume(wrapTangRow(deps, host.id, w.keys, w.state, now))
      })
    },
  }
}
