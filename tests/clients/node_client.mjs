// Drives relay with Segment's own Node.js library, @segment/analytics-node, unmodified.
//
//   node tests/clients/node_client.mjs RELAY_URL WRITE_KEY
//   (or RELAY_URL and RELAY_WRITE_KEY in the environment)
//
// Two phases, each a fresh client ending in closeAndFlush():
//   batched: default batching (flushAt 15, flushInterval 10 s): the six calls are fired
//            without waiting and closeAndFlush() sends them together in one /v1/batch.
//   single:  flushAt: 1: each call is its own /v1/batch request; each call's callback
//            (delivery done) is awaited before the next call, so they reach relay in order
//            (fired without waiting, flushAt: 1 sends them concurrently, in no set order).
// Prints one JSON line: per phase, the status of every response the library saw and every
// error it reported. Exits 1 when the library reported any error ('error' event, a
// callback error, or closeAndFlush timing out), 2 on bad arguments.
import { Analytics } from '@segment/analytics-node'

const host = process.argv[2] ?? process.env.RELAY_URL
const writeKey = process.argv[3] ?? process.env.RELAY_WRITE_KEY
if (!host || !writeKey) {
  console.error('usage: node node_client.mjs RELAY_URL WRITE_KEY')
  process.exit(2)
}

// Every call of the Tracking API, with fixed ids and times so that the Customer.io ops
// they become can be predicted exactly.
function calls(prefix) {
  const userId = `${prefix}-user`
  const at = (second) => new Date(Date.UTC(2024, 4, 1, 10, 0, second))
  return [
    ['identify', { userId, traits: { email: `${prefix}@example.com`, plan: 'pro' } }],
    ['track', { userId, event: 'Client Event', properties: { answer: 42, tags: ['a', 'b'] } }],
    ['page', { userId, name: 'Docs', properties: { url: `https://example.com/${prefix}/docs` } }],
    ['screen', { userId, name: 'Home Screen', properties: { tab: 'main' } }],
    ['group', { userId, groupId: `${prefix}-acme`, traits: { name: 'Acme', seats: 5 } }],
    ['alias', { userId, previousId: `${prefix}-anon` }],
  ].map(([method, params], index) => [
    method,
    { ...params, messageId: `${prefix}-${method}-1`, timestamp: at(index + 1) },
  ])
}

async function phase(label, prefix, settings, awaitEach) {
  const analytics = new Analytics({
    writeKey,
    host,
    httpRequestTimeout: 5000,
    ...settings,
  })
  const statuses = []
  const errors = []
  analytics.on('http_response', (response) => statuses.push(response.status))
  analytics.on('error', (err) => {
    errors.push({ code: err.code, reason: String(err.reason?.message ?? err.reason) })
  })
  for (const [method, params] of calls(prefix)) {
    if (awaitEach) {
      await new Promise((resolve) => {
        analytics[method](params, (err) => {
          if (err) errors.push({ code: 'callback', reason: String(err?.message ?? err) })
          resolve()
        })
      })
    } else {
      analytics[method](params)
    }
  }
  const started = Date.now()
  await analytics.closeAndFlush({ timeout: 15000 })
  if (Date.now() - started >= 15000) {
    errors.push({ code: 'timeout', reason: 'closeAndFlush did not finish within 15 s' })
  }
  return { label, statuses, errors }
}

const phases = [
  await phase('batched', 'node-b', {}, false),
  await phase('single', 'node-s', { flushAt: 1 }, true),
]
console.log(JSON.stringify({ phases }))
const failed = phases.some((p) => p.errors.length > 0)
process.exit(failed ? 1 : 0)
