// Shared setup: where postbox and RabbitMQ are, and a consumer bound to postbox's exchange.
//
// Environment (scripts/client-tests.sh sets all of them):
//   POSTBOX_URL       base URL of a running postbox   (default http://127.0.0.1:8080)
//   POSTBOX_AMQP_URL  RabbitMQ the relay publishes to (default amqp://guest:guest@127.0.0.1:5672/%2f)
//   POSTBOX_EXCHANGE  the relay's topic exchange      (default events)
import amqp from "amqplib";
import { randomUUID } from "node:crypto";

export const POSTBOX_URL = (process.env.POSTBOX_URL ?? "http://127.0.0.1:8080").replace(/\/$/, "");
export const EVENTS_URL = `${POSTBOX_URL}/v1/events`;
export const AMQP_URL = process.env.POSTBOX_AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672/%2f";
export const EXCHANGE = process.env.POSTBOX_EXCHANGE ?? "events";

export const runId = () => randomUUID().slice(0, 12);

/** An exclusive queue bound with `events.#`; collects messages by message_id. */
export async function startConsumer() {
  const conn = await amqp.connect(AMQP_URL);
  const ch = await conn.createChannel();
  await ch.assertExchange(EXCHANGE, "topic", { durable: true }); // as postbox declares it
  const { queue } = await ch.assertQueue("", { exclusive: true, autoDelete: true });
  await ch.bindQueue(queue, EXCHANGE, "events.#");
  const byId = new Map();
  const waiters = new Set();
  await ch.consume(queue, (msg) => {
    if (!msg) return;
    const id = msg.properties.messageId ?? "";
    if (!byId.has(id)) byId.set(id, []);
    byId.get(id).push(msg);
    for (const w of waiters) w();
  }, { noAck: true });

  return {
    /** Resolves with the first message for each id, or rejects after `timeoutMs`. */
    waitFor(ids, timeoutMs = 30_000) {
      return new Promise((resolve, reject) => {
        const check = () => {
          if (ids.every((id) => byId.has(id))) {
            waiters.delete(check);
            clearTimeout(timer);
            resolve(Object.fromEntries(ids.map((id) => [id, byId.get(id)[0]])));
          }
        };
        const timer = setTimeout(() => {
          waiters.delete(check);
          reject(new Error(`no AMQP message with message_id ${ids.filter((i) => !byId.has(i))} within ${timeoutMs} ms`));
        }, timeoutMs);
        waiters.add(check);
        check();
      });
    },
    /** How many messages carried this id, after letting the relay settle. */
    async count(id, settleMs = 1500) {
      await new Promise((r) => setTimeout(r, settleMs));
      return (byId.get(id) ?? []).length;
    },
    async close() {
      await ch.close().catch(() => {});
      await conn.close().catch(() => {});
    },
  };
}

/** POST a CloudEvents SDK Message ({headers, body}); returns status, headers and JSON body. */
export async function postMessage(message) {
  const res = await fetch(EVENTS_URL, {
    method: "POST",
    headers: message.headers,
    body: message.body,
    signal: AbortSignal.timeout(10_000),
  });
  const text = await res.text();
  let json;
  try { json = JSON.parse(text); } catch { json = text; }
  return { status: res.status, headers: res.headers, body: json };
}
