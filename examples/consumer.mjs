// Consume postbox's events from RabbitMQ with amqplib, dropping redeliveries.
//
//   npm install amqplib
//   POSTBOX_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f POSTBOX_EXCHANGE=events \
//     node examples/consumer.mjs [--binding events.order.paid.#] [--expect N] [--linger SECONDS]
//
// postbox delivers at least once (a publish whose confirm was lost is retried), so a consumer
// must be idempotent. Every message carries the event id as AMQP `message_id` (ids are unique
// per CloudEvents `source`, sent in the `ce-source` header), so this consumer remembers the
// last 10,000 (source, id) pairs and drops a message it has already handled. Use a table with
// a unique key instead when duplicates must be caught across restarts.
//
// With --expect N it exits after N distinct events (plus --linger seconds to catch late
// duplicates) and prints a one-line JSON summary; without it, it runs until interrupted.
import amqp from "amqplib";
import { parseArgs } from "node:util";

const { values: args } = parseArgs({
  options: {
    binding: { type: "string", default: "events.#" }, // events.{type}.{version}
    expect: { type: "string", default: "0" },
    linger: { type: "string", default: "2" },
  },
});
const amqpUrl = process.env.POSTBOX_AMQP_URL ?? "amqp://guest:guest@127.0.0.1:5672/%2f";
const exchange = process.env.POSTBOX_EXCHANGE ?? "events";
const queueName = process.env.POSTBOX_QUEUE ?? ""; // empty: a private queue that goes away with us

/** A bounded set: remembers the most recent `limit` keys (a Map keeps insertion order). */
class Seen {
  constructor(limit = 10_000) { this.limit = limit; this.keys = new Map(); }
  add(key) {
    if (this.keys.has(key)) return false;
    this.keys.set(key, true);
    if (this.keys.size > this.limit) this.keys.delete(this.keys.keys().next().value);
    return true;
  }
}

const conn = await amqp.connect(amqpUrl);
const ch = await conn.createChannel();
await ch.assertExchange(exchange, "topic", { durable: true }); // as postbox declares it
const { queue } = queueName
  ? await ch.assertQueue(queueName, { durable: true, arguments: { "x-queue-type": "quorum" } })
  : await ch.assertQueue("", { exclusive: true });
await ch.bindQueue(queue, exchange, args.binding);
await ch.prefetch(100);
console.log(`ready: queue ${queue} bound to ${exchange} with ${args.binding}`);

const seen = new Seen();
const handled = [];
const dropped = [];
const expect = Number(args.expect);
let finishing = false;

async function finish() {
  console.log(`summary ${JSON.stringify({ events: handled, deduplicated: dropped })}`);
  await ch.close();
  await conn.close();
}

await ch.consume(queue, (msg) => {
  if (!msg) return;
  const { messageId, headers = {} } = msg.properties;
  const source = String(headers["ce-source"] ?? "");
  if (seen.add(`${source}\u0000${messageId}`)) {
    const event = JSON.parse(msg.content.toString()); // structured CloudEvent
    console.log(`event ${messageId} ${event.type} ${JSON.stringify(event.data)}`);
    handled.push(messageId);
  } else {
    console.log(`duplicate ${messageId} from ${source}: dropped`);
    dropped.push(messageId);
  }
  ch.ack(msg); // ack after handling: at-least-once
  if (expect && !finishing && handled.length >= expect) {
    finishing = true;
    setTimeout(finish, Number(args.linger) * 1000);
  }
});
process.on("SIGINT", () => finish().then(() => process.exit(0)));
