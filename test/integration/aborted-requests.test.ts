/**
 * A client that hangs up mid-request is not a server failure: it is logged once at info level as
 * an abort, without a stack trace, and never as an error or a 500.
 */
import test from 'ava'
import { connect } from 'node:net'
import { startTestServer } from '../helpers/server.ts'

async function until(cond: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 600; i++) {
    if (cond()) return
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  throw new Error(`timed out waiting for ${what}`)
}

for (const path of ['/v1/unlock', '/tang/web-1/rec/abc', `/approve/ap_${'A'.repeat(22)}`]) {
  test(`a client that hangs up while sending its body to ${path} is logged as an abort`, async (t) => {
    const srv = await startTestServer(t)
    const type = path.startsWith('/approve/')
      ? 'application/x-www-form-urlencoded'
      : 'application/json'
    const port = Number(new URL(srv.url).port)
    const sock = connect(port, '127.0.0.1')
    await new Promise<void>((resolve, reject) => {
      sock.once('connect', resolve)
      sock.once('error', reject)
    })
    sock.write(
      `POST ${path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: ${type}\r\n` +
        `Transfer-Encoding: chunked\r\n\r\n5\r\n{"jws\r\n`,
    )
    // Let the handler start reading the body, then hang up.
    await new Promise((resolve) => setTimeout(resolve, 200))
    sock.destroy()

    const entries = (): { level: string; msg: string; stack?: string; status?: number }[] =>
      srv.logs.map((l) => JSON.parse(l) as { level: string; msg: string })
    await until(
      () => entries().some((e) => e.msg === 'request' && e.status !== undefined),
      'the access log line',
    )
    const aborted = entries().filter((e) => e.msg === 'request aborted by client')
    t.is(aborted.length, 1, srv.logs.join('\n'))
    t.is(aborted[0]?.level, 'info')
    t.false(
      entries().some((e) => e.level === 'error' || e.stack !== undefined),
      srv.logs.join('\n'),
    )
    t.false(
      entries().some((e) => e.msg === 'request' && e.status === 500),
      srv.logs.join('\n'),
    )
  })
}
