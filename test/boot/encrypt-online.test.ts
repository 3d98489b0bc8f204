/**
 * Online in-place LUKS2 conversion in a real Debian guest (systemd as PID 1, test/vm/guest.ts),
 * with device-mapper, against the real escrow server on host loopback (reached from the guest
 * at 10.0.2.100:8443 through guestfwd only).
 *
 * Boot 1: the guest enrolls, starts the agent service, and runs
 *   unlockd encrypt --luks /dev/vdb:data --stop writer.service --fallback-passphrase-file F
 * on its mounted plaintext ext4 data disk while writer.service appends a numbered line (fsynced)
 * every second. The writer is stopped for the shrink and the header, and writes again through
 * /dev/mapper/data while the data still moves (the data disk's I/O is throttled so that phase
 * lasts long enough to be watched). Once the escrow server shows the progress in
 * `unlockd hosts`, QEMU is killed (SIGKILL) in the middle of the conversion.
 * Boot 2 (no throttle): the agent unlocks the volume from escrow at boot (crypttab/fstab point at
 * the mapping), resumes the conversion in the background and finishes it. Then every seeded
 * file matches its SHA-256 taken on the host before, the writer's lines are all there in order,
 * e2fsck is clean, and the LUKS2 header has no reencryption requirement left.
 *
 * Two boots; several minutes under TCG (far more on a loaded machine: the limits are generous).
 */
import { createHash, randomBytes } from 'node:crypto'
import { mkdir, mkdtemp, readFile, rm, symlink, truncate, writeFile } from 'node:fs/promises'
import { join } from 'node:path'
import { tmpdir } from 'node:os'
import type { ExecutionContext } from 'ava'
import { mustRun, rootTest } from '../helpers/root.ts'
import { run } from '../helpers/spawn.ts'
import { BOOT_BINS, REPO } from './env.ts'
import { GUEST_HOST, GUEST_PORT, startEscrow, type Escrow } from './escrow.ts'
import { checkPrerequisites } from './host.ts'
import type { Vm } from './qemu.ts'
import {
  bootGuestVm,
  guestBase,
  guestDisk,
  stageAgent,
  stageText,
  type GuestBase,
} from '../vm/guest.ts'

const NEEDS = { bins: [...BOOT_BINS, 'sgdisk', 'losetup'], serial: true }
/** Only stops a hung guest; a loaded 2-core machine makes a TCG boot take many minutes. */
const BOOT_LIMIT_MS = 45 * 60_000
const DATA_MIB = 512
/** Reads plus writes: the data phase of 512 MiB then lasts about 100 s at boot 1. */
const THROTTLE = `throttling.bps-total=${10 * 1024 * 1024}`

async function seed(dir: string): Promise<string> {
  const sums: string[] = []
  const put = async (rel: string, data: Buffer): Promise<void> => {
    await mkdir(join(dir, rel, '..'), { recursive: true })
    await writeFile(join(dir, rel), data)
    sums.push(`${createHash('sha256').update(data).digest('hex')}  ./${rel}`)
  }
  for (let i = 0; i < 300; i++)
    await put(`files/d${i % 7}/f${i}.dat`, randomBytes(64 + ((i * 997) % 16384)))
  await put('big/random-64m.bin', randomBytes(64 * 1024 * 1024))
  await put('hello.txt', Buffer.from('written on the host before the conversion\n'))
  return sums.join('\n') + '\n'
}

function writerScript(): string {
  return `#!/bin/sh
# Appends one numbered line per second to the data disk, each fsynced; numbering continues
# across restarts, so a lost or doubled line shows.
f=/srv/data/writer.log
b=$(cut -c1-8 /proc/sys/kernel/random/boot_id)
n=$(grep -c '^line ' "$f" 2>/dev/null); n=\${n:-0}
echo "start $b $n" >> "$f"; sync "$f"
while :; do
  n=$((n + 1))
  echo "line $n $b $(findmnt -no SOURCE /srv/data)" >> "$f"; sync "$f"
  sleep 1
done
`
}

const TASK1 = `#!/bin/sh
say() { echo "T1: $*"; }
export UNLOCKD_LUKS_PBKDF=fast
C=/etc/unlockd; F=/srv/data/writer.log
say "writer $(systemctl is-active writer.service), /srv/data on $(findmnt -no SOURCE /srv/data)"
unlockd enroll --server https://${GUEST_HOST}:${GUEST_PORT} --ca /etc/unlockd-test/ca.pem \\
  --token-file /etc/unlockd-test/enroll.token --name vm --config $C 2>&1 | sed 's/^/ENROLL: /'
[ -f $C/agent.json ] || { say "FAIL: enroll"; exit 1; }
systemctl start unlockd-agent.service; say "agent $(systemctl is-active unlockd-agent.service)"
unlockd encrypt --config $C --luks /dev/vdb:data --stop writer.service \\
  --fallback-passphrase-file /etc/unlockd-test/fallback --json 2>&1 | sed -u 's/^/ENC: /' &
i=0
while [ $i -lt 5000 ]; do
  i=$((i + 1))
  if cryptsetup luksDump /dev/vdb 2>/dev/null | grep -q online-reencrypt &&
     [ "$(findmnt -no SOURCE /srv/data)" = /dev/mapper/data ] &&
     [ "$(systemctl is-active writer.service)" = active ]; then
    a=$(grep -c '^line ' $F); sleep 3; b=$(grep -c '^line ' $F)
    if [ "$b" -gt "$a" ] && cryptsetup luksDump /dev/vdb | grep -q online-reencrypt; then
      say "ONLINE-WRITES lines=$b (from $a) while the data is encrypted"
      break
    fi
  fi
  sleep 1
done
wait
say "ENCRYPT-ENDED before the kill"
`

const TASK2 = `#!/bin/sh
say() { echo "T2: $*"; }
F=/srv/data/writer.log; J=/var/lib/unlockd/encrypt/data.luks.json
say "agent $(systemctl is-active unlockd-agent.service), /srv/data on $(findmnt -no SOURCE /srv/data), writer $(systemctl is-active writer.service)"
i=0
until grep -q '"finished": true' $J 2>/dev/null; do
  i=$((i + 1)); [ $i -gt 3000 ] && { say "FAIL: the conversion did not finish"; break; }
  sleep 2
done
journalctl -b -u unlockd-agent.service -o cat --no-pager | sed 's/^/AGENT: /'
say "REQUIREMENTS $(cryptsetup luksDump /dev/vdb | grep -c online-reencrypt)"
say "CRYPTTAB $(grep '^data ' /etc/crypttab)"
say "FSTAB $(grep /srv/data /etc/fstab)"
systemctl stop writer.service
if (cd /srv/data && sha256sum --quiet -c /etc/unlockd-test/sums.sha256); then
  say "SUMS-OK $(wc -l < /etc/unlockd-test/sums.sha256)"
else
  say "SUMS-BAD"
fi
awk '/^line /{ n++; if ($2 != n) bad++ } END { print "T2: WRITER lines=" n " bad=" bad + 0 }' $F
say "WRITER-MAPPED $(grep -c '^line .* /dev/mapper/data$' $F) starts=$(grep -c '^start ' $F)"
umount /srv/data; e2fsck -fn /dev/mapper/data > /run/fsck.out 2>&1; say "FSCK rc=$?"
tail -3 /run/fsck.out
say "DONE"
systemctl poweroff --no-block
`

async function stageGuestFiles(
  stage: string,
  base: GuestBase,
  escrow: Escrow,
  o: { dataUuid: string; sums: string; fallback: string; token: string },
): Promise<void> {
  await stageAgent(stage)
  const sys = 'etc/systemd/system'
  for (const target of ['cryptsetup.target.wants', 'multi-user.target.wants']) {
    await mkdir(join(stage, sys, target), { recursive: true })
    await symlink(
      `/${sys}/unlockd-agent.service`,
      join(stage, sys, target, 'unlockd-agent.service'),
    )
  }
  // Test-only switch: cheap keyslots (argon2id's 1 GiB would not fit a 1 GiB guest).
  await stageText(
    stage,
    `${sys}/unlockd-agent.service.d/test.conf`,
    '[Service]\nEnvironment=UNLOCKD_LUKS_PBKDF=fast\n',
  )
  await stageText(stage, 'usr/local/sbin/writer', writerScript(), 0o755)
  await stageText(
    stage,
    `${sys}/writer.service`,
    '[Unit]\nDescription=test writer on the data disk\nRequiresMountsFor=/srv/data\n\n[Service]\nExecStart=/usr/local/sbin/writer\n\n[Install]\nWantedBy=multi-user.target\n',
  )
  await symlink(
    `/${sys}/writer.service`,
    join(stage, sys, 'multi-user.target.wants/writer.service'),
  )
  await mkdir(join(stage, 'srv/data'), { recursive: true })
  await stageText(
    stage,
    'etc/fstab',
    `UUID=${base.rootUuid} / ext4 errors=remount-ro 0 1\nUUID=${o.dataUuid} /srv/data ext4 defaults 0 2\n`,
  )
  await stageText(stage, 'etc/unlockd-test/ca.pem', await readFile(escrow.caFile, 'utf8'))
  await stageText(stage, 'etc/unlockd-test/enroll.token', o.token, 0o600)
  await stageText(stage, 'etc/unlockd-test/fallback', o.fallback, 0o600)
  await stageText(stage, 'etc/unlockd-test/sums.sha256', o.sums)
}

async function logDir(): Promise<string> {
  const d = join(REPO, '.tmp/boot-logs', `encrypt-online-${process.pid}`)
  await mkdir(d, { recursive: true })
  return d
}

function grab(vm: Vm, re: RegExp): string {
  return re.exec(vm.console())?.[1] ?? ''
}

/** Poll `unlockd hosts` until it shows the data volume part-way; returns that line. */
async function progressOnServer(escrow: Escrow, vm: Vm): Promise<string> {
  const deadline = Date.now() + BOOT_LIMIT_MS
  while (Date.now() < deadline) {
    if (/T1: ENCRYPT-ENDED/.test(vm.console()))
      throw new Error('the conversion finished before the kill: throttle the data disk harder')
    const hosts = await escrow.op(['hosts'])
    const m = /data: encrypting data (\d+)% \([^)]*\)/.exec(hosts)
    if (m && Number(m[1]) < 90) return m[0]
    await new Promise((r) => setTimeout(r, 2000))
  }
  throw new Error('no progress of the data volume appeared in `unlockd hosts`')
}

const TITLE =
  'online LUKS2 conversion of a mounted data disk survives a hard kill and finishes after the reboot'

rootTest(
  TITLE,
  async (t: ExecutionContext) => {
    t.timeout(3 * BOOT_LIMIT_MS)
    await checkPrerequisites()
    const dir = await mkdtemp(join(tmpdir(), 'unlockd-encrypt-online-'))
    t.teardown(() => rm(dir, { recursive: true, force: true }))
    const log = (l: string): void => {
      t.log(l)
      console.log(`[encrypt-online] ${l}`)
    }
    const base = await guestBase(log)
    const escrow = await startEscrow(t, dir)

    // The plaintext data disk, seeded on the host; its checksums go into the guest.
    const seedDir = join(dir, 'seed')
    const sums = await seed(seedDir)
    const data = join(dir, 'data.img')
    await writeFile(data, '')
    await truncate(data, DATA_MIB * 1024 * 1024)
    await mustRun('mkfs.ext4', ['-q', '-F', '-L', 'data', '-d', seedDir, data])
    const dataUuid = (await mustRun('blkid', ['-s', 'UUID', '-o', 'value', data])).trim()

    const token = (
      JSON.parse(await escrow.op(['token', 'create', '--host', 'vm', '--json'])) as {
        token: string
      }
    ).token
    const fallback = `fallback-${randomBytes(12).toString('hex')}`
    const stage = join(dir, 'stage')
    await stageGuestFiles(stage, base, escrow, { dataUuid, sums, fallback, token })
    const os = await guestDisk(base, join(dir, 'os.img'), stage)
    const logs = await logDir()
    const task1 = join(dir, 'task1.sh')
    const task2 = join(dir, 'task2.sh')
    await writeFile(task1, TASK1)
    await writeFile(task2, TASK2)
    const boot = (n: number, task: string, options?: string): Promise<Vm> =>
      bootGuestVm(t, {
        base,
        disk: os,
        drives: [{ file: data, ...(options ? { options } : {}) }],
        fwCfg: [{ name: 'opt/vm/task', file: task }],
        forwards: [{ guestPort: GUEST_PORT, hostPort: escrow.port }],
        logFile: join(logs, `boot-${n}.log`),
        timeoutMs: BOOT_LIMIT_MS,
      })

    // ---- boot 1: enroll, convert online, kill in the middle ----
    const vm1 = await boot(1, task1, THROTTLE)
    log(`boot 1 console: ${join(logs, 'boot-1.log')}`)
    await vm1.waitFor(/T1: ONLINE-WRITES lines=(\d+)/, BOOT_LIMIT_MS)
    const onlineLines = Number(grab(vm1, /T1: ONLINE-WRITES lines=(\d+)/))
    const shown = await progressOnServer(escrow, vm1)
    log(`unlockd hosts: ${shown}`)
    vm1.kill()
    await vm1.exited
    const c1 = vm1.console()
    t.regex(c1, /ENROLL: /, 'the guest enrolled')
    t.regex(c1, /T1: agent active/, 'the agent service runs')
    t.notRegex(c1, /T1: ENCRYPT-ENDED/, 'killed before the conversion ended')
    const dump1 = await mustRun('cryptsetup', ['luksDump', data])
    t.regex(dump1, /online-reencrypt/, 'the kill left a reencryption in progress')

    // ---- boot 2: unlock from escrow, resume in the background, verify ----
    const vm2 = await boot(2, task2)
    log(`boot 2 console: ${join(logs, 'boot-2.log')}`)
    await vm2.waitFor(/T2: DONE/, BOOT_LIMIT_MS)
    await vm2.exited
    const c2 = vm2.console()
    t.regex(
      c2,
      /T2: agent active, \/srv\/data on \/dev\/mapper\/data/,
      'unlocked and mounted at boot',
    )
    t.regex(c2, /AGENT: .*unlocked: data/, 'the agent unlocked the volume from escrow')
    t.regex(c2, /AGENT: .*finishing the online conversion of \/dev\/vdb/, 'the agent resumed it')
    t.regex(c2, /T2: REQUIREMENTS 0/, 'no reencryption requirement left')
    t.regex(c2, /T2: CRYPTTAB data UUID=\S+ none luks/, 'crypttab opens it')
    t.regex(c2, /T2: FSTAB \/dev\/mapper\/data \/srv\/data ext4/, 'fstab mounts the mapping')
    t.regex(c2, /T2: SUMS-OK 302/, 'every seeded file matches its checksum')
    const writer = /T2: WRITER lines=(\d+) bad=(\d+)/.exec(c2)
    t.truthy(writer, 'the writer log was read')
    t.is(writer?.[2], '0', 'the writer lines are all there, in order, none doubled')
    t.true(Number(writer?.[1]) >= onlineLines, 'nothing the writer wrote before the kill is lost')
    t.true(
      Number(grab(vm2, /T2: WRITER-MAPPED (\d+)/)) >= 2,
      'the writer wrote through the mapping',
    )
    t.regex(c2, /T2: FSCK rc=0/, 'e2fsck is clean')

    // ---- host side: the header, the fallback keyslot, the server's view ----
    const dump2 = await mustRun('cryptsetup', ['luksDump', data])
    t.notRegex(dump2, /online-reencrypt/)
    const fb = join(dir, 'fallback')
    await writeFile(fb, fallback, { mode: 0o600 })
    const test = await run('cryptsetup', ['open', '--test-passphrase', '--key-file', fb, data])
    t.is(test.code, 0, `the fallback passphrase opens the volume: ${test.stderr}`)
    const audit = await escrow.op(['audit', '--json'])
    t.regex(audit, /"action":\s*"unlock\.release"/, 'the key came from escrow')
    t.regex(await escrow.op(['host', 'show', 'vm']), /data: encrypted/, 'the server saw it finish')
  },
  NEEDS,
)
