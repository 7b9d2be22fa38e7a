// Consume postbox's events from NATS JetStream with the `nats` package, processing each event once.
//
//   npm install nats ioredis prom-client              # versions: clients/node/package.json
//   node examples/consumers/nats_consumer.mjs --consumer billing --filter 'events.order.paid.>'
//
// Needs NATS >= 2.9 with JetStream and Redis >= 7.0. exactly_once.mjs (beside this file) has
// the claim-then-mark-done dedupe, the demo handlers (--handler) and the metric
// event_processed_total{type,status} on --metrics-port; exactly_once.py explains them.
//
// Declares the same topology as nats_consumer.py (what exists already is left as it is):
// the stream (--stream, default EVENTS, subjects `{prefix}.>`) if missing; a durable pull
// consumer (--consumer) with filter_subject (--filter), explicit acks, max_deliver
// (--max-deliver, default 3), ack_wait (--ack-wait) and optional backoff (--backoff 1,5,30);
// and the dead-letter stream `{stream}_{consumer}_DLQ` capturing the consumer's
// MAX_DELIVERIES and MSG_TERMINATED advisories. To list or replay what it dead-lettered, use
// `python3 examples/consumers/nats_consumer.py dead|replay` with the same --stream/--consumer.
import { parseArgs } from "node:util";
import { AckPolicy, DeliverPolicy, RetentionPolicy, StorageType, connect, nanos } from "nats";
import { NotAnEvent, commonOptions, count, dedupeKey, parseEvent, processEvent, setup } from "./exactly_once.mjs";

const { values: opts } = parseArgs({
  options: {
    url: { type: "string", default: process.env.NATS_URL ?? process.env.POSTBOX_NATS_URL ?? "nats://127.0.0.1:4222" },
    stream: { type: "string", default: process.env.POSTBOX_NATS_STREAM ?? "EVENTS" },
    prefix: { type: "string", default: process.env.POSTBOX_ROUTING_PREFIX ?? "events" },
    consumer: { type: "string", default: "example" },
    filter: { type: "string" },
    "max-deliver": { type: "string", default: "3" },
    "ack-wait": { type: "string", default: "30" }, // seconds
    backoff: { type: "string", default: "" }, // comma-separated seconds
    "dlq-stream": { type: "string" },
    batch: { type: "string", default: "10" },
    ...commonOptions,
  },
});
const stream = opts.stream;
const durable = opts.consumer;
const dlq = opts["dlq-stream"] ?? `${stream}_${durable}_DLQ`;
const maxDeliver = Number(opts["max-deliver"]);
const backoff = opts.backoff ? opts.backoff.split(",").map((s) => nanos(Number(s) * 1000)) : undefined;
if (backoff && maxDeliver <= backoff.length) {
  console.error("error: --max-deliver must be greater than the number of --backoff values");
  process.exit(2);
}

const notFound = (e) => e?.api_error?.err_code === 10059 || /not found/i.test(e?.message ?? "");

/** Create what is missing. Only fields NATS 2.9 knows are sent (it silently ignores others). */
async function declare(jsm) {
  try {
    await jsm.streams.info(stream);
  } catch (e) {
    if (!notFound(e)) throw e;
    await jsm.streams.add({ name: stream, subjects: [`${opts.prefix}.>`], retention: RetentionPolicy.Limits,
      storage: StorageType.File, duplicate_window: nanos(120_000) });
    console.log(`created stream ${stream} with subjects ${opts.prefix}.>`);
  }
  try {
    await jsm.streams.info(dlq);
  } catch (e) {
    if (!notFound(e)) throw e;
    await jsm.streams.add({ name: dlq, retention: RetentionPolicy.Limits, storage: StorageType.File,
      subjects: ["MAX_DELIVERIES", "MSG_TERMINATED"].map((a) => `$JS.EVENT.ADVISORY.CONSUMER.${a}.${stream}.${durable}`) });
    console.log(`created dead-letter stream ${dlq}`);
  }
  const info = await jsm.consumers.add(stream, {
    durable_name: durable, ack_policy: AckPolicy.Explicit, deliver_policy: DeliverPolicy.All,
    filter_subject: opts.filter ?? `${opts.prefix}.>`, max_deliver: maxDeliver,
    ack_wait: nanos(Number(opts["ack-wait"]) * 1000), max_ack_pending: Number(opts.batch) * 10,
    ...(backoff ? { backoff } : {}),
  });
  return info.config;
}

const nc = await connect({ servers: opts.url, name: `postbox-consumer-${durable}` });
const cfg = await declare(await nc.jetstreamManager());
const { redis, dedupe, handler, retryDelay, metrics } = await setup(opts);
const consumer = await nc.jetstream().consumers.get(stream, durable);
const messages = await consumer.consume({ max_messages: Number(opts.batch) });

for (const sig of ["SIGINT", "SIGTERM"]) process.on(sig, () => messages.stop());
console.log(`ready metrics=${metrics} stream=${stream} consumer=${durable} filter=${cfg.filter_subject} ` +
  `max_deliver=${cfg.max_deliver} dlq=${dlq}`);

for await (const m of messages) { // one at a time; ack_wait must cover the handler
  const headers = {};
  for (const [k, vs] of m.headers ?? []) headers[k] = vs[0];
  let event;
  try {
    event = parseEvent(headers, m.data);
  } catch (e) {
    if (!(e instanceof NotAnEvent)) throw e;
    console.log(`not an event (stream seq ${m.seq}): ${e.message}`);
    count(headers["ce-type"] ?? "unknown", { status: "dead" });
    m.term(); // -> MSG_TERMINATED advisory -> dead-letter stream
    continue;
  }
  event.delivery = m.info.deliveryCount;
  const verdict = await processEvent(dedupe, dedupeKey(durable, event.source, event.id, opts["dedupe-prefix"]),
    handler, event, { lastDelivery: cfg.max_deliver > 0 && event.delivery >= cfg.max_deliver, retryDelay });
  if (verdict.action === "ack") m.ack();
  else m.nak(verdict.delay ? Math.round(verdict.delay * 1000) : undefined); // NakWithDelay
  count(event.type, verdict, event);
}
await nc.drain();
await redis.quit();
console.log("stopped");
