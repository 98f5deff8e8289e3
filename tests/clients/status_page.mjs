// Opens relay's status page in headless Chromium (Debian's /usr/bin/chromium) with
// playwright-core, waits until it has shown its figures (refreshed from status.json), and
// prints one JSON line: {tables: {id: [[cell text, ...], ...]}, summary, requests, pageErrors}.
//
//   node tests/clients/status_page.mjs STATUS_URL [TIMEOUT_MS]
//
// Exits 0 when the figures were shown, 3 when not within TIMEOUT_MS, 2 on bad arguments.
import { chromium } from 'playwright-core'

const pageUrl = process.argv[2]
const timeoutMs = Number(process.argv[3] ?? 15000)
if (!pageUrl) {
  console.error('usage: node status_page.mjs STATUS_URL [TIMEOUT_MS]')
  process.exit(2)
}
const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM_PATH ?? '/usr/bin/chromium',
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  timeout: timeoutMs,
})
const report = { shown: false, tables: {}, summary: null, requests: [], pageErrors: [] }
try {
  const page = await browser.newPage()
  page.on('request', (request) => report.requests.push(request.url()))
  page.on('pageerror', (error) => report.pageErrors.push(String(error)))
  await page.goto(pageUrl, { timeout: timeoutMs })
  await page.waitForFunction(
    () => document.querySelectorAll('#destinations tbody tr').length > 0, null,
    { timeout: timeoutMs })
  report.shown = true
  report.summary = await page.textContent('#summary')
  for (const id of ['destinations', 'sources', 'requests']) {
    report.tables[id] = await page.$$eval(`#${id} tbody tr`, (rows) =>
      rows.map((row) => [...row.cells].map((cell) => cell.textContent.trim())))
  }
} catch (error) {
  report.error = String(error)
} finally {
  await browser.close()
}
console.log(JSON.stringify(report))
process.exit(report.shown ? 0 : 3)
