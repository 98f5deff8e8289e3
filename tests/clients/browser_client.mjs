// Opens a test page in headless Chromium (Debian's /usr/bin/chromium) with playwright-core
// and reports what happened there; the page itself (served by the test) loads analytics.js
// and makes the calls.
//
//   node tests/clients/browser_client.mjs PAGE_URL [TIMEOUT_MS]
//
// Waits until the page's `window.__done()` returns true, then prints one JSON line:
//   {done, log: window.__log, requests: [{url, method, failure}], console: [...],
//    pageErrors: [...]}
// `requests` is every request the browser made (to check that nothing left loopback).
// Exits 0 when the page said it was done, 3 when it did not within TIMEOUT_MS (the JSON is
// printed either way), 2 on bad arguments.
import { chromium } from 'playwright-core'

const pageUrl = process.argv[2]
const timeoutMs = Number(process.argv[3] ?? 15000)
if (!pageUrl) {
  console.error('usage: node browser_client.mjs PAGE_URL [TIMEOUT_MS]')
  process.exit(2)
}

// Without these, Chromium on a machine with no outside network floods refused connections
// (component updates, sync, QUIC probes, ...).
const args = [
  '--headless',
  '--no-sandbox',
  '--disable-gpu',
  '--disable-quic',
  '--no-first-run',
  '--disable-background-networking',
  '--disable-component-update',
  '--disable-sync',
]

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
  headless: true,
  args,
  timeout: timeoutMs,
})
const report = { done: false, log: null, requests: [], console: [], pageErrors: [] }
try {
  const context = await browser.newContext()
  const page = await context.newPage()
  const entries = new Map()
  page.on('request', (request) => {
    const entry = { url: request.url(), method: request.method(), failure: null }
    entries.set(request, entry)
    report.requests.push(entry)
  })
  page.on('requestfailed', (request) => {
    const entry = entries.get(request)
    if (entry) entry.failure = request.failure()?.errorText ?? 'failed'
  })
  page.on('console', (message) => report.console.push(`${message.type()}: ${message.text()}`))
  page.on('pageerror', (error) => report.pageErrors.push(String(error)))
  await page.goto(pageUrl, { timeout: timeoutMs })
  try {
    await page.waitForFunction(() => window.__done && window.__done(), null, {
      timeout: timeoutMs,
      polling: 50,
    })
    report.done = true
  } catch (error) {
    report.console.push(`driver: the page was not done within ${timeoutMs} ms (${error.message})`)
  }
  report.log = await page.evaluate(() => window.__log ?? null)
} finally {
  await browser.close()
}
console.log(JSON.stringify(report))
process.exit(report.done ? 0 : 3)
