// Runs examples/producer.mjs and examples/consumer.mjs against postbox, with timeouts.
//
// The producer sends N events plus one duplicate id (postbox answers it as a replay and
// publishes nothing new). To show the consumer's own deduplication, the test then publishes one
// more copy of an event straight to the exchange, as a relay redelivery after a lost confirm
// would; the consumer must report it as deduplicated.
import { test } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFile } from "node:child_process";
import { copyFileSync, mkdtempSync, rmSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";
import { promisify } from "node:util";
import amqp from "amqplib";
import { AMQP_URL, EXCHANGE, POSTBOX_URL, runId } from "./helpers.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const examples = resolve(here, "../../../examples");
const N = 3;

test("examples/producer.mjs + examples/consumer.mjs", { timeout: 90_000 }, async () => {
  // consumer.mjs imports amqplib: run a copy from inside clients/node so it resolves there.
  const dir = mkdtempSync(join(here, "..", ".run-"));
  copyFileSync(join(examples, "consumer.mjs"), join(dir, "consumer.mjs"));
  const env = { ...process.env, POSTBOX_URL, POSTBOX_AMQP_URL: AMQP_URL, POSTBOX_EXCHANGE: EXCHANGE };
  const consumer = spawn(process.execPath,
    [join(dir, "consumer.mjs"), "--binding", "events.order.paid.#", "--expect", String(N), "--linger", "3"],
    { env, stdio: ["ignore", "pipe", "inherit"] });
  const lines = [];
  let onLine = () => {};
  createInterface({ input: consumer.stdout }).on("line", (l) => { lines.push(l); console.log(`consumer: ${l}`); onLine(); });
  const exited = new Promise((res) => consumer.on("exit", (code) => res(code)));
  const waitLine = (pred, ms) => new Promise((res, rej) => {
    const t = setTimeout(() => rej(new Error(`timed out; consumer said: ${lines.join(" | ")}`)), ms);
    onLine = () => { const l = lines.find(pred); if (l) { clearTimeout(t); res(l); } };
    onLine();
  });
  try {
    await waitLine((l) => l.startsWith("ready"), 20_000);

    const prefix = `js-example-${runId()}`;
    const { stdout } = await promisify(execFile)(process.execPath,
      [join(examples, "producer.mjs"), String(N), prefix], { env, timeout: 60_000 });
    console.log(stdout);
    const out = stdout.trim().split("\n");
    assert.equal(out.filter((l) => l.startsWith("sent ")).length, N, stdout);
    const replayed = out.filter((l) => l.startsWith("replayed "));
    assert.equal(replayed.length, 1, stdout);
    assert.ok(replayed[0].startsWith(`replayed ${prefix}-0 -> 202`), stdout);

    // A redelivery of event 0, as the relay would send after a lost publisher confirm.
    const dupId = `${prefix}-0`;
    const conn = await amqp.connect(AMQP_URL);
    const ch = await conn.createConfirmChannel();
    ch.publish(EXCHANGE, "events.order.paid.v1", Buffer.from(JSON.stringify({
      specversion: "1.0", id: dupId, source: "/examples/producer-js", type: "order.paid",
      data: { order_id: "o-0", amount: 10, currency: "EUR" },
    })), {
      messageId: dupId,
      contentType: "application/cloudevents+json",
      headers: { "ce-source": "/examples/producer-js", "ce-id": dupId },
    });
    await ch.waitForConfirms();
    await conn.close();

    const summaryLine = await waitLine((l) => l.startsWith("summary "), 60_000);
    assert.equal(await exited, 0);
    const summary = JSON.parse(summaryLine.slice("summary ".length));
    assert.deepEqual([...summary.events].sort(), Array.from({ length: N }, (_, i) => `${prefix}-${i}`));
    assert.deepEqual(summary.deduplicated, [dupId]);
  } finally {
    if (consumer.exitCode === null) consumer.kill();
    rmSync(dir, { recursive: true, force: true });
  }
});
