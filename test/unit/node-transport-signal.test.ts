/**
 * The agent passes one long-lived AbortSignal to every request it makes. Each request's abort
 * listener must leave with the request, or they pile up (and Node warns past ten).
 */
import test from 'ava'
import { getEventListeners } from 'node:events'
import { createServer, type Server } from 'node:http'
import type { AddressInfo } from 'node:net'
import { nodeTransport } from '../../platform/node-transport.ts'

async function listen(t: { teardown(fn: () => unknown): void }, server: Server): Promise<string> {
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    server.closeAllConnections()
    server.close()
  })
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`
}

test('1000 requests on one signal leave no abort listener and raise no warning', async (t) => {
  const url = await listen(
    t,
    createServer((_req, res) => {
      res.setHeader('content-type', 'application/json')
      res.end('{"ok":true}')
    }),
  )
  const warnings: Error[] = []
  const onWarning = (w: Error): void => void warnings.push(w)
  process.on('warning', onWarning)
  t.teardown(() => process.off('warning', onWarning))

  const transport = nodeTransport(url)
  const ac = new AbortController()
  for (let i = 0; i < 1000; i++) {
    const res = await transport({ method: 'GET', path: '/x', signal: ac.signal })
    t.is(res.status, 200)
  }
  // A request that fails (nothing listening there) must clean up too.
  const dead = nodeTransport('http://127.0.0.1:1')
  await t.throwsAsync(dead({ method: 'GET', path: '/x', signal: ac.signal }))
  t.is(getEventListeners(ac.signal, 'abort').length, 0)
  // Warnings are emitted on the next tick.
  await new Promise((resolve) => setImmediate(resolve))
  t.deepEqual(
    warnings.filter((w) => w.name === 'MaxListenersExceededWarning').map((w) => w.message),
    [],
  )
})

test('aborting the signal still ends a request in flight', async (t) => {
  const url = await listen(
    t,
    createServer(() => {
      // never answers
    }),
  )
  const ac = new AbortController()
  const pending = nodeTransport(url, { timeoutMs: 60_000 })({
    method: 'GET',
    path: '/x',
    signal: ac.signal,
  })
  setTimeout(() => ac.abort(), 50)
  const err = await t.throwsAsync(pending)
  t.regex(err?.message ?? '', /aborted/)
  t.is(getEventListeners(ac.signal, 'abort').length, 0)
})
