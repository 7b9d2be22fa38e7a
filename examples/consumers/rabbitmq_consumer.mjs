// Consume postbox's events from RabbitMQ with amqplib, processing each event once.
//
//   npm install amqplib ioredis prom-client           # versions: clients/node/package.json
//   node examples/consumers/rabbitmq_consumer.mjs --queue billing --binding 'events.order.paid.#'
//
// Needs RabbitMQ >= 3.10 and Redis >= 7.0. exactly_once.mjs (beside this file) has the
// claim-then-mark-done dedupe, the demo handlers (--handler) and the metric
// event_processed_total{type,status} on --metrics-port; exactly_once.py explains them.
//
// Declares the same topology as rabbitmq_consumer.py, which is what postbox's `[[queues]]`
// entry with type = "quorum", delivery_limit and dead_letter = true declares: the durable
// topic exchange (--exchange), the direct dead-letter exchange `{exchange}.dlx`, the quorum
// queue `{queue}.dlq` bound to it with its own name, and the quorum queue (--queue) with
// x-delivery-limit (--delivery-limit, default 3: returns, so up to 4 deliveries),
// x-dead-letter-exchange and x-dead-letter-routing-key, bound with --binding (default events.#).
// A failed or busy event is held unacked for the delay, then rejected with requeue (RabbitMQ has
// no per-message redelivery delay). To replay the DLQ: `python3 rabbitmq_consumer.py replay`.
import { parseArgs } from "node:util";
import amqp from "amqplib";
import { NotAnEvent, commonOptions, count, dedupeKey, parseEvent, processEvent, setup } from "./exactly_once.mjs";

const { values: opts } = parseArgs({
  options: {
    url: { type: "string", default: process.env.POSTBOX_AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672/%2f" },
    exchange: { type: "string", default: process.env.POSTBOX_EXCHANGE ?? "events" },
    queue: { type: "string", default: "example" },
    binding: { type: "string", multiple: true },
    "delivery-limit": { type: "string", default: "3" },
    "dead-letter-exchange": { type: "string" },
    "dead-letter-queue": { type: "string" },
    prefetch: { type: "string", default: "10" },
    ...commonOptions,
  },
});
const queue = opts.queue;
const bindings = opts.binding ?? ["events.#"];
const deliveryLimit = Number(opts["delivery-limit"]);
const dlx = opts["dead-letter-exchange"] ?? `${opts.exchange}.dlx`;
const dlq = opts["dead-letter-queue"] ?? `${queue}.dlq`;

const conn = await amqp.connect(opts.url);
const ch = await conn.createChannel();
await ch.assertExchange(opts.exchange, "topic", { durable: true });
await ch.assertExchange(dlx, "direct", { durable: true });
await ch.assertQueue(dlq, { durable: true, arguments: { "x-queue-type": "quorum" } });
await ch.bindQueue(dlq, dlx, dlq);
await ch.assertQueue(queue, { durable: true, arguments: {
  "x-queue-type": "quorum", "x-delivery-limit": deliveryLimit,
  "x-dead-letter-exchange": dlx, "x-dead-letter-routing-key": dlq,
} });
for (const b of bindings) await ch.bindQueue(queue, opts.exchange, b);

const { redis, dedupe, handler, retryDelay, metrics } = await setup(opts);

async function onMessage(msg) {
  const headers = msg.properties.headers ?? {};
  const returns = Number(headers["x-delivery-count"] ?? 0); // set by quorum queues on redelivery
  let event;
  try {
    event = parseEvent(headers, msg.content);
  } catch (e) {
    if (!(e instanceof NotAnEvent)) throw e;
    console.log(`not an event (message_id ${msg.properties.messageId}): ${e.message}`);
    count(headers["ce-type"] ? String(headers["ce-type"]) : "unknown", { status: "dead" });
    ch.reject(msg, false); // -> dead-letter queue now
    return;
  }
  event.delivery = returns + 1;
  const verdict = await processEvent(dedupe, dedupeKey(queue, event.source, event.id, opts["dedupe-prefix"]),
    handler, event, { lastDelivery: returns >= deliveryLimit, retryDelay });
  if (verdict.action === "ack") {
    ch.ack(msg);
  } else { // hold it for the delay, then requeue (the last delivery: at once, to be dead-lettered)
    const requeue = () => { try { ch.reject(msg, true); } catch { /* channel gone: requeued anyway */ } };
    if (verdict.delay > 0) setTimeout(requeue, verdict.delay * 1000); else requeue();
  }
  count(event.type, verdict, event);
}

// One message at a time, in order (amqplib calls back without waiting for a promise).
let chain = Promise.resolve();
await ch.prefetch(Number(opts.prefetch));
const { consumerTag } = await ch.consume(queue, (msg) => {
  if (msg) chain = chain.then(() => onMessage(msg)).catch((e) => { console.error(e); process.exitCode = 1; });
});

let stopping = false;
async function stop() {
  if (stopping) return;
  stopping = true;
  await ch.cancel(consumerTag).catch(() => {});
  await chain;
  await conn.close().catch(() => {}); // held messages go back to the queue
  await redis.quit();
  console.log("stopped");
  process.exit(process.exitCode ?? 0);
}
for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, stop);
console.log(`ready metrics=${metrics} queue=${queue} bindings=${bindings.join(",")} exchange=${opts.exchange} ` +
  `delivery_limit=${deliveryLimit} dlq=${dlq}`);
