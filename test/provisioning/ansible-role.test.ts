/**
 * The Ansible roles, run for real by Debian's ansible-playbook with `connection: local` into a
 * temporary prefix (no systemd as PID 1 here, so units are installed and checked with
 * systemd-analyze, not started):
 *   unlockd_server installs the packed server, initializes it once and writes its unit; the
 *   test starts that installed server over TLS; unlockd_agent then installs the agent, enrolls a
 *   LUKS2 image and an fscrypt directory with a one-time token, and `unlockd unlock --test`
 *   works; unlockd_agent_encrypt converts a plaintext ext4 image to LUKS2 in place. Check mode
 *   changes nothing (it runs `unlockd encrypt --dry-run`), and a second run of each role reports
 *   changed=0.
 */
import test, { type ExecutionContext } from 'ava'
import { existsSync, statSync } from 'node:fs'
import { mkdir, readFile, truncate, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { FIXTURE_PBKDF } from '../helpers/luks.ts'
import { findBin, mustRun, rootTest, tool } from '../helpers/root.ts'
import { tempDir } from '../helpers/tmp.ts'
import { REPO, cli, requireBuild, run, startCliServer, type RunResult } from './support.ts'

const NEEDS = {
  bins: [
    'ansible-playbook',
    'cryptsetup',
    'mkfs.ext4',
    'mount',
    'umount',
    'losetup',
    'openssl',
    'systemd-analyze',
  ],
  serial: true,
}

interface Recap {
  ok: number
  changed: number
  failed: number
  unreachable: number
}

function recap(r: RunResult): Recap {
  const m = /^localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)/m.exec(
    r.stdout,
  )
  if (!m) throw new Error(`no PLAY RECAP in ansible-playbook output:\n${r.stdout}\n${r.stderr}`)
  return {
    ok: Number(m[1]),
    changed: Number(m[2]),
    unreachable: Number(m[3]),
    failed: Number(m[4]),
  }
}

async function playbook(
  t: ExecutionContext,
  w: string,
  play: string,
  vars: string,
  extra: string[] = [],
): Promise<{ r: RunResult; recap: Recap }> {
  const r = await run(
    'ansible-playbook',
    ['-i', join(w, 'inventory.ini'), join(w, play), '-e', `@${vars}`, ...extra],
    {
      env: {
        ANSIBLE_ROLES_PATH: join(REPO, 'provisioning/ansible/roles'),
        ANSIBLE_NOCOLOR: '1',
        ANSIBLE_FORCE_COLOR: '0',
        ANSIBLE_LOCALHOST_WARNING: 'false',
        ANSIBLE_HOME: join(w, 'ansible-home'),
        ANSIBLE_LOCAL_TEMP: join(w, 'ansible-tmp'),
        ANSIBLE_REMOTE_TMP: join(w, 'ansible-tmp'),
        ANSIBLE_RETRY_FILES_ENABLED: 'false',
        ANSIBLE_CONFIG: join(w, 'no-ansible.cfg'),
      },
      timeoutMs: 8 * 60_000,
    },
  )
  const rc = recap(r)
  if (r.code !== 0 || rc.failed !== 0) t.log(r.stdout.slice(-6000), r.stderr.slice(-2000))
  return { r, recap: rc }
}

/** Unit files plus their drop-ins must load cleanly (ExecStart binaries exist, no unknown keys). */
async function verifyUnits(
  t: ExecutionContext,
  systemdDir: string,
  units: string[],
): Promise<void> {
  const r = await run('systemd-analyze', ['verify', ...units.map((u) => join(systemdDir, u))], {
    env: { SYSTEMD_UNIT_PATH: `${systemdDir}:` },
  })
  t.is(r.code, 0, r.stderr)
  t.false(/ansible\.conf/.test(r.stderr), r.stderr)
}

rootTest(
  'the server and agent roles install, enroll a LUKS2 image and an fscrypt directory, and change nothing on a second run',
  async (t) => {
    t.timeout(15 * 60_000)
    if (!requireBuild(t)) return
    const w = await tempDir(t, 'unlockd-ansible-')

    // --- release archives, as an operator makes them ---
    const packed = await run('bash', [join(REPO, 'provisioning/pack.sh'), join(w, 'dist')])
    t.is(packed.code, 0, packed.stderr)

    // --- fixtures: TLS certificate, LUKS2 image with a key file, ext4 (encrypt) loop mount ---
    await mustRun('openssl', [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-days',
      '2',
      '-subj',
      '/CN=escrow.test',
      '-addext',
      'subjectAltName=IP:127.0.0.1,DNS:localhost',
      '-keyout',
      join(w, 'tls.key'),
      '-out',
      join(w, 'tls.crt'),
    ])
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
    const fsImg = join(w, 'fs.img')
    const mnt = join(w, 'mnt')
    await writeFile(fsImg, '', { mode: 0o600 })
    await truncate(fsImg, 64 * 1024 * 1024)
    await mustRun('mkfs.ext4', ['-q', '-F', '-O', 'encrypt', fsImg])
    await mkdir(mnt)
    await mustRun('mount', ['-o', 'loop', fsImg, mnt])
    t.teardown(async () => {
      if ((await tool('umount', [mnt])).code !== 0) await tool('umount', ['-l', mnt])
    })
    const secrets = join(mnt, 'secrets')
    // A plaintext ext4 image with a file on it, for unlockd_agent_encrypt.
    const plainImg = join(w, 'plain.img')
    await writeFile(plainImg, '', { mode: 0o600 })
    await truncate(plainImg, 80 * 1024 * 1024)
    await mustRun('mkfs.ext4', ['-q', '-F', '-b', '4096', plainImg])
    const plainMnt = join(w, 'plain-mnt')
    await mkdir(plainMnt)
    await mustRun('mount', ['-o', 'loop', plainImg, plainMnt])
    await writeFile(join(plainMnt, 'hello.txt'), 'data that was written before encryption\n')
    await mustRun('umount', [plainMnt])
    const fallbackPassphrase = 'fallback passphrase of the converted volume'

    await writeFile(
      join(w, 'inventory.ini'),
      'localhost ansible_connection=local ansible_python_interpreter=/usr/bin/python3\n',
    )
    await writeFile(join(w, 'no-ansible.cfg'), '')
    for (const role of ['unlockd_server', 'unlockd_agent']) {
      await writeFile(
        join(w, `${role}.yml`),
        `- hosts: localhost\n  gather_facts: false\n  roles: [${role}]\n`,
      )
    }

    // --- the escrow server role ---
    const sp = join(w, 'server-root')
    const passphrase = 'escrow keystore passphrase for the role test'
    const serverVars = join(w, 'server-vars.json')
    await writeFile(
      serverVars,
      JSON.stringify({
        unlockd_server_archive: join(w, 'dist/unlockd-server.tar.gz'),
        unlockd_server_install_node: false,
        unlockd_server_node: process.execPath,
        unlockd_server_install_dir: `${sp}/usr/lib/unlockd`,
        unlockd_server_bin_dir: `${sp}/usr/local/bin`,
        unlockd_server_config_dir: `${sp}/etc/unlockd`,
        unlockd_server_data_dir: `${sp}/var/lib/unlockd`,
        unlockd_server_systemd_dir: `${sp}/etc/systemd/system`,
        unlockd_server_user: 'root',
        unlockd_server_group: 'root',
        unlockd_server_create_user: false,
        unlockd_server_manage_service: false,
        unlockd_server_passphrase: passphrase,
        unlockd_server_listen: '127.0.0.1:8443',
        unlockd_server_tls_cert_pem: await readFile(join(w, 'tls.crt'), 'utf8'),
        unlockd_server_tls_key_pem: await readFile(join(w, 'tls.key'), 'utf8'),
        unlockd_server_settings: { approvalTtl: '15m' },
        unlockd_server_cli_env: {
          UNLOCKD_TOKEN_FILE: `${sp}/etc/unlockd/operator-token`,
          UNLOCKD_CA: `${sp}/etc/unlockd/tls.crt`,
        },
      }),
      { mode: 0o600 },
    )

    const sCheck = await playbook(t, w, 'unlockd_server.yml', serverVars, ['--check'])
    t.is(sCheck.r.code, 0, 'server role, check mode')
    t.true(sCheck.recap.changed > 0)
    t.false(existsSync(`${sp}/var/lib/unlockd/keystore.json`), 'check mode initialized nothing')

    const s1 = await playbook(t, w, 'unlockd_server.yml', serverVars, ['-v', '--diff'])
    t.is(s1.r.code, 0, 'server role, first run')
    t.true(s1.recap.changed > 0)
    const operatorToken = (await readFile(`${sp}/etc/unlockd/operator-token`, 'utf8')).trim()
    t.regex(operatorToken, /^uo_/)
    for (const [secret, what] of [
      [passphrase, 'passphrase'],
      [operatorToken, 'operator token'],
      [(await readFile(join(w, 'tls.key'), 'utf8')).split('\n')[1] as string, 'TLS key'],
    ] as const) {
      t.false(
        s1.r.stdout.includes(secret) || s1.r.stderr.includes(secret),
        `the ${what} leaked into ansible output`,
      )
    }
    for (const [path, mode] of [
      [`${sp}/etc/unlockd/server-passphrase`, 0o600],
      [`${sp}/etc/unlockd/operator-token`, 0o600],
      [`${sp}/etc/unlockd/tls.key`, 0o600],
      [`${sp}/var/lib/unlockd/server.json`, 0o600],
      [`${sp}/var/lib/unlockd`, 0o700],
    ] as const) {
      t.is(statSync(path).mode & 0o777, mode, path)
    }
    t.is(await readFile(`${sp}/etc/unlockd/server-passphrase`, 'utf8'), passphrase)

    const s2 = await playbook(t, w, 'unlockd_server.yml', serverVars)
    t.is(s2.r.code, 0, 'server role, second run')
    t.is(s2.recap.changed, 0, 'second run of unlockd_server changes nothing')
    await verifyUnits(t, `${sp}/etc/systemd/system`, ['unlockd-server.service'])

    // --- start the installed server (TLS from the server.json the role wrote) ---
    const srv = await startCliServer(t, `${sp}/usr/lib/unlockd/unlockd.mjs`, [
      '--data',
      `${sp}/var/lib/unlockd`,
      '--passphrase-file',
      `${sp}/etc/unlockd/server-passphrase`,
    ])
    t.regex(srv.url, /^https:\/\/127\.0\.0\.1:\d+$/)
    const operatorCli = `${sp}/usr/local/bin/unlockd`
    const made = await run(
      operatorCli,
      ['token', 'create', '--host', 'web-1', '--ttl', '15m', '--cidr', '127.0.0.0/8', '--json'],
      { env: { UNLOCKD_URL: srv.url } },
    )
    t.is(made.code, 0, made.stderr)
    const enrollToken = (JSON.parse(made.stdout) as { token: string; id: string }).token
    const tokenId = (JSON.parse(made.stdout) as { id: string }).id

    // --- the agent role ---
    const ap = join(w, 'host-root')
    const agentVars = join(w, 'agent-vars.json')
    await writeFile(
      agentVars,
      JSON.stringify({
        unlockd_agent_archive: join(w, 'dist/unlockd-agent.tar.gz'),
        unlockd_agent_install_node: false,
        unlockd_agent_node: process.execPath,
        unlockd_agent_install_dir: `${ap}/usr/lib/unlockd`,
        unlockd_agent_bin_dir: `${ap}/usr/local/bin`,
        unlockd_agent_config_dir: `${ap}/etc/unlockd`,
        unlockd_agent_systemd_dir: `${ap}/etc/systemd/system`,
        unlockd_agent_manage_service: false,
        unlockd_agent_servers: [srv.url],
        unlockd_agent_ca_pem: await readFile(join(w, 'tls.crt'), 'utf8'),
        unlockd_agent_name: 'web-1',
        unlockd_agent_enroll_token: enrollToken,
        unlockd_agent_volumes: [
          { name: 'data', kind: 'luks', device: img, existing_key_file: luksKey },
          { name: 'secrets', kind: 'fscrypt', path: secrets },
        ],
        unlockd_agent_encrypt: [{ luks: plainImg, name: 'plain' }],
        unlockd_agent_encrypt_fallback_passphrase: fallbackPassphrase,
        unlockd_agent_encrypt_state_dir: `${ap}/var/lib/unlockd/encrypt`,
        // Test-only: a fast PBKDF for the new keyslot (the fixture image uses one too).
        unlockd_agent_enroll_environment: { UNLOCKD_LUKS_PBKDF: 'fast' },
      }),
      { mode: 0o600 },
    )

    const aCheck = await playbook(t, w, 'unlockd_agent.yml', agentVars, ['--check'])
    t.is(aCheck.r.code, 0, 'agent role, check mode')
    t.true(aCheck.recap.changed > 0)
    t.regex(aCheck.r.stdout, /would enroll data, secrets/)
    t.regex(aCheck.r.stdout, /would encrypt plain/)
    t.false(existsSync(`${ap}/etc/unlockd/agent.json`), 'check mode enrolled nothing')
    const unused = await run(operatorCli, ['token', 'list', '--json'], {
      env: { UNLOCKD_URL: srv.url },
    })
    t.like(
      (JSON.parse(unused.stdout) as { id: string }[]).find((x) => x.id === tokenId),
      { state: 'unused' },
    )

    const a1 = await playbook(t, w, 'unlockd_agent.yml', agentVars, ['-v', '--diff'])
    t.is(a1.r.code, 0, 'agent role, first run')
    t.true(a1.recap.changed > 0)
    t.false(
      a1.r.stdout.includes(enrollToken) || a1.r.stderr.includes(enrollToken),
      'the enrollment token leaked into ansible output',
    )
    t.false(
      a1.r.stdout.includes(fallbackPassphrase) || a1.r.stderr.includes(fallbackPassphrase),
      'the fallback passphrase leaked into ansible output',
    )
    t.regex(
      a1.r.stdout,
      /TASK \[unlockd_agent : Encrypt in place\][^\n]*\nchanged: \[localhost\] => \(item=plain: /,
    )
    t.is(
      (await tool('cryptsetup', ['isLuks', '--type', 'luks2', plainImg])).code,
      0,
      'the plaintext image is LUKS2 now',
    )
    t.is(statSync(`${ap}/etc/unlockd/encrypt-fallback`).mode & 0o777, 0o600)
    const agentJson = JSON.parse(await readFile(`${ap}/etc/unlockd/agent.json`, 'utf8')) as {
      name: string
      servers: { url: string; ca: string | null }[]
      volumes: { name: string; kind: string }[]
    }
    t.is(agentJson.name, 'web-1')
    t.deepEqual(
      agentJson.servers.map((s) => s.url),
      [srv.url],
    )
    t.truthy(agentJson.servers[0]?.ca, 'the CA is pinned')
    t.deepEqual(agentJson.volumes.map((v) => `${v.name}:${v.kind}`).sort(), [
      'data:luks',
      'plain:luks',
      'secrets:fscrypt',
    ])
    t.is(statSync(`${ap}/etc/unlockd`).mode & 0o777, 0o700)
    t.is(statSync(`${ap}/etc/unlockd/agent.json`).mode & 0o777, 0o600)

    const a2 = await playbook(t, w, 'unlockd_agent.yml', agentVars)
    t.is(a2.r.code, 0, 'agent role, second run')
    t.is(a2.recap.changed, 0, 'second run of unlockd_agent changes nothing')
    const a3 = await playbook(t, w, 'unlockd_agent.yml', agentVars, ['--check'])
    t.is(a3.r.code, 0)
    t.is(a3.recap.changed, 0, 'check mode on an enrolled host changes nothing')
    t.regex(
      a3.r.stdout,
      /plain: unchanged/,
      'check mode asks the command (--dry-run), which finds it converted',
    )
    await verifyUnits(t, `${ap}/etc/systemd/system`, [
      'unlockd-agent.service',
      'unlockd-agent.path',
    ])

    // A volume added to the list later enrolls alone, without a token (the host is enrolled).
    const moreVars = join(w, 'agent-vars-more.json')
    const more = JSON.parse(await readFile(agentVars, 'utf8')) as {
      unlockd_agent_volumes: unknown[]
    } & Record<string, unknown>
    more['unlockd_agent_enroll_token'] = ''
    more.unlockd_agent_volumes.push({
      name: 'secrets2',
      kind: 'fscrypt',
      path: join(mnt, 'secrets2'),
      mode: '0750',
    })
    await writeFile(moreVars, JSON.stringify(more), { mode: 0o600 })
    const a4 = await playbook(t, w, 'unlockd_agent.yml', moreVars)
    t.is(a4.r.code, 0, 'agent role, one more volume')
    t.regex(a4.r.stdout, /TASK \[unlockd_agent : Enroll secrets2\][^\n]*\nchanged:/)
    t.is(statSync(join(mnt, 'secrets2')).mode & 0o777, 0o750)
    const a5 = await playbook(t, w, 'unlockd_agent.yml', moreVars)
    t.is(a5.recap.changed, 0, 'and then nothing changes')

    // --- the installed command unlocks with keys from the escrow server ---
    const hostCli = `${ap}/usr/local/bin/unlockd`
    const unlock = await run(hostCli, ['unlock', '--test', '--json'])
    t.is(unlock.code, 0, unlock.stderr)
    const status = await run(hostCli, ['status', '--json'])
    t.is(status.code, 0, status.stderr)
    t.deepEqual(
      (JSON.parse(status.stdout) as { volumes: { name: string }[] }).volumes
        .map((v) => v.name)
        .sort(),
      ['data', 'plain', 'secrets', 'secrets2'],
    )
    const used = await run(operatorCli, ['token', 'list', '--json'], {
      env: { UNLOCKD_URL: srv.url },
    })
    t.like(
      (JSON.parse(used.stdout) as { id: string }[]).find((x) => x.id === tokenId),
      { state: 'used' },
    )

    // The same token (as a leaked vars file would hold) cannot enroll another host.
    const replay = await cli(
      [
        'enroll',
        '--json',
        '--server',
        srv.url,
        '--ca',
        join(w, 'tls.crt'),
        '--token',
        '-',
        '--name',
        'web-1',
        '--config',
        join(w, 'other-host'),
      ],
      { input: enrollToken },
    )
    t.is(replay.code, 3)
    t.like(JSON.parse(replay.stdout), { error: 'token_used' })
  },
  NEEDS,
)

const hasAnsible = findBin('ansible-playbook') !== undefined
if (!hasAnsible && (process.env['CI'] ?? '') === '') {
  console.warn(
    `\n${'!'.repeat(78)}\n!! SKIPPING example playbook check: needs ansible (apt-get install ansible)\n${'!'.repeat(78)}\n`,
  )
}

;(hasAnsible || (process.env['CI'] ?? '') !== '' ? test : test.skip)(
  'the example playbook and inventory parse (syntax check, group and host vars)',
  async (t) => {
    t.truthy(
      findBin('ansible-playbook'),
      'ansible is installed (apt-get install ansible); CI must run this test',
    )
    const examples = join(REPO, 'provisioning/ansible/examples')
    // examples/ansible.cfg names the inventory and the roles path, as an operator would use it.
    const env = { ANSIBLE_NOCOLOR: '1', ANSIBLE_CONFIG: join(examples, 'ansible.cfg') }
    const syntax = await run('ansible-playbook', ['--syntax-check', 'site.yml'], {
      cwd: examples,
      env,
    })
    t.is(syntax.code, 0, syntax.stdout + syntax.stderr)
    const inv = await run('ansible-inventory', ['--list'], { cwd: examples, env })
    t.is(inv.code, 0, inv.stderr)
    const hostvars = (
      JSON.parse(inv.stdout) as { _meta: { hostvars: Record<string, Record<string, unknown>> } }
    )._meta.hostvars
    t.deepEqual(
      (hostvars['db-1']?.['unlockd_agent_volumes'] as { name: string }[]).map((v) => v.name),
      ['secrets', 'pgdata'],
    )
    t.deepEqual(hostvars['web-1']?.['unlockd_agent_servers'], ['{{ unlockd_escrow_url }}'])
  },
)

const hasLint = findBin('ansible-lint') !== undefined
if (!hasLint && (process.env['CI'] ?? '') === '') {
  console.warn(
    `\n${'!'.repeat(78)}\n!! SKIPPING ansible-lint check: needs ansible-lint (apt-get install ansible-lint)\n${'!'.repeat(78)}\n`,
  )
}

;(hasLint || (process.env['CI'] ?? '') !== '' ? test : test.skip)(
  'the roles and the example playbook pass ansible-lint (production profile)',
  async (t) => {
    t.truthy(
      findBin('ansible-lint'),
      'ansible-lint is installed (apt-get install ansible-lint); CI must run this test',
    )
    const r = await run(
      'ansible-lint',
      [
        '--offline',
        '--nocolor',
        '-p',
        'roles/unlockd_agent',
        'roles/unlockd_server',
        'examples/site.yml',
      ],
      {
        cwd: join(REPO, 'provisioning/ansible'),
        env: { ANSIBLE_CONFIG: join(REPO, 'provisioning/ansible/examples/ansible.cfg') },
        timeoutMs: 5 * 60_000,
      },
    )
    t.is(r.code, 0, r.stdout + r.stderr)
  },
)
