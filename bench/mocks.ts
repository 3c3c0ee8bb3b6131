import { createServer, type IncomingMessage, type ServerResponse } from 'node:http'
import type { AddressInfo } from 'node:net'

/**
 * The upstreams of the bench, on 127.0.0.1: a Coze token endpoint, a Feishu-like API, an Augment tenant, and an
 * OTLP/HTTP collector that takes every export (an empty 200, as a collector answers a full success).
 * Plain node:http with keep-alive and no logging, so they are never what limits a scenario.
 */
function json (res: ServerResponse, body: string): void {
  res.writeHead(200, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) })
  res.end(body)
}

function drain (req: IncomingMessage, then: () => void): void {
  req.resume()
  req.on('end', then)
}

const COZE_ANSWER = JSON.stringify({ access_token: `czs_${'x'.repeat(60)}`, expires_in: 1900000000, token_type: 'Bearer' })
const FEISHU_ANSWER = JSON.stringify({ code: 0, msg: 'success', data: { records: [{ record_id: 'rec123', fields: { 款项金额: 14.91 } }] } })
const AUGMENT_ANSWER = JSON.stringify({ access_token: `augment_${'y'.repeat(60)}`, token_type: 'Bearer', expires_in: 3600 })

async function listen (answer: string): Promise<number> {
  const server = createServer((req, res) => { drain(req, () => { json(res, answer) }) })
  server.keepAliveTimeout = 60_000
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
  return (server.address() as AddressInfo).port
}

const ports = { coze: await listen(COZE_ANSWER), feishu: await listen(FEISHU_ANSWER), augment: await listen(AUGMENT_ANSWER), otlp: await listen('') }
process.stdout.write(`${JSON.stringify(ports)}\n`)
