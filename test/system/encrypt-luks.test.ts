/**
 * Story: a plaintext ext4 image full of files becomes LUKS2 in place through `unlockd encrypt
 * --luks`; the escrowed key opens it (unlock --test), the fallback passphrase has its own
 * keyslot, and an offline decryption of a copy gives back every file, byte for byte, with its
 * metadata. A run killed with SIGKILL during the resize2fs shrink or half-way through the data
 * is finished by running the same command again. Bad inputs are refused before anything changes.
 */
import type { ExecutionContext } from 'ava'
import { mkdir, readFile, stat, truncate, writeFile } from 'node:fs/promises'
import { createHash } from 'node:crypto'
import { join } from 'node:path'
import { rootTest, mustRun, tool } from '../helpers/root.ts'
import { tempDir } from '../helpers/tmp.ts'
import { runCli, type CliResult } from '../helpers/cli.ts'
import { luksMetadata } from '../helpers/luks.ts'
import { DATASET_NEEDS } from '../helpers/dataset.ts'
import {
  escrowedKey,
  checkImage,
  decryptCopy,
  enrolledHost,
  seededImage,
  type EnrolledHost,
} from '../helpers/encrypt.ts'
import { testKey } from '../../agent/volumes/luks.ts'

// Serial: each test moves hundreds of MiB; in parallel they starve a small shared machine.
const NEEDS = {
  serial: true,
  bins: ['cryptsetup', 'mkfs.ext4', 'resize2fs', 'e2undo', 'mount', 'losetup', ...DATASET_NEEDS],
}
const FALLBACK = 'fallback passphrase for the test'
const LONG = { timeoutMs: 600_000 }

interface World {
  dir: string
  host: EnrolledHost
  fallbackFile: string
  stateDir: string
}

async function world(t: ExecutionContext): Promise<World> {
  const dir = await tempDir(t)
  const host = await enrolledHost(t, dir)
  const fallbackFile = join(dir, 'fallback')
  await writeFile(fallbackFile, `${FALLBACK}\n`, { mode: 0o600 })
  return { dir, host, fallbackFile, stateDir: join(dir, 'state') }
}

function encrypt(
  w: World,
  spec: string,
  extra: string[] = [],
  env: Record<string, string> = {},
): Promise<CliResult> {
  return runCli(
    [
      'encrypt',
      '--luks',
      spec,
      '--config',
      w.host.cfg,
      '--state-dir',
      w.stateDir,
      '--fallback-passphrase-file',
      w.fallbackFile,
      '--json',
      ...extra,
    ],
    { ...w.host.env, ...env },
    LONG,
  )
}

async function assertConverted(
  t: ExecutionContext,
  w: World,
  img: string,
  before: Record<string, unknown>,
): Promise<void> {
  t.is((await tool('cryptsetup', ['isLuks', '--type', 'luks2', img])).code, 0, 'the image is LUKS2')
  const dump = await mustRun('cryptsetup', ['luksDump', img])
  t.notRegex(dump, /online-reencrypt/, 'no reencryption left to do')
  const u = await runCli(['unlock', '--config', w.host.cfg, '--test', '--json'], w.host.env)
  t.is(u.code, 0, u.stderr)
  t.deepEqual(u.json.unlocked, ['data'], 'the escrowed key opens the volume')
  t.true(await testKey(img, new TextEncoder().encode(FALLBACK)), 'the fallback passphrase opens it')
  t.is(
    Object.keys((await luksMetadata(img)).keyslots).length,
    2,
    'escrowed key + fallback; the conversion key is gone',
  )
  const journal = join(w.stateDir, 'data.luks.json')
  t.is((await stat(journal)).mode & 0o777, 0o600)
  const j = JSON.parse(await readFile(journal, 'utf8'))
  t.true(j.finished)
  t.is(j.sealedKey, null, 'the journal no longer holds the conversion key')
  await t.throwsAsync(
    stat(join(w.stateDir, 'data.luks-header')),
    undefined,
    'the header backup is removed at the end',
  )
  const key = await escrowedKey(w.host.cfg, 'data')
  t.true(await testKey(img, key), 'the escrowed key opens the volume (checked by cryptsetup)')
  const copy = await decryptCopy(w.dir, img, key)
  const { fsck, fsckOut, after } = await checkImage(w.dir, copy)
  t.is(fsck, 0, fsckOut)
  t.true(Object.keys(before).length > 300)
  t.deepEqual(after, before, 'every file, link, xattr, mode, owner and mtime is unchanged')
}

rootTest(
  'encrypt --luks converts a seeded ext4 image in place; a second run changes nothing',
  async (t) => {
    const w = await world(t)
    const { img, before } = await seededImage(w.dir, 320)
    const dry = await encrypt(w, `${img}:data`, ['--dry-run'])
    t.is(dry.code, 0, dry.stderr)
    t.is(dry.json.plan.fstype, 'ext4')
    t.is(dry.json.plan.headerRoomBytes, 32 * 1024 * 1024)
    t.is(dry.json.plan.mode, 'offline')
    t.deepEqual(dry.json.plan.refusals, [])
    t.is(
      (await tool('blkid', ['-p', '-o', 'value', '-s', 'TYPE', img])).stdout.trim(),
      'ext4',
      'a dry run changes nothing',
    )

    // Mounted but idle: the plan shows the mount, and the conversion unmounts it first.
    const mnt = join(w.dir, 'live-mnt')
    await mkdir(mnt)
    await mustRun('mount', ['-o', 'loop', img, mnt])
    t.teardown(async () => {
      await tool('umount', [mnt])
    })
    const dry2 = await encrypt(w, `${img}:data`, ['--dry-run'])
    t.deepEqual(dry2.json.plan.mountpoints, [mnt])
    t.deepEqual(dry2.json.plan.users, [])
    const r = await encrypt(w, `${img}:data`)
    t.is(r.code, 0, r.stderr)
    t.is(r.json.status, 'converted')
    t.false((await readFile('/proc/self/mountinfo', 'utf8')).includes(` ${mnt} `), 'unmounted')
    const progress = r.stderr
      .split('\n')
      .filter((l) => l.startsWith('{'))
      .map((l) => JSON.parse(l) as { progress: string; doneBytes: number; totalBytes: number })
    t.true(progress.length > 0, 'JSON progress lines on stderr')
    const last = progress.at(-1)
    t.is(last?.progress, 'encrypting')
    t.true(
      last !== undefined && last.totalBytes > 200 * 1048576 && last.doneBytes === last.totalBytes,
    )
    await assertConverted(t, w, img, before)

    // The escrow server was told (signed reports): the host shows the volume encrypted, and
    // the audit log has the start and the end of the run.
    const shown = await w.host.srv.admin('GET', '/hosts/web-1')
    t.like(shown.body.encryption?.[0], { volume: 'data', kind: 'luks', state: 'done' })
    t.true(shown.body.encryption[0].totalBytes > 200 * 1048576)
    const audited = async (): Promise<string[]> =>
      ((await w.host.srv.admin('GET', '/audit?limit=1000')).body.entries as { action: string }[])
        .map((e) => e.action)
        .filter((a) => a.startsWith('encryption.'))
    t.deepEqual(await audited(), ['encryption.started', 'encryption.done'])

    const sum = createHash('sha256')
      .update(await readFile(img))
      .digest('hex')
    const again = await encrypt(w, `${img}:data`)
    t.is(again.code, 0, again.stderr)
    t.is(again.json.status, 'unchanged')
    t.is(
      createHash('sha256')
        .update(await readFile(img))
        .digest('hex'),
      sum,
      'the second run wrote nothing',
    )
    t.deepEqual(await audited(), ['encryption.started', 'encryption.done'], 'nothing reported')
  },
  NEEDS,
)

for (const [step, delay] of [
  ['reencrypt-data', '0'],
  ['shrink', '30'],
] as const) {
  rootTest(
    `encrypt --luks killed with SIGKILL during ${step}, then run again: complete, nothing lost`,
    async (t) => {
      const w = await world(t)
      const { img, before } = await seededImage(w.dir, 320)
      const killed = await encrypt(w, `${img}:data`, [], {
        UNLOCKD_TEST_CRASH_AT: step,
        UNLOCKD_TEST_CRASH_DELAY_MS: delay,
      })
      t.not(killed.code, 0, 'the first run died')
      const j = JSON.parse(await readFile(join(w.stateDir, 'data.luks.json'), 'utf8'))
      t.is(j.current, step, `the journal shows it stopped inside ${step}`)
      t.false(j.finished)
      const r = await encrypt(w, `${img}:data`)
      t.is(r.code, 0, r.stderr)
      t.is(r.json.status, 'converted')
      t.true(r.json.resumed)
      t.regex(r.stderr, new RegExp(`resuming step ${step}`), 'the rerun knew where it stopped')
      await assertConverted(t, w, img, before)
    },
    NEEDS,
  )
}

rootTest(
  'encrypt --luks refuses bad input before changing anything',
  async (t) => {
    const w = await world(t)
    const sha = async (p: string): Promise<string> =>
      createHash('sha256')
        .update(await readFile(p))
        .digest('hex')

    // not ext4
    const xfs = join(w.dir, 'swap.img')
    await writeFile(xfs, '', { mode: 0o600 })
    await truncate(xfs, 64 * 1024 * 1024)
    await mustRun('mkswap', [xfs])
    const s1 = await sha(xfs)
    const r1 = await encrypt(w, `${xfs}:data`)
    t.is(r1.code, 1)
    t.is(r1.json.error, 'volume_invalid')
    t.is(r1.json.reason, 'not_ext4')
    t.is(await sha(xfs), s1)

    // too full to shrink by 32 MiB
    const full = join(w.dir, 'full.img')
    await writeFile(full, '', { mode: 0o600 })
    await truncate(full, 64 * 1024 * 1024)
    await mustRun('mkfs.ext4', ['-q', '-F', '-b', '4096', full])
    const mnt = join(w.dir, 'mnt')
    await mkdir(mnt)
    await mustRun('mount', ['-o', 'loop', full, mnt])
    await tool('dd', [
      'if=/dev/zero',
      `of=${join(mnt, 'fill')}`,
      'bs=1M',
      'count=50',
      'status=none',
    ])
    // busy: a process holds a file open on the mount
    const holder = (await import('node:child_process')).spawn('sleep', ['600'], {
      cwd: mnt,
      stdio: 'ignore',
    })
    t.teardown(() => {
      holder.kill('SIGKILL')
    })
    await new Promise((r) => setTimeout(r, 200))
    const rBusy = await encrypt(w, `${full}:data`)
    t.is(rBusy.json.error, 'volume_busy', rBusy.stderr)
    t.is(rBusy.json.reason, 'busy')
    holder.kill('SIGKILL')
    await new Promise((r) => holder.once('exit', r))
    await mustRun('umount', [mnt])
    const s2 = await sha(full)
    const r2 = await encrypt(w, `${full}:data`)
    t.is(r2.json.error, 'volume_invalid', r2.stderr)
    t.is(r2.json.reason, 'too_full')
    t.is(await sha(full), s2)

    // already LUKS (not converted by us)
    const luks = join(w.dir, 'luks.img')
    await writeFile(luks, '', { mode: 0o600 })
    await truncate(luks, 32 * 1024 * 1024)
    await mustRun(
      'cryptsetup',
      [
        'luksFormat',
        '--type',
        'luks2',
        '--batch-mode',
        '--pbkdf',
        'pbkdf2',
        '--pbkdf-force-iterations',
        '1000',
        '--key-file',
        '-',
        luks,
      ],
      new TextEncoder().encode('k'),
    )
    const r3 = await encrypt(w, `${luks}:data`)
    t.is(r3.json.reason, 'already_luks', r3.stderr)

    // no second way in
    const plain = join(w.dir, 'plain.img')
    await writeFile(plain, '', { mode: 0o600 })
    await truncate(plain, 96 * 1024 * 1024)
    await mustRun('mkfs.ext4', ['-q', '-F', plain])
    const r4 = await runCli(
      [
        'encrypt',
        '--luks',
        `${plain}:data`,
        '--config',
        w.host.cfg,
        '--state-dir',
        w.stateDir,
        '--json',
      ],
      w.host.env,
    )
    t.is(r4.json.reason, 'no_second_way', r4.stderr)

    // not enrolled
    const r5 = await runCli(
      [
        'encrypt',
        '--luks',
        `${plain}:data`,
        '--config',
        join(w.dir, 'nothing'),
        '--state-dir',
        w.stateDir,
        '--fallback-passphrase-file',
        w.fallbackFile,
        '--json',
      ],
      w.host.env,
    )
    t.is(r5.json.reason, 'not_enrolled', r5.stderr)
    t.is((await tool('blkid', ['-p', '-o', 'value', '-s', 'TYPE', plain])).stdout.trim(), 'ext4')
  },
  { serial: true, bins: [...NEEDS.bins, 'mkswap'] },
)

rootTest(
  'encrypt --luks --dry-run on the root filesystem refuses with use --root',
  async (t) => {
    const w = await world(t)
    const root = (await readFile('/proc/self/mountinfo', 'utf8'))
      .split('\n')
      .map((l) => l.split(' '))
      .find((f) => f[4] === '/')
    const sep = root?.indexOf('-', 6) ?? -1
    const source = root?.[sep + 2]
    if (
      root === undefined ||
      root[sep + 1] !== 'ext4' ||
      source === undefined ||
      !source.startsWith('/dev/')
    ) {
      t.pass('the root filesystem here is not ext4 on a block device; nothing to check')
      return
    }
    const r = await encrypt(w, `${source}:rootfs`, ['--dry-run'])
    t.is(r.code, 1, r.stderr)
    t.true(
      r.json.plan.refusals.some(
        (x: { reason: string; message: string }) =>
          x.reason === 'root_filesystem' && /--root/.test(x.message),
      ),
      JSON.stringify(r.json.plan.refusals),
    )
  },
  NEEDS,
)
