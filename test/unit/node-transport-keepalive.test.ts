/**
 * One transport, one connection: the agent's requests to a server (nonce, unlock, polls) share
 * a keep-alive socket, over HTTP and over HTTPS (one TLS handshake); a socket the server closed
 * while idle is replaced without the caller noticing; a slow answer on a kept-alive socket is
 * still waited for up to the request timeout.
 */
import test from 'ava'
import { execFileSync } from 'node:child_process'
import { readFileSync } from 'node:fs'
import { createServer, type Server, type ServerResponse } from 'node:http'
import { createServer as createHttpsServer } from 'node:https'
import type { AddressInfo } from 'node:net'
import { join } from 'node:path'
import { nodeTransport } from '../../platform/node-transport.ts'
import { tempDir } from '../helpers/tmp.ts'

const answer = (_req: unknown, res: ServerResponse): void => {
  res.setHeader('content-type', 'application/json')
  res.end('{"ok":true}')
}

async function listen(
  t: { teardown(fn: () => unknown): void },
  server: Server,
  scheme = 'http',
): Promise<{ url: string; connections: () => number }> {
  let n = 0
  server.on(scheme === 'https' ? 'secureConnection' : 'connection', () => n++)
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  t.teardown(() => {
    server.closeAllConnections()
    server.close()
  })
  return {
    url: `${scheme}://127.0.0.1:${(server.address() as AddressInfo).port}`,
    connections: () => n,
  }
}

test('HTTP: requests of one transport share one connection; a new transport opens its own', async (t) => {
  const srv = await listen(t, createServer(answer))
  const transport = nodeTransport(srv.url)
  for (let i = 0; i < 5; i++)
    t.is((await transport({ method: i % 2 ? 'POST' : 'GET', path: '/x', body: {} })).status, 200)
  t.is(srv.connections(), 1)
  await nodeTransport(srv.url)({ method: 'GET', path: '/x' })
  t.is(srv.connections(), 2)
})

test('HTTPS: one TLS handshake for the requests of one transport', async (t) => {
  const dir = await tempDir(t)
  const key = join(dir, 'key.pem')
  const cert = join(dir, 'cert.pem')
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      key,
      '-out',
      cert,
      '-days',
      '1',
      '-subj',
      '/CN=127.0.0.1',
      '-addext',
      'subjectAltName=IP:127.0.0.1',
    ],
    { stdio: 'ignore' },
  )
  const pem = readFileSync(cert, 'utf8')
  const srv = await listen(
    t,
    createHttpsServer({ key: readFileSync(key), cert: pem }, answer) as unknown as Server,
    'https',
  )
  const transport = nodeTransport(srv.url, { ca: pem })
  for (let i = 0; i < 3; i++) t.is((await transport({ method: 'GET', path: '/x' })).status, 200)
  t.is(srv.connections(), 1)
})

test('a kept-alive socket the server closed is replaced transparently', async (t) => {
  const server = createServer(answer)
  const srv = await listen(t, server)
  const transport = nodeTransport(srv.url)
  t.is((await transport({ method: 'GET', path: '/x' })).status, 200)
  server.closeIdleConnections()
  await new Promise((r) => setTimeout(r, 50))
  t.is((await transport({ method: 'POST', path: '/x', body: {} })).status, 200)
  t.is(srv.connections(), 2)
})

test('an answer slower than the idle timeout still arrives on a reused socket', async (t) => {
  let calls = 0
  const srv = await listen(
    t,
    createServer((req, res) => {
      if (calls++ === 0) return answer(req, res)
      setTimeout(() => answer(req, res), 5500)
    }),
  )
  const transport = nodeTransport(srv.url, { timeoutMs: 30_000 })
  t.is((await transport({ method: 'GET', path: '/x' })).status, 200)
  t.is((await transport({ method: 'GET', path: '/slow' })).status, 200)
  t.is(srv.connections(), 1)
})
