// The official JavaScript CloudEvents SDK against a running postbox, end to end.
//
// Send with the SDK's serializers (HTTP.structured, HTTP.binary, and its stock emitter), plus a
// batch of SDK events; consume with amqplib; decode each message with the SDK (HTTP.toEvent on
// the AMQP content_type + body, which is what the RabbitMQ binding's structured mode is) and
// compare with what was sent.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { CloudEvent, HTTP, Mode, emitterFor, httpTransport } from "cloudevents";
import { EVENTS_URL, POSTBOX_URL, postMessage, runId, startConsumer } from "./helpers.mjs";

let consumer;
before(async () => { consumer = await startConsumer(); });
after(async () => { await consumer?.close(); });

/** The SDK's own decoding of an AMQP message from postbox. */
function decode(msg) {
  const body = msg.content.toString("utf8");
  const event = HTTP.toEvent({ headers: { "content-type": msg.properties.contentType }, body });
  // The plain way must agree: the body is the structured CloudEvent JSON.
  assert.deepEqual(new CloudEvent(JSON.parse(body)).toJSON(), event.toJSON());
  return event;
}

function assertSame(got, sent) {
  assert.ok(got instanceof CloudEvent);
  assert.equal(got.id, sent.id);
  assert.equal(got.source, sent.source);
  assert.equal(got.type, sent.type);
  assert.deepEqual(got.data, sent.data);
  assert.equal(got.specversion, "1.0");
  assert.equal(new Date(got.time).getTime(), new Date(sent.time).getTime());
  if (sent.subject) assert.equal(got.subject, sent.subject);
  if (sent.dataschema) assert.equal(got.dataschema, sent.dataschema);
}

function assertAmqp(msg, sent, routingKey) {
  const p = msg.properties;
  assert.equal(p.messageId, sent.id, "AMQP message_id must be the event id");
  assert.equal(p.contentType, "application/cloudevents+json");
  assert.equal(p.deliveryMode, 2, "messages must be persistent");
  assert.equal(msg.fields.routingKey, routingKey);
  const h = Object.fromEntries(Object.entries(p.headers ?? {}).map(([k, v]) => [k, String(v)]));
  assert.equal(h["ce-id"], sent.id);
  assert.equal(h["ce-source"], sent.source);
  assert.equal(h["ce-type"], sent.type);
  assert.equal(h["ce-specversion"], "1.0");
}

test("structured mode (HTTP.structured)", async () => {
  const event = new CloudEvent({
    id: `js-structured-${runId()}`,
    source: "/clients/node",
    type: "order.paid.v1",
    subject: "o-1001",
    tenant: "acme", // an extension attribute
    data: { order_id: "o-1001", amount: 25.5, currency: "EUR" },
  });
  const message = HTTP.structured(event);
  assert.match(message.headers["content-type"], /^application\/cloudevents\+json/);
  const res = await postMessage(message);
  assert.equal(res.status, 202, JSON.stringify(res.body));
  assert.equal(res.body.id, event.id);
  assert.equal(res.body.source, event.source);

  const msg = (await consumer.waitFor([event.id]))[event.id];
  assertAmqp(msg, event, "events.order.paid.v1");
  const got = decode(msg);
  assertSame(got, event);
  assert.equal(got.tenant, "acme");
  assert.equal(String(msg.properties.headers["ce-tenant"]), "acme");
});

test("binary mode (HTTP.binary)", async () => {
  const event = new CloudEvent({
    id: `js-binary-${runId()}`,
    source: "/clients/node/accounts",
    type: "user.signed_up.v1",
    subject: "u-77",
    datacontenttype: "application/json",
    data: { user_id: "u-77", email: "ada@example.com", plan: "pro" },
  });
  const message = HTTP.binary(event);
  assert.equal(message.headers["ce-id"], event.id);
  const res = await postMessage(message);
  assert.equal(res.status, 202, JSON.stringify(res.body));
  assert.equal(res.body.id, event.id);
  assert.equal(res.body.source, event.source);

  const msg = (await consumer.waitFor([event.id]))[event.id];
  assertAmqp(msg, event, "events.user.signed_up.v1");
  assertSame(decode(msg), event);
});

test("binary mode with a non-ASCII attribute", {
  todo: "cloudevents (JS) does not percent-encode ce-* header values (HTTP binding 3.1.3.2); "
    + "fetch sends \"Zoë\" as Latin-1 bytes and postbox answers 400 (header value must be visible ASCII)",
}, async () => {
  const event = new CloudEvent({
    id: `js-binary-utf8-${runId()}`,
    source: "/clients/node/accounts",
    type: "user.signed_up.v1",
    subject: "Zoë",
    data: { user_id: "u-78", email: "zoe@example.com" },
  });
  const res = await postMessage(HTTP.binary(event));
  assert.equal(res.status, 202, JSON.stringify(res.body));
  const msg = (await consumer.waitFor([event.id]))[event.id];
  assertSame(decode(msg), event);
});

test("binary mode without datacontenttype (the SDK's default Content-Type)", async () => {
  const event = new CloudEvent({
    id: `js-binary-default-${runId()}`,
    source: "/clients/node",
    type: "order.paid.v1",
    data: { order_id: "o-7", amount: 7, currency: "EUR" },
  });
  const message = HTTP.binary(event); // content-type: application/json; charset=utf-8
  const res = await postMessage(message);
  assert.equal(res.status, 202, JSON.stringify(res.body));
  const msg = (await consumer.waitFor([event.id]))[event.id];
  assertSame(decode(msg), event);
});

test("batch of SDK events (application/cloudevents-batch+json)", async () => {
  const id = runId();
  const events = [
    new CloudEvent({
      id: `js-batch-0-${id}`,
      source: "/clients/node",
      // The version from `dataschema`, as postbox serves it, not from a .vN suffix.
      type: "order.paid",
      dataschema: `${POSTBOX_URL}/v1/schemas/order.paid/v2`,
      data: { order_id: `o-${id}`, customer_id: "c-42", amount_minor: 990, currency: "EUR" },
    }),
    new CloudEvent({
      id: `js-batch-1-${id}`,
      source: "/clients/node",
      type: "user.signed_up.v1",
      data: { user_id: `u-${id}`, email: "bob@example.com" },
    }),
  ];
  // The SDK reads batches (HTTP.toEvent) but has no batch serializer: an array of its events.
  const res = await postMessage({
    headers: { "content-type": "application/cloudevents-batch+json" },
    body: JSON.stringify(events),
  });
  assert.equal(res.status, 202, JSON.stringify(res.body));
  assert.deepEqual(res.body.events.map((e) => e.id), events.map((e) => e.id));
  // And the SDK reads the same body back as a batch.
  assert.equal(HTTP.toEvent({ headers: { "content-type": "application/cloudevents-batch+json" }, body: JSON.stringify(events) }).length, 2);

  const got = await consumer.waitFor(events.map((e) => e.id));
  assertAmqp(got[events[0].id], events[0], "events.order.paid.v2");
  assertAmqp(got[events[1].id], events[1], "events.user.signed_up.v1");
  for (const e of events) assertSame(decode(got[e.id]), e);
});

test("stock emitter (emitterFor + httpTransport), both modes", async () => {
  const sent = [];
  for (const mode of [Mode.STRUCTURED, Mode.BINARY]) {
    const emit = emitterFor(httpTransport(EVENTS_URL), { binding: HTTP, mode });
    const event = new CloudEvent({
      id: `js-emitter-${mode}-${runId()}`,
      source: "/clients/node/emitter",
      type: "order.paid.v1",
      data: { order_id: `o-${mode}`, amount: 1, currency: "USD" },
    });
    // httpTransport resolves with {body, headers} only (no status): the 202 body names the id.
    const res = await emit(event);
    assert.equal(JSON.parse(res.body).id, event.id, `${mode}: ${res.body}`);
    sent.push(event);
  }
  const got = await consumer.waitFor(sent.map((e) => e.id));
  for (const e of sent) {
    assertSame(decode(got[e.id]), e);
    assert.equal(got[e.id].properties.messageId, e.id);
  }
});

test("a replay is published once", async () => {
  const event = new CloudEvent({
    id: `js-replay-${runId()}`,
    source: "/clients/node",
    type: "order.paid.v1",
    data: { order_id: "o-r", amount: 3, currency: "EUR" },
  });
  const message = HTTP.structured(event);
  const first = await postMessage(message);
  const second = await postMessage(message);
  assert.equal(first.status, 202);
  assert.equal(second.status, 202);
  assert.equal(second.headers.get("idempotent-replayed"), "true");
  assert.equal(second.body.id, first.body.id);
  await consumer.waitFor([event.id]);
  assert.equal(await consumer.count(event.id), 1);
});
