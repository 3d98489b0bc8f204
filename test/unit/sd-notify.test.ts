/**
 * agent/sd-notify.ts against a receiver that listens the way systemd does: an AF_UNIX datagram
 * socket, bound to a path or to an abstract name. Node has no unix datagram sockets, so the
 * receiver uses koffi too; one test uses socat as an independent receiver.
 * Serial: the tests change NOTIFY_SOCKET for the whole process.
 */
import test from 'ava'
import { spawn } from 'node:child_process'
import { randomBytes } from 'node:crypto'
import { existsSync } from 'node:fs'
import { join } from 'node:path'
import { until } from '../helpers/wait.ts'
import {
  notify,
  ready,
  status,
  stopping,
  watchdog,
  watchdogIntervalMs,
} from '../../agent/sd-notify.ts'
import { findBin } from '../helpers/root.ts'
import { tempDir } from '../helpers/tmp.ts'
import { listen } from '../helpers/notify-socket.ts'

function withNotifySocket(t: { teardown(fn: () => void): void }, value: string | undefined): void {
  const old = process.env['NOTIFY_SOCKET']
  if (value === undefined) delete process.env['NOTIFY_SOCKET']
  else process.env['NOTIFY_SOCKET'] = value
  t.teardown(() => {
    if (old === undefined) delete process.env['NOTIFY_SOCKET']
    else process.env['NOTIFY_SOCKET'] = old
  })
}

test.serial('ready() and status() send exact datagrams to a path socket', async (t) => {
  const dir = await tempDir(t)
  const path = join(dir, 'notify')
  const rx = listen(t, path)
  withNotifySocket(t, path)
  t.true(await ready())
  t.true(await status('waiting…'))
  t.deepEqual(rx.drain(), ['READY=1', 'STATUS=waiting…'])
})

test.serial('an abstract socket (@name) works, and so do stopping() and watchdog()', async (t) => {
  const name = `@unlockd-test-${process.pid}-${randomBytes(4).toString('hex')}`
  const rx = listen(t, name)
  withNotifySocket(t, name)
  t.true(await stopping())
  t.true(await watchdog())
  t.true(await notify({ READY: '1', STATUS: 'unlocked 2 volumes' }))
  t.deepEqual(rx.drain(), ['STOPPING=1', 'WATCHDOG=1', 'READY=1\nSTATUS=unlocked 2 volumes'])
})

test.serial('a newline in a value cannot inject another assignment', async (t) => {
  const name = `@unlockd-test-${process.pid}-${randomBytes(4).toString('hex')}`
  const rx = listen(t, name)
  withNotifySocket(t, name)
  t.true(await status('approval 42\nREADY=1'))
  t.deepEqual(rx.drain(), ['STATUS=approval 42 READY=1'])
  t.false(await notify({ 'BAD=KEY': '1' }))
  t.false(await notify({}))
  t.deepEqual(rx.drain(), [])
})

test.serial(
  'without NOTIFY_SOCKET, or with an unusable one, it returns false and never throws',
  async (t) => {
    withNotifySocket(t, undefined)
    t.false(await ready())
    process.env['NOTIFY_SOCKET'] = '/nonexistent/unlockd/notify'
    t.false(await ready())
    process.env['NOTIFY_SOCKET'] = 'relative/path'
    t.false(await status('x'))
    process.env['NOTIFY_SOCKET'] = `/${'x'.repeat(200)}`
    t.false(await status('x'))
    process.env['NOTIFY_SOCKET'] = 'vsock:2:1234'
    t.false(await ready())
  },
)

const socat = findBin('socat')
;(socat === undefined ? test.serial.skip : test.serial)(
  'socat, as an independent receiver, gets READY=1',
  async (t) => {
    const dir = await tempDir(t)
    const path = join(dir, 'notify')
    const child = spawn(socat ?? 'socat', ['-u', `UNIX-RECV:${path}`, 'STDOUT'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    })
    t.teardown(() => {
      child.kill()
    })
    let out = ''
    child.stdout.on('data', (c: Buffer) => {
      out += c.toString('utf8')
    })
    await until(() => existsSync(path), 'socat to bind the notify socket', { intervalMs: 20 })
    withNotifySocket(t, path)
    t.true(await ready())
    await until(() => out !== '', 'the notification to arrive', { intervalMs: 20 })
    t.is(out, 'READY=1')
  },
)

test.serial('watchdogIntervalMs is half of WATCHDOG_USEC, for this process only', (t) => {
  const old = { usec: process.env['WATCHDOG_USEC'], pid: process.env['WATCHDOG_PID'] }
  t.teardown(() => {
    for (const [k, v] of [
      ['WATCHDOG_USEC', old.usec],
      ['WATCHDOG_PID', old.pid],
    ] as const) {
      if (v === undefined) delete process.env[k]
      else process.env[k] = v
    }
  })
  delete process.env['WATCHDOG_USEC']
  delete process.env['WATCHDOG_PID']
  t.is(watchdogIntervalMs(), undefined)
  process.env['WATCHDOG_USEC'] = '30000000'
  t.is(watchdogIntervalMs(), 15_000)
  process.env['WATCHDOG_PID'] = String(process.pid)
  t.is(watchdogIntervalMs(), 15_000)
  process.env['WATCHDOG_PID'] = String(process.pid + 1)
  t.is(watchdogIntervalMs(), undefined)
})
