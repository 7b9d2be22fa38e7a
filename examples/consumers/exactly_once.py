"""Process each postbox event once on top of at-least-once delivery: the part that
nats_consumer.py and rabbitmq_consumer.py share (event identity, the Redis claim, the demo
handlers, the Prometheus counter).

Why a consumer needs this
-------------------------
postbox, NATS JetStream and RabbitMQ all deliver *at least once*: a publish whose confirm was
lost is published again, a message whose ack was lost (or whose consumer died, or whose handler
failed) is delivered again. So a consumer sees some events twice, and must make the *effect*
of an event happen once. An event is identified by its CloudEvents `(source, id)` (postbox
makes that pair unique; it travels in the `ce-source` / `ce-id` headers and in the body).

Why claim-then-mark-done, and not `SET processed:<id> NX` before the work
-------------------------------------------------------------------------
The usual recipe marks the event as processed *before* running the side effect. If the
consumer crashes between the mark and the effect, the redelivery finds the mark, is dropped as
a duplicate, and the event is lost: at-most-once, not exactly-once. Marking *after* the effect
has the opposite hole: two workers that get the same event at the same time both run it.

So the key has two states, per consumer (two different consumers of the same event, say
billing and audit, must each process it, so the consumer's name is part of the key):

    key = "processed:{consumer}:" + json([source, id])

1. Claim: `SET key "processing:<token>" NX GET PX <lease>` (one round trip, Redis >= 7.0).
   - nothing was there: we own the event for `lease` seconds -> run the handler;
   - "done": the effect already happened -> ack, counted as `duplicate`;
   - "processing:...": another worker is on it right now, or one crashed holding it ->
     retry *after the holder's lease runs out* (NATS: nak with that delay; RabbitMQ: hold the
     message, then requeue it), counted as `busy`. If the holder succeeds, the retry finds
     "done"; if it crashed, the claim expires and the retry runs the handler. The lease bounds
     how long a crash delays the event; keep it above the handler's longest run.
2. Handler succeeded: `SET key "done" EX <done_ttl>` (e.g. an hour, longer than any
   redelivery or republish can come late: NATS' duplicate window, postbox's retries), then ack.
   If the ack is lost, the redelivery finds "done" and is acked as a duplicate.
3. Handler failed: delete our claim (only if it is still ours: compare-and-delete, so a worker
   whose lease ran out cannot delete the claim of the worker that took over), then ask for a
   redelivery after a delay (NATS `NakWithDelay`; RabbitMQ reject-with-requeue after a wait).
   After `max_deliver` deliveries (NATS) or `x-delivery-limit` returns (RabbitMQ quorum queue)
   the broker dead-letters the message instead; the delivery that fails last is counted `dead`.

The one window left: a crash after the side effect and before "done" is written. The lease
then expires and the event runs again. Close it by making the side effect idempotent (an
upsert keyed by the event id, a payment API's idempotency key), or by writing the effect and
the "done" mark in one transaction (the mark in the same database as the effect). Redis here
is the cheap general case; the lease only bounds how long such a crash delays the retry.

Metric
------
`event_processed_total{type, status}`: one increment per delivery the consumer settles, so the
statuses add up to deliveries. `type` is the CloudEvents type (`order.paid.v1`), `status` is

    processed   the handler ran and succeeded; acked
    duplicate   already done (a redelivery or a republish); acked without running the handler
    busy        another worker holds the claim; redelivered after its lease
    failed      the handler failed; redelivered after --retry-delay
    dead        the handler failed on the last allowed delivery, or the message is not an
                event (no JSON, no source/id); the broker dead-letters it

Alert on `dead`; `failed` and `busy` are retries that may still succeed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import uuid
from collections import Counter as Tally
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import prometheus_client
from prometheus_client import Counter

STATUSES = ("processed", "duplicate", "busy", "failed", "dead")

prometheus_client.disable_created_metrics()  # only the counters, as prom-client serves them
EVENTS = Counter(
    "event_processed",  # exposed as event_processed_total
    "Deliveries settled by this consumer, by CloudEvents type and outcome "
    "(processed, duplicate, busy, failed, dead)",
    ["type", "status"],
)


def serve_metrics(port: int, host: str = "127.0.0.1") -> str:
    """Serve /metrics (Prometheus text format); port 0 picks a free port. Returns the URL."""
    server, _ = prometheus_client.start_http_server(port, addr=host)
    return f"http://{host}:{server.server_port}/metrics"


# --- the event --------------------------------------------------------------------------------

class NotAnEvent(Exception):
    """The message can never be processed (not JSON, no source or id): dead-letter it at once."""


@dataclass
class Event:
    source: str
    id: str
    type: str
    cloudevent: dict[str, Any]  # the structured CloudEvent: attributes and `data`
    delivery: int = 1  # which delivery of this message this is (1 = first), from the broker

    @property
    def data(self) -> Any:
        return self.cloudevent.get("data")


def header_text(v: Any) -> str:
    return v.decode() if isinstance(v, (bytes, bytearray)) else ("" if v is None else str(v))


def parse_event(headers: Mapping[str, Any] | None, body: bytes) -> Event:
    """A postbox message -> Event. postbox sends structured CloudEvents (the body is the whole
    event) and copies every attribute into a `ce-*` header; a binary-mode message (attributes
    only in `ce-*` headers, the body is `data`) is accepted as well."""
    h = {k.lower(): header_text(v) for k, v in (headers or {}).items()}
    try:
        body_json = json.loads(body) if body else None
    except ValueError:
        raise NotAnEvent("body is not JSON") from None
    if isinstance(body_json, dict) and "specversion" in body_json:
        ce = body_json
    else:  # binary mode
        ce = {k[3:]: v for k, v in h.items() if k.startswith("ce-")}
        ce["data"] = body_json
    source = h.get("ce-source") or header_text(ce.get("source"))
    event_id = h.get("ce-id") or header_text(ce.get("id"))
    if not source or not event_id:
        raise NotAnEvent("no CloudEvents source and id (ce-source / ce-id)")
    return Event(source, event_id, h.get("ce-type") or header_text(ce.get("type")) or "unknown", ce)


# --- the claim --------------------------------------------------------------------------------

DONE = "done"
PROCESSING = "processing:"
# Delete the claim only if it is still ours (a worker whose lease ran out must not delete the
# claim of the worker that took over).
RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


def dedupe_key(consumer: str, source: str, event_id: str, prefix: str = "processed") -> str:
    """`processed:{consumer}:["source","id"]` -- the Node examples build the same key."""
    return f"{prefix}:{consumer}:" + json.dumps([source, event_id], separators=(",", ":"), ensure_ascii=False)


@dataclass
class Claim:
    key: str
    token: str
    state: str  # "claimed" | "duplicate" | "busy"
    retry_after: float = 0.0  # busy: seconds until the holder's lease runs out


def _claim_result(key: str, token: str, previous: str | None, pttl_ms: int | None, lease: float) -> Claim:
    if previous is None:
        return Claim(key, token, "claimed")
    if previous == DONE:
        return Claim(key, token, "duplicate")
    # Held by someone else: come back when the lease ends (+50 ms so it has surely expired).
    # pttl -2: it expired just now; -1 (no expiry) should not happen: wait one lease.
    wait_ms = lease * 1000 if pttl_ms is None or pttl_ms == -1 else max(pttl_ms, 0)
    return Claim(key, token, "busy", (wait_ms + 50) / 1000)


class Dedupe:
    """The claim over a synchronous redis.Redis (decode_responses=True): for pika."""

    def __init__(self, redis: Any, *, lease: float, done_ttl: float) -> None:
        self.r, self.lease, self.done_ttl = redis, lease, done_ttl

    def claim(self, key: str) -> Claim:
        token = PROCESSING + uuid.uuid4().hex
        prev = self.r.set(key, token, nx=True, get=True, px=int(self.lease * 1000))
        return _claim_result(key, token, prev, None if prev in (None, DONE) else self.r.pttl(key), self.lease)

    def done(self, claim: Claim) -> None:
        self.r.set(claim.key, DONE, ex=int(self.done_ttl))

    def release(self, claim: Claim) -> None:
        self.r.eval(RELEASE, 1, claim.key, claim.token)


class AsyncDedupe(Dedupe):
    """The same over redis.asyncio.Redis: for nats-py."""

    async def claim(self, key: str) -> Claim:  # type: ignore[override]
        token = PROCESSING + uuid.uuid4().hex
        prev = await self.r.set(key, token, nx=True, get=True, px=int(self.lease * 1000))
        return _claim_result(key, token, prev, None if prev in (None, DONE) else await self.r.pttl(key), self.lease)

    async def done(self, claim: Claim) -> None:  # type: ignore[override]
        await self.r.set(claim.key, DONE, ex=int(self.done_ttl))

    async def release(self, claim: Claim) -> None:  # type: ignore[override]
        await self.r.eval(RELEASE, 1, claim.key, claim.token)


# --- one delivery -----------------------------------------------------------------------------

@dataclass
class Verdict:
    status: str  # one of STATUSES
    action: str  # "ack" | "retry" (redeliver after `delay` s) | "reject" (dead-letter now)
    delay: float = 0.0


def _after_handler(ok: bool, last_delivery: bool, retry_delay: float) -> Verdict:
    if ok:
        return Verdict("processed", "ack")
    if last_delivery:
        # Nothing to wait for: redeliver at once, the broker sees the limit and dead-letters it.
        return Verdict("dead", "retry")
    return Verdict("failed", "retry", retry_delay)


def _claim_verdict(claim: Claim) -> Verdict | None:
    if claim.state == "duplicate":
        return Verdict("duplicate", "ack")
    if claim.state == "busy":
        return Verdict("busy", "retry", claim.retry_after)
    return None


def process(dedupe: Dedupe, key: str, handler: Callable[[Event], None], event: Event, *,
            last_delivery: bool, retry_delay: float) -> Verdict:
    """Claim, run the handler, mark done or release: what to tell the broker."""
    claim = dedupe.claim(key)
    verdict = _claim_verdict(claim)
    if verdict:
        return verdict
    try:
        handler(event)
    except Exception as e:  # noqa: BLE001 - any handler failure means: retry later
        print(f"handler failed for {event.source} {event.id} (delivery {event.delivery}): {e!r}", flush=True)
        dedupe.release(claim)
        return _after_handler(False, last_delivery, retry_delay)
    dedupe.done(claim)
    return _after_handler(True, last_delivery, retry_delay)


async def aprocess(dedupe: AsyncDedupe, key: str, handler: Callable[[Event], None], event: Event, *,
                   last_delivery: bool, retry_delay: float) -> Verdict:
    """`process` for asyncio (the handler itself is a plain function here)."""
    claim = await dedupe.claim(key)
    verdict = _claim_verdict(claim)
    if verdict:
        return verdict
    try:
        handler(event)
    except Exception as e:  # noqa: BLE001
        print(f"handler failed for {event.source} {event.id} (delivery {event.delivery}): {e!r}", flush=True)
        await dedupe.release(claim)
        return _after_handler(False, last_delivery, retry_delay)
    await dedupe.done(claim)
    return _after_handler(True, last_delivery, retry_delay)


def count(event_type: str, verdict: Verdict, event: Event | None = None) -> None:
    EVENTS.labels(type=event_type, status=verdict.status).inc()
    who = f" {event.source} {event.id} delivery={event.delivery}" if event else ""
    print(f"{verdict.status} {event_type}{who}", flush=True)


# --- demo handlers ----------------------------------------------------------------------------

class HandlerFailed(Exception):
    pass


@dataclass
class Handlers:
    """The demo handlers: replace `succeed` with your own code. `--record FILE` appends one JSON
    line per call (the test reads it): {"source","id","type","delivery","call","result"}."""

    record: str | None = None
    calls: Tally = field(default_factory=Tally)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def _note(self, event: Event, result: str) -> int:
        with self.lock:
            n = self.calls[(event.source, event.id)] = self.calls[(event.source, event.id)] + 1
            if self.record:
                line = {"source": event.source, "id": event.id, "type": event.type,
                        "delivery": event.delivery, "call": n, "result": result}
                with open(self.record, "a", encoding="utf-8") as f:
                    f.write(json.dumps(line) + "\n")
        return n

    def succeed(self, event: Event) -> None:
        """The side effect: here, print the event (and record it)."""
        self._note(event, "ok")
        print(f"event {event.type} {event.source} {event.id} {json.dumps(event.data)}", flush=True)

    def fail_twice(self, event: Event) -> None:
        """Fails on the first two calls for an event, then succeeds: a transient fault."""
        with self.lock:
            n = self.calls[(event.source, event.id)] + 1
        if n <= 2:
            self._note(event, "error")
            raise HandlerFailed(f"call {n} fails on purpose")
        self.succeed(event)

    def always_fail(self, event: Event) -> None:
        """Never succeeds: a poison event, which must end in the dead-letter stream/queue."""
        n = self._note(event, "error")
        raise HandlerFailed(f"call {n} fails on purpose")

    def get(self, name: str) -> Callable[[Event], None]:
        return {"succeed": self.succeed, "fail-twice": self.fail_twice, "always-fail": self.always_fail}[name]


HANDLER_NAMES = ("succeed", "fail-twice", "always-fail")


def add_common_args(ap: argparse.ArgumentParser) -> None:
    env = os.environ.get
    ap.add_argument("--redis", default=env("REDIS_URL", "redis://127.0.0.1:6379/0"), help="dedupe store (Redis >= 7)")
    ap.add_argument("--handler", default=env("CONSUMER_HANDLER", "succeed"), choices=HANDLER_NAMES,
                    help="demo handler (env CONSUMER_HANDLER)")
    ap.add_argument("--record", default=env("CONSUMER_RECORD"), help="append one JSON line per handler call to FILE")
    ap.add_argument("--lease", type=float, default=30.0, help="seconds a claim lasts (> the handler's longest run)")
    ap.add_argument("--done-ttl", type=float, default=3600.0, help="seconds an event is remembered as done")
    ap.add_argument("--retry-delay", type=float, default=5.0, help="seconds before a failed event is redelivered")
    ap.add_argument("--metrics-port", type=int, default=9464, help="port of /metrics (0: any free port)")
    ap.add_argument("--metrics-host", default="127.0.0.1", help="address of /metrics")
    ap.add_argument("--dedupe-prefix", default="processed", help="Redis key prefix")


def fail(msg: str) -> None:
    print(f"error: {msg}", file=sys.stderr, flush=True)
    sys.exit(2)
