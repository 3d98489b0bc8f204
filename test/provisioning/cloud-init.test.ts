/**
 * The Terraform module's cloud-init user-data, rendered by the real terraform binary (the
 * module's provider-free user-data sub-module), checked with `terraform fmt`, validated with
 * Debian's `cloud-init schema`, and its first-boot script run with bash, as root in a Debian 12
 * chroot (an overlay over the cached packaging chroot), against a real escrow server on the
 * host's loopback: it downloads the unlockd-agent package this tree builds, installs it with
 * apt on Debian's nodejs 18, and enrolls.
 */
import test, { type ExecutionContext } from 'ava'
import { createHash } from 'node:crypto'
import { existsSync } from 'node:fs'
import { copyFile, mkdir, readFile, truncate, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { FIXTURE_PBKDF } from '../helpers/luks.ts'
import { findBin, mustRun, rootTest, tool } from '../helpers/root.ts'
import { builtDebs, inChroot, packagingChroot } from '../helpers/debs.ts'
import { startTestServer } from '../helpers/server.ts'
import { tempDir } from '../helpers/tmp.ts'
import { REPO, renderUserData, requireBuild, run, type UserDataInputs } from './support.ts'

const TERRAFORM = join(REPO, 'provisioning/terraform')

interface CloudConfig {
  write_files: { path: string; owner: string; permissions: string; content: string }[]
  runcmd: string[][]
}

/** Parse YAML with the python3-yaml that cloud-init itself uses. */
async function parseYaml(path: string): Promise<CloudConfig> {
  const r = await run('python3', [
    '-c',
    'import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))',
    path,
  ])
  if (r.code !== 0) throw new Error(`YAML parse failed: ${r.stderr}`)
  return JSON.parse(r.stdout) as CloudConfig
}

/** Inputs as the parent module passes them (main.tf), with the paths overridable for a prefix. */
function moduleInputs(o: Partial<UserDataInputs> = {}): UserDataInputs {
  return {
    server_url: 'https://escrow.example.net:8443',
    host_name: 'web-1',
    enroll_token: 'ue_' + 'A'.repeat(43),
    ca_pem: '-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n',
    agent_package_url: 'https://downloads.example.net/unlockd/unlockd-agent_0.1.0_amd64.deb',
    agent_package_sha256: 'a'.repeat(64),
    luks_volumes: [
      { device: '/dev/vdb', name: 'data' },
      { device: 'UUID=0b5e7a2c-1111-2222-3333-444455556666', name: 'logs' },
    ],
    luks_existing_key_file: '/root/luks.key',
    fscrypt_dirs: [{ path: '/srv/secrets', name: 'secrets' }],
    fscrypt_enable_ext4_encrypt: true,
    manage_service: true,
    ...o,
  }
}

const terraformTest =
  findBin('terraform') !== undefined || (process.env['CI'] ?? '') !== '' ? test : test.skip

terraformTest('terraform fmt finds nothing to change in the modules and examples', async (t) => {
  const r = await run(
    'terraform',
    ['fmt', '-check', '-recursive', '-diff', '-no-color', TERRAFORM],
    {
      env: { TF_CLI_CONFIG_FILE: '/dev/null' },
    },
  )
  t.is(r.code, 0, r.stdout + r.stderr)
})

terraformTest(
  'terraform renders every value into the script, the CA in base64, and refuses a missing input',
  async (t) => {
    const text = await renderUserData(t, moduleInputs())
    t.true(text.startsWith('#cloud-config\n'))
    t.false(text.includes('${'), 'no placeholder is left unrendered')
    for (const line of [
      "SERVER_URL='https://escrow.example.net:8443'",
      "HOST_NAME='web-1'",
      `ENROLL_TOKEN='ue_${'A'.repeat(43)}'`,
      `CA_PEM_B64='${Buffer.from(moduleInputs().ca_pem ?? '').toString('base64')}'`,
      "LUKS_VOLUMES='/dev/vdb:data UUID=0b5e7a2c-1111-2222-3333-444455556666:logs'",
      "FSCRYPT_DIRS='/srv/secrets:secrets'",
      "FSCRYPT_ENABLE_EXT4_ENCRYPT='true'",
      "AGENT_PACKAGE_URL='https://downloads.example.net/unlockd/unlockd-agent_0.1.0_amd64.deb'",
      `AGENT_PACKAGE_SHA256='${'a'.repeat(64)}'`,
    ]) {
      t.true(text.includes(line), `rendered user-data has ${line}`)
    }
    const partial: Partial<UserDataInputs> = moduleInputs()
    delete partial.host_name
    await t.throwsAsync(() => renderUserData(t, partial as UserDataInputs), {
      message: /host_name/,
    })
  },
)

const schemaTest =
  findBin('cloud-init') !== undefined || (process.env['CI'] ?? '') !== '' ? test : test.skip
if (findBin('cloud-init') === undefined && (process.env['CI'] ?? '') === '') {
  console.warn(
    `\n${'!'.repeat(78)}\n!! SKIPPING cloud-init schema test: needs cloud-init (apt-get install cloud-init)\n${'!'.repeat(78)}\n`,
  )
}

schemaTest(
  'the rendered user-data passes cloud-init schema, with a script that runs once from runcmd',
  async (t) => {
    t.truthy(
      findBin('cloud-init'),
      'cloud-init is installed (apt-get install cloud-init); CI must run this test',
    )
    const dir = await tempDir(t)
    for (const [label, vars] of [
      ['all volume kinds', moduleInputs()],
      [
        'already enrolled: no token, no CA, no volumes',
        moduleInputs({
          enroll_token: '',
          ca_pem: '',
          luks_volumes: [],
          luks_existing_key_file: '',
          fscrypt_dirs: [],
          fscrypt_enable_ext4_encrypt: false,
        }),
      ],
    ] as const) {
      const file = join(dir, 'user-data.yaml')
      await writeFile(file, await renderUserData(t, vars))
      const r = await run('cloud-init', ['schema', '--config-file', file])
      t.is(r.code, 0, `${label}: ${r.stdout}${r.stderr}`)
      t.regex(r.stdout, /Valid cloud-config/, label)
      t.false(/deprecat/i.test(r.stdout + r.stderr), `${label}: ${r.stdout}${r.stderr}`)

      const cc = await parseYaml(file)
      t.is(cc.write_files.length, 1)
      const script = cc.write_files[0]!
      t.like(script, {
        path: '/var/lib/unlockd-first-boot/enroll.sh',
        owner: 'root:root',
        permissions: '0700',
      })
      t.deepEqual(cc.runcmd, [['bash', script.path]])
      t.true(script.content.startsWith('#!/bin/bash\n'))
      const sh = join(dir, 'enroll.sh')
      await writeFile(sh, script.content)
      const syntax = await run('bash', ['-n', sh])
      t.is(syntax.code, 0, syntax.stderr)
    }
  },
)

const lintTest =
  findBin('shellcheck') !== undefined || (process.env['CI'] ?? '') !== '' ? test : test.skip
if (findBin('shellcheck') === undefined && (process.env['CI'] ?? '') === '') {
  console.warn(
    `\n${'!'.repeat(78)}\n!! SKIPPING shellcheck test: needs shellcheck (apt-get install shellcheck)\n${'!'.repeat(78)}\n`,
  )
}

lintTest('the first-boot script and provisioning/pack.sh pass shellcheck', async (t) => {
  t.truthy(
    findBin('shellcheck'),
    'shellcheck is installed (apt-get install shellcheck); CI must run this test',
  )
  const dir = await tempDir(t)
  const file = join(dir, 'user-data.yaml')
  await writeFile(file, await renderUserData(t, moduleInputs()))
  const sh = join(dir, 'enroll.sh')
  await writeFile(sh, (await parseYaml(file)).write_files[0]!.content)
  for (const script of [sh, join(REPO, 'provisioning/pack.sh')]) {
    const r = await run('shellcheck', ['-s', 'bash', script])
    t.is(r.code, 0, `${script}:\n${r.stdout}${r.stderr}`)
  }
})

async function fixtures(
  t: ExecutionContext,
  w: string,
): Promise<{ img: string; luksKey: string; mnt: string }> {
  const luksKey = join(w, 'luks.key')
  await writeFile(luksKey, 'existing passphrase of the data volume', { mode: 0o600 })
  const img = join(w, 'data.img')
  await writeFile(img, '', { mode: 0o600 })
  await truncate(img, 32 * 1024 * 1024)
  await mustRun('cryptsetup', [
    'luksFormat',
    '--type',
    'luks2',
    '--batch-mode',
    ...FIXTURE_PBKDF,
    '--key-file',
    luksKey,
    img,
  ])
  // Made WITHOUT the encrypt feature, like a stock cloud image: the script turns it on.
  const fsImg = join(w, 'fs.img')
  const mnt = join(w, 'mnt')
  await writeFile(fsImg, '', { mode: 0o600 })
  await truncate(fsImg, 64 * 1024 * 1024)
  await mustRun('mkfs.ext4', ['-q', '-F', fsImg])
  await mkdir(mnt)
  await mustRun('mount', ['-o', 'loop', fsImg, mnt])
  t.teardown(async () => {
    if ((await tool('umount', [mnt])).code !== 0) await tool('umount', ['-l', mnt])
  })
  return { img, luksKey, mnt }
}

rootTest(
  'the first-boot script installs the agent package, enrolls a LUKS2 image and an fscrypt directory, and the token cannot be used again',
  async (t) => {
    t.timeout(15 * 60_000)
    if (!requireBuild(t)) return
    const w = await tempDir(t, 'unlockd-cloudinit-')
    const [lower, debs] = await Promise.all([packagingChroot(), builtDebs()])
    // The host sees the fixtures and the package at /srv/t (a bind of the scratch directory).
    const IN = '/srv/t'
    const binds = { [w]: IN }
    await copyFile(debs.agent, join(w, 'unlockd-agent.deb'))
    const sha256 = createHash('sha256')
      .update(await readFile(debs.agent))
      .digest('hex')

    const srv = await startTestServer(t)
    const tok = await srv.admin('POST', '/tokens', {
      host: 'web-1',
      ttlSeconds: 1800,
      cidrs: ['127.0.0.0/8'],
    })
    t.is(tok.status, 201)
    await fixtures(t, w)

    let n = 0
    async function firstBoot(
      state: string,
      o: Partial<UserDataInputs> = {},
    ): Promise<{ code: number | null; stdout: string; stderr: string; script: string }> {
      const inputs = moduleInputs({
        server_url: srv.url,
        enroll_token: tok.body.token,
        ca_pem: '',
        agent_package_url: `file://${IN}/unlockd-agent.deb`,
        agent_package_sha256: sha256,
        luks_volumes: [{ device: `${IN}/data.img`, name: 'data' }],
        luks_existing_key_file: `${IN}/luks.key`,
        fscrypt_dirs: [{ path: `${IN}/mnt/secrets`, name: 'secrets' }],
        fscrypt_enable_ext4_encrypt: true,
        // No systemd runs as PID 1 in the chroot: the package's units are checked, not started.
        manage_service: false,
        ...o,
      })
      const userData = join(w, `user-data-${++n}.yaml`)
      await writeFile(userData, await renderUserData(t, inputs), { mode: 0o600 })
      const script = `enroll-${n}.sh`
      await writeFile(join(w, script), (await parseYaml(userData)).write_files[0]!.content, {
        mode: 0o700,
      })
      // Test-only: a fast PBKDF for the new keyslot (the fixture image uses one too).
      const r = await inChroot(lower, state, `bash ${IN}/${script}`, {
        binds,
        env: { UNLOCKD_LUKS_PBKDF: 'fast' },
      })
      return { ...r, script: join(w, script) }
    }
    const inHost = (state: string, cmd: string): ReturnType<typeof inChroot> =>
      inChroot(lower, state, cmd, { binds })

    const h1 = join(w, 'host-1')
    const boot = await firstBoot(h1)
    t.is(boot.code, 0, boot.stderr)
    t.false(existsSync(boot.script), 'the script deleted itself (it holds the token)')
    t.like(JSON.parse(boot.stdout), { name: 'web-1', changed: true })
    t.false(
      boot.stdout.includes(tok.body.token) || boot.stderr.includes(tok.body.token),
      'the token leaked into the output',
    )
    const agentJson = JSON.parse(
      await readFile(join(h1, 'upper/etc/unlockd/agent.json'), 'utf8'),
    ) as { volumes: { name: string; kind: string }[] }
    t.deepEqual(agentJson.volumes.map((v) => `${v.name}:${v.kind}`).sort(), [
      'data:luks',
      'secrets:fscrypt',
    ])
    t.regex(await mustRun('dumpe2fs', ['-h', join(w, 'fs.img')]), /features:.*\bencrypt\b/)

    const pkg = await inHost(h1, "dpkg-query -W -f '${Status} ${Version}' unlockd-agent")
    t.regex(pkg.stdout, /^install ok installed \d/, 'the package is installed')
    t.regex((await inHost(h1, 'node --version')).stdout, /^v18\./, "on Debian's nodejs 18")
    const unlock = await inHost(h1, 'unlockd unlock --test --json')
    t.is(unlock.code, 0, unlock.stderr)
    t.true(
      (JSON.parse(unlock.stdout) as { unlocked: string[] }).unlocked.includes('data'),
      unlock.stdout,
    )
    const units = await inHost(
      h1,
      'systemctl is-enabled unlockd-agent.service unlockd-agent.path && systemd-analyze verify /lib/systemd/system/unlockd-agent.service /lib/systemd/system/unlockd-agent.path',
    )
    t.is(units.code, 0, units.stdout + units.stderr)
    t.like(
      (await srv.admin('GET', '/tokens')).body.tokens.find(
        (x: { id: string }) => x.id === tok.body.id,
      ),
      { state: 'used', host: 'web-1' },
    )

    // Running the same script again (cloud-init re-run, an operator retry) changes nothing and
    // needs no token.
    const again = await firstBoot(h1, { enroll_token: '' })
    t.is(again.code, 0, again.stderr)
    t.like(JSON.parse(again.stdout), { changed: false })

    // A copy of the user-data (leaked, or a clone booting) cannot enroll: the token is spent.
    const h2 = join(w, 'host-2')
    const clone = await firstBoot(h2, {
      luks_volumes: [],
      luks_existing_key_file: '',
      fscrypt_dirs: [],
    })
    t.is(clone.code, 3, clone.stderr)
    t.like(JSON.parse(clone.stdout), { error: 'token_used' })
    t.false(existsSync(join(h2, 'upper/etc/unlockd/agent.json')))
  },
  {
    bins: [
      'cryptsetup',
      'mkfs.ext4',
      'mount',
      'umount',
      'losetup',
      'dumpe2fs',
      'python3',
      'unshare',
      'chroot',
      'debootstrap',
    ],
    serial: true,
  },
)
