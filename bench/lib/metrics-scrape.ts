/**
 * Scraping an unlockd's `/metrics` during a bench and reading it with a real Prometheus
 * text-format parser: Debian's python3-prometheus-client (`text_string_to_metric_families`, the
 * reference implementation of the format), run as /usr/bin/python3 on the scraped text. A
 * scrape that does not parse fails the bench. Values come back as `name{label="v",...}` → number.
 */
import { spawnSync } from 'node:child_process'
import http from 'node:http'

export const SCRAPE_TOKEN = 'bench-scrape-token-0123456789abcdefghijklmnop'

const PARSE = `
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        labels = ",".join('%s="%s"' % kv for kv in sorted(s.labels.items()))
        out["%s{%s}" % (s.name, labels)] = s.value
print(json.dumps(out))
`

export type Samples = Record<string, number>

function get(url: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const req = http.get(
      `${url}/metrics`,
      { agent: false, headers: { authorization: `Bearer ${SCRAPE_TOKEN}` }, timeout: 60_000 },
      (res) => {
        let text = ''
        res.on('data', (c: Buffer) => (text += c.toString()))
        res.on('end', () =>
          res.statusCode === 200
            ? resolve(text)
            : reject(new Error(`/metrics: HTTP ${String(res.statusCode)}`)),
        )
        res.on('error', reject)
      },
    )
    req.on('timeout', () => req.destroy(new Error('/metrics timed out')))
    req.on('error', reject)
  })
}

/** Parse Prometheus text exposition with prometheus_client; throws if it does not parse. */
export function parseExposition(text: string): Samples {
  const r = spawnSync('/usr/bin/python3', ['-c', PARSE], { input: text, encoding: 'utf8' })
  if (r.status !== 0)
    throw new Error(`/metrics does not parse as Prometheus text: ${r.stderr.slice(-500)}`)
  return JSON.parse(r.stdout) as Samples
}

export async function scrape(url: string): Promise<Samples> {
  return parseExposition(await get(url))
}

/** Sum of one sample over several instances' scrapes. */
export function sum(scrapes: readonly Samples[], key: string): number {
  return scrapes.reduce((a, s) => a + (s[key] ?? 0), 0)
}
