// A headless Chromium that the console's end-to-end tests (e2e/tests/e2e/console.rs) drive: one JSON
// command per line on stdin, one JSON answer per line on stdout ({"ok": …} or {"error": "…"}). The
// test decides what to check; this file only does what it is told, in a real browser.
//
//   node driver.mjs CHROMIUM_PATH USER_DATA_DIR
import { chromium } from "playwright-core";
import readline from "node:readline";

const [executablePath, userDataDir] = process.argv.slice(2);
const context = await chromium.launchPersistentContext(userDataDir, {
  executablePath,
  headless: true,
  // The stack's CA is a throwaway one; the test checks TLS itself with its own clients.
  ignoreHTTPSErrors: true,
  viewport: { width: 1300, height: 900 },
  args: [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
    "--disable-component-update", "--disable-sync", "--no-first-run",
  ],
});
const page = context.pages()[0] ?? (await context.newPage());
const problems = [];
page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
page.on("console", (m) => { if (m.type() === "error") problems.push(`console: ${m.text()}`); });

const commands = {
  async goto({ url }) { const r = await page.goto(url); return { status: r?.status() ?? 0, url: page.url() }; },
  async fill({ selector, value }) { await page.fill(selector, value); return {}; },
  async select({ selector, value }) { await page.selectOption(selector, value); return {}; },
  async click({ selector }) {
    const [response] = await Promise.all([
      page.waitForNavigation({ timeout: 10000 }).catch(() => null),
      page.click(selector),
    ]);
    return { status: response?.status() ?? 0, url: page.url() };
  },
  async text({ selector }) { return { text: await page.textContent(selector, { timeout: 5000 }) }; },
  async value({ selector }) { return { value: await page.inputValue(selector, { timeout: 5000 }) }; },
  async texts({ selector }) { return { texts: await page.locator(selector).allTextContents() }; },
  async url() { return { url: page.url() }; },
  async wait_text({ selector, contains, timeout_ms }) {
    await page.waitForFunction(
      ([s, c]) => [...document.querySelectorAll(s)].some((e) => e.textContent.includes(c)),
      [selector, contains], { timeout: timeout_ms });
    return {};
  },
  async screenshot({ path }) { await page.screenshot({ path, fullPage: true }); return {}; },
  async cookies() { return { cookies: await context.cookies() }; },
  async download({ selector }) {
    const [download] = await Promise.all([page.waitForEvent("download"), page.click(selector)]);
    const stream = await download.createReadStream();
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    return { name: download.suggestedFilename(), body: Buffer.concat(chunks).toString("utf8") };
  },
  // A form on a page of no origin of ours (about:blank in a fresh tab), posted to `url`: what a
  // cross-site page would make the operator's browser send.
  async cross_site_post({ url, fields }) {
    const other = await context.newPage();
    try {
      await other.setContent("<form method=post></form>");
      const [response] = await Promise.all([
        other.waitForNavigation({ timeout: 10000 }),
        other.evaluate(([action, fields]) => {
          const form = document.forms[0];
          form.action = action;
          for (const [name, value] of Object.entries(fields)) {
            const input = document.createElement("input");
            input.name = name; input.value = value; form.append(input);
          }
          form.submit();
        }, [url, fields]),
      ]);
      return { status: response?.status() ?? 0, url: other.url(), body: await other.content() };
    } finally {
      await other.close();
    }
  },
  async problems() { return { problems: problems.splice(0) }; },
  async close() { await context.close(); return {}; },
};

const lines = readline.createInterface({ input: process.stdin });
for await (const line of lines) {
  let answer;
  try {
    const command = JSON.parse(line);
    answer = { ok: await commands[command.op](command) };
  } catch (e) {
    answer = { error: String(e?.message ?? e) };
  }
  process.stdout.write(JSON.stringify(answer) + "\n");
  if (line.includes('"close"')) break;
}
process.exit(0);
