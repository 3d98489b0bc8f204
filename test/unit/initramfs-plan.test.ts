/**
 * agent/initramfs-plan.ts: what the initramfs hooks copy, and every way it refuses to build an
 * image that would fail at boot. Config dirs are real (host keys made with the real code).
 */
import test, { type ExecutionContext } from 'ava'
import { chmod, mkdir, unlink, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { configDir, saveConfig, saveKeys } from '../../agent/config-dir.ts'
import {
  parseCrypttab,
  parseShellConf,
  planInitramfs,
  planLines,
  rootMapping,
  settingsFrom,
  sourceMatches,
  type PlanOptions,
} from '../../agent/initramfs-plan.ts'
import { generateHostKeys } from '../../shared/crypto/keys.ts'
import { run } from '../helpers/spawn.ts'
import { tempDir } from '../helpers/tmp.ts'

const UUID = '3ae804d8-a3a7-46b9-9a43-01e2af7dfd0d'
const DIGEST = 'yc8OeDrIB36I8aOfDWhT6TUjPTKLudk_xmM0STty694'

test('parseCrypttab reads names, sources, keys and options, skipping comments', (t) => {
  const entries = parseCrypttab(
    `# comment\n\ncryptroot UUID=${UUID} none luks,initramfs # trailing\nswap /dev/sdb2 /dev/urandom swap\nbare /dev/sdc\n`,
  )
  t.deepEqual(
    entries.map((e) => [e.name, e.source, e.key, e.options, e.line]),
    [
      ['cryptroot', `UUID=${UUID}`, 'none', ['luks', 'initramfs'], 3],
      ['swap', '/dev/sdb2', '/dev/urandom', ['swap'], 4],
      ['bare', '/dev/sdc', 'none', [], 5],
    ],
  )
})

test('parseShellConf accepts plain UNLOCKD_ assignments only, so sourcing it runs nothing', (t) => {
  t.deepEqual(
    parseShellConf(
      '# x\nUNLOCKD_NODE=/usr/bin/node\nUNLOCKD_TIMEOUT="60"\nUNLOCKD_IFDOWN=\'no\'\n',
      'f',
    ),
    {
      UNLOCKD_NODE: '/usr/bin/node',
      UNLOCKD_TIMEOUT: '60',
      UNLOCKD_IFDOWN: 'no',
    },
  )
  for (const bad of [
    'UNLOCKD_NODE=$(rm -rf /)',
    'UNLOCKD_NODE=`id`',
    'PATH=/tmp',
    'UNLOCKD_NODE=/a; reboot',
    'export UNLOCKD_NODE=/x',
    'UNLOCKD_NODE="/a b" c',
  ]) {
    t.throws(() => parseShellConf(bad, 'f'), { code: 'config_invalid' } as never, bad)
  }
})

test('settingsFrom has defaults and rejects nonsense', (t) => {
  t.like(settingsFrom({}, 'f'), { timeout: 300, ifdown: true, enabled: true })
  t.like(
    settingsFrom({ UNLOCKD_TIMEOUT: '45', UNLOCKD_IFDOWN: 'no', UNLOCKD_INITRAMFS: 'no' }, 'f'),
    { timeout: 45, ifdown: false, enabled: false },
  )
  t.throws(() => settingsFrom({ UNLOCKD_TIMEOUT: '0' }, 'f'), { message: /UNLOCKD_TIMEOUT/ })
  t.throws(() => settingsFrom({ UNLOCKD_IFDOWN: 'maybe' }, 'f'), { message: /yes or no/ })
})

test('sourceMatches knows UUID=, /dev/disk/by-uuid and the enrolled device path', (t) => {
  const vol = { uuid: UUID, device: '/dev/vda' }
  t.true(sourceMatches(`UUID=${UUID.toUpperCase()}`, vol))
  t.true(sourceMatches(`/dev/disk/by-uuid/${UUID}`, vol))
  t.true(sourceMatches('/dev/vda', vol))
  t.false(sourceMatches('/dev/vdb', vol))
  t.false(sourceMatches('UUID=00000000-0000-0000-0000-000000000000', vol))
})

test('rootMapping finds the mapping under / in fstab', (t) => {
  t.is(rootMapping('# c\n/dev/mapper/cryptroot / ext4 defaults 0 1\n'), 'cryptroot')
  t.is(rootMapping('UUID=abc / ext4 defaults 0 1\n'), undefined)
  t.is(rootMapping('/dev/mapper/data /srv ext4 defaults 0 2\n'), undefined)
})

interface Fixture {
  dir: string
  cfg: string
  opts: PlanOptions
}

async function fixture(
  t: ExecutionContext,
  o: { crypttab?: string; ca?: boolean } = {},
): Promise<Fixture> {
  const dir = await tempDir(t)
  const cfg = join(dir, 'etc-unlockd')
  const c = configDir(cfg)
  saveKeys(c, await generateHostKeys())
  saveConfig(c, {
    version: 1,
    name: 'web-1',
    hostId: 'RJLv8Q7agJZjGqB5NOzdT0gzHY7qVrKtEINQjbc4yPI',
    serverKeys: [],
    servers: [
      {
        url: 'https://escrow.example:8443',
        ca: o.ca === false ? null : 'ca.pem',
        spkiSha256: null,
      },
    ],
    volumes: [
      {
        name: 'root',
        kind: 'luks',
        device: '/dev/vda',
        uuid: UUID,
        keyslot: 1,
        blobDigest: DIGEST,
      },
    ],
    onShred: 'close-then-erase',
    unlockWait: 300,
    requestTimeoutMs: 5000,
  })
  if (o.ca !== false) await writeFile(join(cfg, 'ca.pem'), '-----BEGIN CERTIFICATE-----\n')
  const bundle = join(dir, 'unlockd-agent.mjs')
  await writeFile(bundle, '// bundle\n')
  const crypttab = join(dir, 'crypttab')
  await writeFile(crypttab, o.crypttab ?? `cryptroot UUID=${UUID} none luks,initramfs\n`)
  const fstab = join(dir, 'fstab')
  await writeFile(fstab, '/dev/mapper/cryptroot / ext4 defaults 0 1\n')
  return {
    dir,
    cfg,
    opts: {
      configDir: cfg,
      flavour: 'initramfs-tools',
      crypttabPath: crypttab,
      fstabPath: fstab,
      node: process.execPath,
      bundle,
    },
  }
}

test('a complete host gives a plan: node, bundle, config, keys (0600), CA, and the volume map', async (t) => {
  const f = await fixture(t)
  const plan = await planInitramfs(f.opts)
  t.deepEqual(plan.problems, [])
  t.deepEqual(
    plan.files.map((x) => [x.kind, x.dest]),
    [
      ['exec', '/usr/bin/node'],
      ['file', '/usr/lib/unlockd/unlockd-agent.mjs'],
      ['secret', '/etc/unlockd/agent.json'],
      ['secret', '/etc/unlockd/signing.jwk'],
      ['secret', '/etc/unlockd/sealing.jwk'],
      ['file', '/etc/unlockd/ca.pem'],
    ],
  )
  t.true(
    plan.files.every((x) => x.why.length > 10),
    'every file says why it is there',
  )
  t.like(plan.volumes[0], {
    name: 'root',
    atBoot: true,
    crypttab: { name: 'cryptroot', options: ['luks', 'initramfs'] },
  })
  const lines = planLines(plan).trimEnd().split('\n')
  t.is(lines.at(-1), `volume\t${UUID}\troot`)
  t.is(lines[0], `exec\t${process.execPath}\t/usr/bin/node`)
})

test('the root mapping from fstab counts as asked in the initramfs without the initramfs option', async (t) => {
  const f = await fixture(t, { crypttab: `cryptroot UUID=${UUID} none luks\n` })
  const plan = await planInitramfs(f.opts)
  t.deepEqual(plan.problems, [])
  t.true(plan.volumes[0]?.atBoot)
})

test('every missing piece is a problem with a remedy, all of them at once', async (t) => {
  const f = await fixture(t)
  await unlink(join(f.cfg, 'sealing.jwk'))
  await unlink(join(f.cfg, 'ca.pem'))
  const plan = await planInitramfs({
    ...f.opts,
    node: join(f.dir, 'no-node'),
    bundle: join(f.dir, 'no-bundle.mjs'),
  })
  const text = plan.problems.join('\n')
  t.regex(text, /no-node does not exist or is not executable: fix UNLOCKD_NODE/)
  t.regex(text, /no-bundle\.mjs is missing: install unlockd/)
  t.regex(text, /sealing\.jwk is missing/)
  t.is(
    plan.problems.length,
    3,
    'the CA is not checked when agent.json could not be loaded with its keys',
  )
})

test('a missing pinned CA and a world-readable key are problems', async (t) => {
  const f = await fixture(t)
  await unlink(join(f.cfg, 'ca.pem'))
  await chmod(join(f.cfg, 'signing.jwk'), 0o644)
  const plan = await planInitramfs(f.opts)
  t.regex(plan.problems.join('\n'), /signing\.jwk is readable by group\/others.*chmod 600/)
  await chmod(join(f.cfg, 'signing.jwk'), 0o600)
  const again = await planInitramfs(f.opts)
  t.regex(
    again.problems.join('\n'),
    /pinned CA .*ca\.pem of https:\/\/escrow\.example:8443 is missing/,
  )
})

test('no crypttab entry: a problem that shows the line to add', async (t) => {
  const f = await fixture(t, {
    crypttab: 'other UUID=11111111-2222-3333-4444-555555555555 none luks\n',
  })
  const plan = await planInitramfs(f.opts)
  t.regex(
    plan.problems.join('\n'),
    new RegExp(`add one, e\\.g\\.: cryptroot UUID=${UUID} none luks,initramfs`),
  )
})

test('a keyscript on the entry is refused: no prompt would be shown for the agent to answer', async (t) => {
  const f = await fixture(t, {
    crypttab: `cryptroot UUID=${UUID} none luks,keyscript=/usr/local/sbin/fetch\n`,
  })
  const plan = await planInitramfs(f.opts)
  t.regex(
    plan.problems.join('\n'),
    /uses keyscript=\/usr\/local\/sbin\/fetch.*remove the keyscript option/,
  )
})

test('https without a pinned CA is a warning (no CA store in the initramfs)', async (t) => {
  const f = await fixture(t, { ca: false })
  const plan = await planInitramfs(f.opts)
  t.deepEqual(plan.problems, [])
  t.regex(plan.warnings.join('\n'), /no pinned CA/)
})

test('dracut needs no crypttab entry (rd.luks.uuid= works too)', async (t) => {
  const f = await fixture(t)
  const plan = await planInitramfs({
    ...f.opts,
    flavour: 'dracut',
    crypttabPath: join(f.dir, 'absent'),
  })
  t.deepEqual(plan.problems, [])
  t.true(plan.volumes[0]?.atBoot)
  t.regex(plan.warnings.join('\n'), /rd\.luks\.uuid/)
})

test('not enrolled: the problem says to enroll first', async (t) => {
  const dir = await tempDir(t)
  await mkdir(join(dir, 'empty'), { mode: 0o700 })
  const plan = await planInitramfs({
    configDir: join(dir, 'empty'),
    flavour: 'initramfs-tools',
    crypttabPath: '/nonexistent',
    fstabPath: '/nonexistent',
    node: process.execPath,
    bundle: process.execPath,
  })
  t.regex(plan.problems.join('\n'), /not enrolled.*run unlockd enroll first/)
})

test('unlockd initramfs check (CLI): lists files with reasons, --format lines for hooks, exit 1 with problems', async (t) => {
  const f = await fixture(t)
  const cliPath = join(process.cwd(), 'dist/unlockd.mjs')
  const base = [
    'initramfs',
    'check',
    '--config',
    f.cfg,
    '--crypttab',
    f.opts.crypttabPath,
    '--fstab',
    f.opts.fstabPath,
    '--bundle',
    f.opts.bundle as string,
    '--node',
    process.execPath,
    '--flavour',
    'initramfs-tools',
  ]
  const ok = await run(process.execPath, [cliPath, ...base])
  t.is(ok.code, 0, ok.stderr)
  t.regex(ok.stdout, /host signing key: signs the unlock requests/)
  t.regex(ok.stdout, /root {2}UUID=.* {2}crypttab cryptroot \(luks,initramfs\) {2}answered at boot/)
  const lines = await run(process.execPath, [cliPath, ...base, '--format', 'lines'])
  t.is(lines.code, 0)
  t.regex(lines.stdout, new RegExp(`^volume\\t${UUID}\\troot$`, 'm'))
  await unlink(join(f.cfg, 'signing.jwk'))
  const bad = await run(process.execPath, [cliPath, ...base, '--format', 'lines'])
  t.is(bad.code, 1)
  t.is(bad.stdout, '', 'no plan is printed when the image cannot be built')
  t.regex(bad.stderr, /E: unlockd: .*signing\.jwk is missing/)
  const json = await run(process.execPath, [cliPath, ...base, '--json'])
  t.is(json.code, 1)
  t.true((JSON.parse(json.stdout) as { problems: string[] }).problems.length > 0)
})
