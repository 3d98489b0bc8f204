/**
 * `npm run bench -- encrypt`: how fast an in-place LUKS2 conversion moves data, next to what
 * bounds it. On one ext4 image file (default 256 MiB, `--size-mib`):
 *   - conversion: `cryptsetup reencrypt --encrypt --type luks2 --reduce-device-size 32M
 *     --force-offline-reencrypt` (the data phase `unlockd encrypt --luks` runs without
 *     device-mapper), key on stdin, a fast PBKDF so key derivation does not count;
 *   - the cipher: `openssl speed -evp aes-256-xts` (the kernel's AF_ALG, which `cryptsetup
 *     benchmark` needs, is missing on most CI hosts), 64 KiB blocks, one core;
 *   - a plain copy of the same image: `dd bs=4M conv=fsync` (the disk's read+write speed).
 * Target: the conversion keeps at least half of the plain copy's speed (it reads and writes
 * every byte once, like dd, plus encryption and its journal); a miss line says by how much.
 */
import { spawn } from 'node:child_process'
import { mkdtempSync, rmSync, statSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { randomBytes } from 'node:crypto'
import { ensureDebianPackages } from '../lib/apt.ts'
import { formatTable, fmtNum } from '../lib/report.ts'
import type { SuiteContext } from './context.ts'

/** Conversion speed must be at least this fraction of the plain copy's. */
export const TARGET_RATIO_TO_DD = 0.5
const MiB = 1024 * 1024

function run(
  cmd: string,
  args: readonly string[],
  stdin?: Uint8Array,
): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve, reject) => {
    const c = spawn(cmd, args, { stdio: ['pipe', 'pipe', 'pipe'] })
    let stdout = ''
    let stderr = ''
    c.stdout.on('data', (d: Buffer) => (stdout += d.toString()))
    c.stderr.on('data', (d: Buffer) => (stderr += d.toString()))
    c.on('error', reject)
    c.on('close', (code) => resolve({ code: code ?? 1, stdout, stderr }))
    c.stdin.end(stdin)
  })
}

async function must(cmd: string, args: readonly string[], stdin?: Uint8Array): Promise<string> {
  const r = await run(cmd, args, stdin)
  if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr.trim()}`)
  return r.stdout
}

async function timed(fn: () => Promise<unknown>): Promise<number> {
  const t0 = performance.now()
  await fn()
  return (performance.now() - t0) / 1000
}

/**
 * A plaintext ext4 image of `bytes` full of incompressible data (written before mkfs, which
 * keeps it: nodiscard), its filesystem 32 MiB short of the end (room for the LUKS2 header).
 */
async function plainImage(path: string, bytes: number): Promise<void> {
  writeFileSync(path, '', { mode: 0o600 })
  await must('dd', [
    'if=/dev/urandom',
    `of=${path}`,
    'bs=4M',
    `count=${bytes / (4 * MiB)}`,
    'status=none',
  ])
  const fsBlocks = (bytes - 32 * MiB) / 4096
  await must('mkfs.ext4', ['-q', '-F', '-b', '4096', '-E', 'nodiscard', path, String(fsBlocks)])
}

/** Bytes per second of `openssl speed -evp aes-256-xts` at 64 KiB blocks (the +F line of -mr). */
async function opensslXts(seconds: number): Promise<number> {
  const out = await must('openssl', [
    'speed',
    '-evp',
    'aes-256-xts',
    '-bytes',
    '65536',
    '-seconds',
    String(seconds),
    '-mr',
  ])
  const line = out.split('\n').find((l) => l.startsWith('+F:'))
  const v = Number(line?.split(':').at(-1))
  if (!Number.isFinite(v) || v <= 0) throw new Error(`cannot read openssl speed output: ${out}`)
  return v
}

export async function encryptSuite(ctx: SuiteContext): Promise<void> {
  await ensureDebianPackages(
    [
      { name: 'cryptsetup-bin', binaries: ['cryptsetup'] },
      { name: 'e2fsprogs', binaries: ['mkfs.ext4'] },
      { name: 'openssl', binaries: ['openssl'] },
    ],
    { log: ctx.log },
  )
  const sizeMiB = ctx.sizeMiB ?? 256
  const bytes = sizeMiB * MiB
  const dir = mkdtempSync(join(process.env['BENCH_TMPDIR'] ?? tmpdir(), 'unlockd-bench-enc-'))
  ctx.onCleanup(async () => rmSync(dir, { recursive: true, force: true }))
  const img = join(dir, 'data.img')
  const copy = join(dir, 'copy.img')

  ctx.log(`plain copy of a ${sizeMiB} MiB image (dd bs=4M conv=fsync) ...`)
  await plainImage(img, bytes)
  await must('sync', [])
  const ddSec = await timed(() =>
    must('dd', [`if=${img}`, `of=${copy}`, 'bs=4M', 'conv=fsync', 'status=none']),
  )
  rmSync(copy)

  ctx.log('cipher speed (openssl speed -evp aes-256-xts, 64 KiB blocks) ...')
  const xts = await opensslXts(3)

  ctx.log('offline in-place LUKS2 conversion (cryptsetup reencrypt --encrypt) ...')
  const key = randomBytes(64)
  const convSec = await timed(() =>
    must(
      'cryptsetup',
      [
        'reencrypt',
        '--encrypt',
        '--type',
        'luks2',
        '--reduce-device-size',
        '32M',
        '--force-offline-reencrypt',
        '--batch-mode',
        '--pbkdf',
        'pbkdf2',
        '--pbkdf-force-iterations',
        '1000',
        '--key-file',
        '-',
        img,
      ],
      key,
    ),
  )
  key.fill(0)
  await must('cryptsetup', ['isLuks', '--type', 'luks2', img])
  if (statSync(img).size !== bytes) throw new Error('the image changed size during the conversion')

  const rate = (sec: number): number => bytes / sec / MiB
  const conv = rate(convSec)
  const dd = rate(ddSec)
  const cipher = xts / MiB
  const rows = [
    [
      'conversion (reencrypt --encrypt, offline)',
      fmtNum(conv),
      fmtNum(convSec, 2),
      '1.00x',
      `${fmtNum(conv / dd, 2)}x`,
    ],
    [
      'plain copy (dd bs=4M conv=fsync)',
      fmtNum(dd),
      fmtNum(ddSec, 2),
      `${fmtNum(dd / conv, 2)}x`,
      '1.00x',
    ],
    [
      'cipher (openssl aes-256-xts, 1 core)',
      fmtNum(cipher),
      '-',
      `${fmtNum(cipher / conv, 2)}x`,
      `${fmtNum(cipher / dd, 2)}x`,
    ],
  ]
  process.stdout.write(
    `\nIn-place LUKS2 conversion of a ${sizeMiB} MiB ext4 image\n` +
      formatTable(['what', 'MiB/s', 'seconds', 'vs conversion', 'vs dd'], rows) +
      '\n',
  )
  const ok = conv / dd >= TARGET_RATIO_TO_DD
  process.stdout.write(
    `${ok ? 'PASS' : 'MISS'}: conversion runs at ${fmtNum(conv / dd, 2)}x the plain copy (target >= ${TARGET_RATIO_TO_DD}x)` +
      `${conv < cipher ? '; the cipher is not the bottleneck' : '; the cipher bounds it'}\n`,
  )
}
