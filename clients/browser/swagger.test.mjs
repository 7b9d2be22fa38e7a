// Swagger UI smoke test: POST /v1/events straight from postbox's /docs answers 202.
//
//   POSTBOX_URL=http://127.0.0.1:8080 node swagger.test.mjs
//
// Drives Debian's chromium (/usr/bin/chromium, or $CHROMIUM) with playwright-core: open /docs,
// expand POST /v1/events, "Try it out", keep the documented example body, "Execute", wait for
// the response, assert 202, and save a screenshot to artifacts/swagger-202.png.
import { chromium } from "playwright-core";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";

const base = (process.env.POSTBOX_URL ?? "http://127.0.0.1:8080").replace(/\/$/, "");
const here = dirname(fileURLToPath(import.meta.url));
const artifacts = join(here, "artifacts");
const shot = join(artifacts, "swagger-202.png");
mkdirSync(artifacts, { recursive: true });
rmSync(join(artifacts, "swagger-failure.png"), { force: true });
const profile = mkdtempSync(join(tmpdir(), "postbox-chromium-"));

// A fresh --user-data-dir each run (playwright passes `profile` as that flag).
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 1000 },
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
let failed = false;
const page = browser.pages()[0] ?? await browser.newPage();
try {
  page.setDefaultTimeout(20_000);
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  // Every asset must come from postbox itself (Swagger UI is vendored, served offline).
  const foreign = [];
  page.on("request", (r) => { if (!r.url().startsWith(base) && !r.url().startsWith("data:")) foreign.push(r.url()); });

  await page.goto(`${base}/docs`, { waitUntil: "load" });
  const op = page.locator(".opblock.opblock-post", {
    has: page.locator('.opblock-summary-path[data-path="/v1/events"]'),
  });
  await op.locator(".opblock-summary").first().click();
  await op.locator("button.try-out__btn").click();
  // The documented example of the selected request content type is already in the body editor;
  // keep it as it is.
  const body = await op.locator("textarea.body-param__text").inputValue();
  const contentType = await op.locator(".opblock-section-request-body select").first().inputValue().catch(() => "?");
  assert.match(body, /"type":\s*"order\.paid/, `example body: ${body}`);
  console.log(`request body example (${contentType}): ${body.replace(/\s+/g, " ")}`);
  const answered = page.waitForResponse((r) => r.url() === `${base}/v1/events` && r.request().method() === "POST");
  await op.locator("button.execute").click();
  const res = await answered;
  assert.equal(res.status(), 202, await res.text());

  // The response section of the page shows the live 202.
  const status = op.locator(".live-responses-table .response .response-col_status").first();
  await status.waitFor();
  assert.equal((await status.innerText()).trim(), "202");
  const shown = await op.locator(".live-responses-table .response-col_description pre.microlight").first().innerText();
  assert.match(shown, /"id"/);
  await status.scrollIntoViewIfNeeded();
  await op.locator(".responses-wrapper").first().scrollIntoViewIfNeeded();
  await page.screenshot({ path: shot, fullPage: false });
  assert.deepEqual(foreign, [], "Swagger UI must not load anything from outside postbox");
  assert.deepEqual(errors, [], "no JavaScript errors on /docs");
  console.log(`ok: Swagger UI POST /v1/events -> 202; screenshot ${shot}`);
} catch (e) {
  failed = true;
  await page.screenshot({ path: join(artifacts, "swagger-failure.png"), fullPage: true }).catch(() => {});
  console.error(e);
} finally {
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(failed ? 1 : 0);
