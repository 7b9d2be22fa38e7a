// Send events to postbox with Node's built-in fetch (Node 18+), no dependencies.
//
//   POSTBOX_URL=http://127.0.0.1:8080 node examples/producer.mjs [COUNT] [ID_PREFIX]
//
// Sends COUNT `order.paid` v1 events in postbox's native envelope, each with its own id, then
// sends the first one again: postbox answers 202 with `Idempotent-Replayed: true` and does not
// store or publish it a second time. Exits non-zero if postbox does not accept an event.

const url = `${(process.env.POSTBOX_URL ?? "http://127.0.0.1:8080").replace(/\/$/, "")}/v1/events`;
const count = Number(process.argv[2] ?? 3);
const prefix = process.argv[3] ?? `order-${Date.now()}`;

const events = Array.from({ length: count }, (_, i) => ({
  type: "order.paid",
  version: "v1",
  id: `${prefix}-${i}`, // your id makes retries safe: (source, id) is the idempotency key
  source: "/examples/producer-js",
  data: { order_id: `o-${i}`, amount: 10 + i, currency: "EUR" },
}));

for (const event of [...events, events[0]]) { // the last one is a duplicate id, e.g. a retry
  const res = await fetch(url, {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify(event),
    signal: AbortSignal.timeout(10_000),
  });
  const body = await res.json(); // 202: {id, source, location}; errors: problem+json
  const replayed = res.headers.get("idempotent-replayed") === "true";
  console.log(`${replayed ? "replayed" : "sent"} ${event.id} -> ${res.status} ${JSON.stringify(body)}`);
  if (res.status !== 202) process.exit(1);
}
