// The operator console (/console) in Debian's Chromium, driven by playwright-core.
//
//   POSTBOX_URL=http://127.0.0.1:8080 POSTBOX_AMQP_URL=amqp://… POSTBOX_EXCHANGE=events \
//   CONSOLE_LABEL=sqlite [CONSOLE_ADMIN_KEY=… CONSOLE_SHOP_KEY=…] node console.test.mjs
//
// The postbox under test runs with `max_attempts = 1` and `stats_interval_ms = 1000`, on an
// exchange of its own with no queue bound (scripts/client-tests.sh starts one on SQLite with API
// keys and one on PostgreSQL without). With CONSOLE_ADMIN_KEY set, keys are configured: the test
// signs in with the admin key, and checks that CONSOLE_SHOP_KEY (no admin scope) is refused the
// operator pages but reads its own events.
//
//  1. overview while events flow: the counters and the chart move, nothing jumps;
//  2. an event found by its id, its page shows envelope, body and timeline;
//  3. user.signed_up events with no queue bound go dead; the dead page lists them; a queue is
//     bound; "Redeliver all matching" says how many, and their rows turn `published`;
//  4. a bad event in the schema page's validation box shows its pointers;
//  5. keyboard navigation, a narrow window, no CSP violation, nothing loaded from elsewhere.
// Screenshots of each page go to artifacts/console-<label>-<page>.png.
import { chromium } from "playwright-core";
import amqp from "amqplib";
import { mkdirSync, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import assert from "node:assert/strict";

const base = (process.env.POSTBOX_URL ?? "http://127.0.0.1:8080").replace(/\/$/, "");
const amqpUrl = process.env.POSTBOX_AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672/%2f";
const exchange = process.env.POSTBOX_EXCHANGE ?? "events";
const label = process.env.CONSOLE_LABEL ?? "run";
const adminKey = process.env.CONSOLE_ADMIN_KEY ?? "";
const shopKey = process.env.CONSOLE_SHOP_KEY ?? "";
const here = dirname(fileURLToPath(import.meta.url));
const artifacts = join(here, "artifacts");
mkdirSync(artifacts, { recursive: true });
const shot = (name) => join(artifacts, `console-${label}-${name}.png`);
const run = Date.now().toString(36);
const log = (...a) => console.log(`[console ${label}]`, ...a);

// --- the API, from node ----------------------------------------------------------------------
async function api(path, { method = "GET", json, key = adminKey } = {}) {
  const headers = {};
  if (key) headers.Authorization = `Bearer ${key}`;
  if (json !== undefined) headers["Content-Type"] = "application/json";
  const res = await fetch(`${base}${path}`, { method, headers, body: json === undefined ? undefined : JSON.stringify(json) });
  const text = await res.text();
  let body = null;
  try { body = JSON.parse(text); } catch { body = text; }
  return { status: res.status, body };
}

async function send(event) {
  const r = await api("/v1/events", { method: "POST", json: event });
  assert.equal(r.status, 202, `POST /v1/events: ${JSON.stringify(r.body)}`);
  return r.body;
}

const order = (n) => ({
  type: "order.paid", version: "v1", id: `flow-${run}-${n}`, source: "/console-test",
  key: `customer-${n % 5}`, data: { order_id: `o-${n}`, amount: 10 + (n % 7), currency: "EUR" },
});

async function until(what, f, timeout = 30_000, every = 250) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    last = await f();
    if (last) return last;
    await new Promise((r) => setTimeout(r, every));
  }
  throw new Error(`timed out waiting for ${what}`);
}

// --- RabbitMQ: queues bound when the test says so, consumed and acked --------------------------
const conn = await amqp.connect(amqpUrl);
const ch = await conn.createChannel();
await ch.assertExchange(exchange, "topic", { durable: true });
const received = new Set();
async function bindQueue(pattern) {
  const { queue } = await ch.assertQueue("", { exclusive: true, autoDelete: true });
  await ch.bindQueue(queue, exchange, pattern);
  await ch.consume(queue, (m) => {
    if (m) {
      received.add(m.properties.messageId);
      ch.ack(m);
    }
  });
}
await bindQueue("events.order.paid.#");

// --- the browser -----------------------------------------------------------------------------
const profile = mkdtempSync(join(tmpdir(), "postbox-chromium-"));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
  headless: true,
  viewport: { width: 1280, height: 900 },
  args: [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
const page = browser.pages()[0] ?? await browser.newPage();
page.setDefaultTimeout(20_000);
const errors = [];
const foreign = [];
page.on("pageerror", (e) => errors.push(String(e)));
page.on("console", (m) => {
  if (m.type() === "error" && !/Failed to load resource/.test(m.text())) errors.push(m.text());
});
page.on("request", (r) => {
  if (!r.url().startsWith(base) && !r.url().startsWith("data:")) foreign.push(r.url());
});

let flowing = true;
let sent = 0;
const flow = (async () => {
  while (flowing) {
    await send(order(sent++));
    await new Promise((r) => setTimeout(r, 150));
  }
})();

/** Sign in when the page asks for a key. */
async function signInIfAsked(key = adminKey) {
  const form = page.locator("form.key-form");
  if (!key) return;
  await form.waitFor({ timeout: 10_000 });
  await page.getByLabel("API key", { exact: true }).fill(key);
  await page.getByRole("button", { name: "Use this key" }).click();
  await form.waitFor({ state: "detached" });
}

async function go(hash) {
  await page.goto(`${base}/console/${hash}`);
}

let failed = false;
try {
  // 1. Overview while events flow ----------------------------------------------------------
  await page.goto(`${base}/console`);
  assert.equal(new URL(page.url()).pathname, "/console/", "/console redirects to /console/");
  await page.getByRole("heading", { name: "Overview" }).waitFor();
  const total = async () => Number((await page.locator('[data-field="accepted-total"]').innerText()).replace(/[^0-9]/g, "") || 0);
  await until("the accepted counter to count", async () => (await total()) > 0);
  const first = await total();
  const points = () => page.locator("#chart-rates .s-accepted").evaluate((g) =>
    [...g.querySelectorAll("polyline, circle")].map((e) => e.getAttribute("points") || `${e.getAttribute("cx")},${e.getAttribute("cy")}`).join(" "));
  const before = await points();
  const boxes = () => page.evaluate(() => ["#chart-rates", "#chart-lag", ".tiles.figures", ".tiles.status"].map((s) => {
    const r = document.querySelector(s).getBoundingClientRect();
    return [s, Math.round(r.top), Math.round(r.height)];
  }));
  const layout = await boxes();
  await until("the accepted counter to move", async () => (await total()) > first);
  await until("the chart to move", async () => {
    const now = await points();
    return now !== before && now.split(" ").length >= 2;
  });
  await until("a published rate", async () => /[1-9]/.test(await page.locator('[data-field="published-rate"]').innerText()));
  assert.deepEqual(await boxes(), layout, "nothing moved while the overview refreshed");
  assert.equal(await page.locator('[data-field="broker-label"]').innerText(), "Broker: RabbitMQ");
  assert.equal(await page.locator('[data-field="broker"]').innerText(), "connected");
  const backend = (await api("/readyz")).body.outbox.backend;
  if (["sqlite", "postgres"].includes(label)) assert.equal(backend, label, "the run's outbox backend");
  assert.equal(await page.locator('[data-field="outbox-label"]').innerText(), `Outbox: ${backend}`);
  assert.equal(await page.locator('[data-field="outbox"]').innerText(), "ready");
  assert.match(await page.locator('[data-field="partitions"]').innerText(), /of 64/);
  log(`overview: accepted ${first} -> ${await total()}, chart moved`);
  await page.screenshot({ path: shot("overview") });

  // 2. Find an event by id -----------------------------------------------------------------
  const wanted = `flow-${run}-3`;
  await until(`${wanted} to be published`, async () => (await api(`/v1/events/${wanted}?source=%2Fconsole-test`)).body.status === "published");
  // Keyboard: Tab to the Events link and open it.
  await page.locator("body").focus();
  for (let i = 0; i < 8; i++) {
    await page.keyboard.press("Tab");
    if ((await page.evaluate(() => document.activeElement.textContent)) === "Events") break;
  }
  await page.keyboard.press("Enter");
  await page.waitForURL(/#\/events$/);
  await signInIfAsked();
  await page.locator("table.events tbody tr").first().waitFor();
  await page.screenshot({ path: shot("events") });
  await page.getByRole("textbox", { name: "Open an event by id" }).fill(wanted);
  await page.getByRole("textbox", { name: "Open an event by id" }).press("Enter");
  await page.getByRole("heading", { name: `Event ${wanted}` }).waitFor();
  await page.locator('[data-field="status-text"]', { hasText: "published" }).waitFor();
  const bodyText = await page.locator('pre[aria-label="Event data"]').innerText();
  assert.match(bodyText, /"order_id": "o-3"/, "the body as pretty JSON");
  assert.match(await page.locator('pre[aria-label="Envelope"]').innerText(), /"type": "order.paid"/);
  assert.match(await page.locator("ol.timeline").innerText(), /Published: confirmed by the broker/);
  if (adminKey) assert.match(await page.locator('[data-field="api-key"]').innerText(), /ops/);
  log(`found ${wanted} by id`);
  await page.screenshot({ path: shot("event"), fullPage: true });

  // 3. Dead events, redelivered from the console --------------------------------------------
  const deadIds = [`dead-${run}-a`, `dead-${run}-b`];
  for (const id of deadIds) {
    await send({ type: "user.signed_up", version: "v1", id, source: "/console-test", data: { user_id: id, email: "ada@example.com" } });
  }
  for (const id of deadIds) {
    await until(`${id} to be dead`, async () => (await api(`/v1/events/${id}?source=%2Fconsole-test`)).body.status === "dead");
  }
  await go("#/dead?type=user.signed_up");
  await page.getByRole("heading", { name: "Dead events" }).waitFor();
  for (const id of deadIds) await page.locator(`tr[data-id="${id}"]`).waitFor();
  assert.match(await page.locator(`tr[data-id="${deadIds[0]}"] .error-cell`).innerText(), /NO_ROUTE|unroutable|returned/i);
  await page.screenshot({ path: shot("dead") });
  await bindQueue("events.user.signed_up.#");
  await page.getByRole("button", { name: "Redeliver all matching…" }).click();
  const dialog = page.getByRole("dialog");
  await dialog.waitFor();
  assert.match(await dialog.innerText(), /Redeliver 2 dead events\?/);
  assert.match(await dialog.innerText(), /of type user\.signed_up/);
  await dialog.getByRole("button", { name: "Redeliver 2 events" }).click();
  for (const id of deadIds) {
    await page.locator(`tr[data-id="${id}"] .status-cell [data-status="published"]`).waitFor();
  }
  await page.locator('[data-field="published"]', { hasText: "2 published" }).waitFor();
  await until("the redelivered messages at the queue", async () => deadIds.every((id) => received.has(id)));
  log("dead events redelivered and published");
  await page.screenshot({ path: shot("dead-redelivered") });

  // 4. Validate a bad event in the schema page -----------------------------------------------
  await go("#/schemas/order.paid/v1");
  await page.getByRole("heading", { name: "order.paid v1" }).waitFor();
  await page.locator('[data-field="compatibility"]').waitFor();
  const box = page.getByLabel("Event (native envelope)");
  await box.fill(JSON.stringify({ data: { order_id: "o-1", amount: 12.5, currency: "EUR" } }));
  await page.getByRole("button", { name: "Validate" }).click();
  await page.locator("#validate-result .ok").waitFor();
  await box.fill(JSON.stringify({ data: { order_id: "o-1", amount: -5 } }, null, 2));
  await page.getByRole("button", { name: "Validate" }).click();
  const problem = page.locator("#validate-result .problem");
  await problem.waitFor();
  const shown = await problem.innerText();
  assert.match(shown, /Event data does not match its schema/);
  const ptrs = await problem.locator("code.pointer").allInnerTexts();
  assert.ok(ptrs.includes("/data/amount"), `pointers shown: ${ptrs}`);
  assert.ok(ptrs.includes("/data"), `pointers shown: ${ptrs}`);
  log(`validation shows pointers ${ptrs.join(", ")}`);
  await page.screenshot({ path: shot("schemas"), fullPage: true });

  // 5. A key without admin scope sees what its API allows ----------------------------------
  if (shopKey) {
    await page.getByRole("button", { name: "Forget key" }).click();
    await go("#/dead");
    await signInIfAsked(shopKey);
    await page.getByRole("heading", { name: "Not allowed with this key" }).waitFor();
    assert.match(await page.locator(".notice").innerText(), /admin scope/);
    await go(`#/events/${wanted}?source=%2Fconsole-test`);
    await page.locator('[data-field="status-text"]', { hasText: "published" }).waitFor();
    log("a key without admin scope: operator pages refused, its own events readable");
    await page.getByRole("button", { name: "Forget key" }).click();
  }

  // 6. A narrow window --------------------------------------------------------------------
  await page.setViewportSize({ width: 400, height: 860 });
  await go("#/overview");
  await page.locator('[data-field="broker"]', { hasText: "connected" }).waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `the overview fits a 400 px window (overflows by ${overflow} px)`);
  await page.screenshot({ path: shot("overview-narrow"), fullPage: true });

  assert.deepEqual(foreign, [], "the console loads nothing from outside postbox");
  assert.deepEqual(errors, [], "no JavaScript error and no CSP violation");
  log(`ok (${sent} events sent while testing)`);
} catch (e) {
  failed = true;
  await page.screenshot({ path: shot("failure"), fullPage: true }).catch(() => {});
  console.error(e);
  if (errors.length) console.error("page errors:", errors);
} finally {
  flowing = false;
  await flow.catch(() => {});
  await browser.close();
  rmSync(profile, { recursive: true, force: true });
  await conn.close().catch(() => {});
}
process.exit(failed ? 1 : 0);
