// Process each postbox event once on top of at-least-once delivery: the part that
// nats_consumer.mjs and rabbitmq_consumer.mjs share (event identity, the Redis claim, the demo
// handlers, the Prometheus counter). The same scheme as exactly_once.py, which explains it at
// length; in short:
//
//   key = "processed:{consumer}:" + JSON.stringify([source, id])   (same key as the Python side)
//   1. SET key "processing:<token>" NX GET PX <lease>   (Redis >= 7.0)
//        nothing there -> run the handler
//        "done"        -> ack: duplicate
//        "processing:" -> another worker holds it (or crashed holding it): retry after its lease
//   2. handler ok     -> SET key "done" EX <done_ttl>, then ack        (processed)
//   3. handler failed -> delete our claim (compare-and-delete), redeliver after a delay (failed),
//                        or let the broker dead-letter it on the last delivery (dead)
//
// Marking "done" only after the side effect means a crash can never lose an event (the
// "SETNX before the work" recipe does); the lease bounds how long a crashed worker's claim
// delays the retry. A crash between the effect and "done" runs the event again after the lease:
// make the effect idempotent, or write it and the mark in one transaction, to close that window.
//
// Metric event_processed_total{type,status}, one increment per settled delivery; status is
// processed | duplicate | busy | failed | dead (see exactly_once.py).
import { appendFileSync } from "node:fs";
import { createServer } from "node:http";
import { randomUUID } from "node:crypto";
import { Redis } from "ioredis";
import client from "prom-client";

export const STATUSES = ["processed", "duplicate", "busy", "failed", "dead"];

export const registry = new client.Registry();
export const events = new client.Counter({
  name: "event_processed_total",
  help: "Deliveries settled by this consumer, by CloudEvents type and outcome (processed, duplicate, busy, failed, dead)",
  labelNames: ["type", "status"],
  registers: [registry],
});

/** Serve /metrics; port 0 picks a free port. Resolves with the URL. */
export function serveMetrics(port, host = "127.0.0.1") {
  const server = createServer(async (req, res) => {
    if (req.url !== "/metrics") { res.writeHead(404).end(); return; }
    res.writeHead(200, { "content-type": registry.contentType }).end(await registry.metrics());
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, host, () => {
      server.unref();
      resolve(`http://${host}:${server.address().port}/metrics`);
    });
  });
}

// --- the event --------------------------------------------------------------------------------

export class NotAnEvent extends Error {}

const text = (v) => (v == null ? "" : Buffer.isBuffer(v) ? v.toString() : String(v));

/**
 * A postbox message -> { source, id, type, cloudevent, delivery }. `headers` is a plain object
 * of header name -> value. Structured CloudEvents (what postbox sends) and binary mode
 * (attributes in ce-* headers, body = data) are both accepted.
 */
export function parseEvent(headers, body) {
  const h = {};
  for (const [k, v] of Object.entries(headers ?? {})) h[k.toLowerCase()] = text(v);
  let json = null;
  if (body && body.length) {
    try { json = JSON.parse(Buffer.from(body).toString()); } catch { throw new NotAnEvent("body is not JSON"); }
  }
  let ce;
  if (json && typeof json === "object" && !Array.isArray(json) && "specversion" in json) {
    ce = json;
  } else {
    ce = Object.fromEntries(Object.entries(h).filter(([k]) => k.startsWith("ce-")).map(([k, v]) => [k.slice(3), v]));
    ce.data = json;
  }
  const source = h["ce-source"] || text(ce.source);
  const id = h["ce-id"] || text(ce.id);
  if (!source || !id) throw new NotAnEvent("no CloudEvents source and id (ce-source / ce-id)");
  return { source, id, type: h["ce-type"] || text(ce.type) || "unknown", cloudevent: ce, delivery: 1 };
}

// --- the claim --------------------------------------------------------------------------------

const DONE = "done";
const PROCESSING = "processing:";
const RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

export const dedupeKey = (consumer, source, id, prefix = "processed") =>
  `${prefix}:${consumer}:${JSON.stringify([source, id])}`;

export class Dedupe {
  constructor(redis, { lease, doneTtl }) { Object.assign(this, { redis, lease, doneTtl }); }

  /** -> { key, token, state: "claimed" | "duplicate" | "busy", retryAfter (s) } */
  async claim(key) {
    const token = PROCESSING + randomUUID();
    const prev = await this.redis.set(key, token, "PX", Math.round(this.lease * 1000), "NX", "GET");
    if (prev === null) return { key, token, state: "claimed", retryAfter: 0 };
    if (prev === DONE) return { key, token, state: "duplicate", retryAfter: 0 };
    const pttl = await this.redis.pttl(key);
    const waitMs = pttl === -1 ? this.lease * 1000 : Math.max(pttl, 0);
    return { key, token, state: "busy", retryAfter: (waitMs + 50) / 1000 };
  }

  done(claim) { return this.redis.set(claim.key, DONE, "EX", Math.round(this.doneTtl)); }

  release(claim) { return this.redis.eval(RELEASE, 1, claim.key, claim.token); }
}

/** Claim, run the handler, mark done or release. -> { status, action: "ack" | "retry", delay (s) } */
export async function processEvent(dedupe, key, handler, event, { lastDelivery, retryDelay }) {
  const claim = await dedupe.claim(key);
  if (claim.state === "duplicate") return { status: "duplicate", action: "ack", delay: 0 };
  if (claim.state === "busy") return { status: "busy", action: "retry", delay: claim.retryAfter };
  try {
    await handler(event);
  } catch (e) {
    console.log(`handler failed for ${event.source} ${event.id} (delivery ${event.delivery}): ${e.message}`);
    await dedupe.release(claim);
    // On the last delivery there is nothing to wait for: the broker dead-letters it at once.
    return lastDelivery ? { status: "dead", action: "retry", delay: 0 } : { status: "failed", action: "retry", delay: retryDelay };
  }
  await dedupe.done(claim);
  return { status: "processed", action: "ack", delay: 0 };
}

export function count(type, verdict, event) {
  events.inc({ type, status: verdict.status });
  const who = event ? ` ${event.source} ${event.id} delivery=${event.delivery}` : "";
  console.log(`${verdict.status} ${type}${who}`);
}

// --- demo handlers ----------------------------------------------------------------------------

export const HANDLER_NAMES = ["succeed", "fail-twice", "always-fail"];

/** The demo handlers; `record` appends one JSON line per call, as the Python side does. */
export function makeHandler(name, record) {
  const calls = new Map();
  const note = (event, result) => {
    const k = JSON.stringify([event.source, event.id]);
    const n = (calls.get(k) ?? 0) + 1;
    calls.set(k, n);
    if (record) {
      appendFileSync(record, JSON.stringify({ source: event.source, id: event.id, type: event.type,
        delivery: event.delivery, call: n, result }) + "\n");
    }
    return n;
  };
  const succeed = async (event) => { // the side effect: here, print the event (and record it)
    note(event, "ok");
    console.log(`event ${event.type} ${event.source} ${event.id} ${JSON.stringify(event.cloudevent.data)}`);
  };
  const handlers = {
    succeed,
    "fail-twice": async (event) => {
      const n = (calls.get(JSON.stringify([event.source, event.id])) ?? 0) + 1;
      if (n <= 2) { note(event, "error"); throw new Error(`call ${n} fails on purpose`); }
      await succeed(event);
    },
    "always-fail": async (event) => { throw new Error(`call ${note(event, "error")} fails on purpose`); },
  };
  if (!handlers[name]) throw new Error(`unknown handler ${name}: ${HANDLER_NAMES.join(", ")}`);
  return handlers[name];
}

/** Options shared by both Node examples, for node:util parseArgs. */
export const commonOptions = {
  redis: { type: "string", default: process.env.REDIS_URL ?? "redis://127.0.0.1:6379/0" },
  handler: { type: "string", default: process.env.CONSUMER_HANDLER ?? "succeed" },
  record: { type: "string", default: process.env.CONSUMER_RECORD },
  lease: { type: "string", default: "30" },
  "done-ttl": { type: "string", default: "3600" },
  "retry-delay": { type: "string", default: "5" },
  "metrics-port": { type: "string", default: "9464" },
  "metrics-host": { type: "string", default: "127.0.0.1" },
  "dedupe-prefix": { type: "string", default: "processed" },
};

/** The common pieces from parsed options: { redis, dedupe, handler, retryDelay, metrics }. */
export async function setup(opts) {
  const redis = new Redis(opts.redis, { lazyConnect: true, maxRetriesPerRequest: 3 });
  await redis.connect();
  await redis.ping();
  return {
    redis,
    dedupe: new Dedupe(redis, { lease: Number(opts.lease), doneTtl: Number(opts["done-ttl"]) }),
    handler: makeHandler(opts.handler, opts.record),
    retryDelay: Number(opts["retry-delay"]),
    metrics: await serveMetrics(Number(opts["metrics-port"]), opts["metrics-host"]),
  };
}
