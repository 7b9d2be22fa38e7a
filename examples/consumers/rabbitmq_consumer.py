#!/usr/bin/env python3
"""Consume postbox's events from RabbitMQ with pika, processing each event once.

    pip install pika redis prometheus-client          # versions: clients/python/requirements.txt
    python3 examples/consumers/rabbitmq_consumer.py run --queue billing --binding 'events.order.paid.#'
    python3 examples/consumers/rabbitmq_consumer.py replay --queue billing   # DLQ -> queue

Needs RabbitMQ >= 3.10 and Redis >= 7.0. exactly_once.py (beside this file) explains the
claim-then-mark-done dedupe, the demo handlers (--handler) and the metric
event_processed_total{type,status} served on --metrics-port.

Topology, declared at start exactly as postbox's `[[queues]]` entry with `type = "quorum"`,
`delivery_limit` and `dead_letter = true` declares it (so either may come first):
- the durable topic exchange (--exchange, default events) postbox publishes to, routing key
  `events.{type}.{version}`;
- the dead-letter exchange `{exchange}.dlx` (direct) and queue `{queue}.dlq` (quorum), bound
  with the DLQ's name;
- the quorum queue (--queue) with `x-delivery-limit` (--delivery-limit, default 3),
  `x-dead-letter-exchange` and `x-dead-letter-routing-key`, bound with --binding (default
  `events.#`, the AMQP form of `events.>`).

RabbitMQ counts *returns*: with x-delivery-limit N a message is delivered up to N + 1 times
(`x-delivery-count` 0..N) and dead-lettered (x-death reason `delivery_limit`) when it is
returned once more. For "3 deliveries in all", as NATS' max_deliver 3, use --delivery-limit 2.
RabbitMQ has no per-message redelivery delay, so a failed or busy event is held unacked for
the delay (it counts against --prefetch meanwhile) and then rejected with requeue.

`replay` moves every message of the DLQ back to the queue (through the default exchange, so
the other queues bound to its routing key do not get it again), minus the dead-lettering
headers, plus `replay-of: {dlq}`, with publisher confirms; fix the handler first.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path

import pika
import redis

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exactly_once import (  # noqa: E402
    Dedupe, Handlers, NotAnEvent, Verdict, header_text, add_common_args, count, dedupe_key, parse_event,
    process, serve_metrics,
)


def names(args: argparse.Namespace) -> tuple[str, str]:
    return args.dead_letter_exchange or f"{args.exchange}.dlx", args.dead_letter_queue or f"{args.queue}.dlq"


def declare(ch, args: argparse.Namespace) -> None:
    dlx, dlq = names(args)
    ch.exchange_declare(args.exchange, exchange_type="topic", durable=True)
    ch.exchange_declare(dlx, exchange_type="direct", durable=True)
    ch.queue_declare(dlq, durable=True, arguments={"x-queue-type": "quorum"})
    ch.queue_bind(dlq, dlx, routing_key=dlq)
    ch.queue_declare(args.queue, durable=True, arguments={
        "x-queue-type": "quorum",
        "x-delivery-limit": args.delivery_limit,
        "x-dead-letter-exchange": dlx,
        "x-dead-letter-routing-key": dlq,
    })
    for binding in args.binding:
        ch.queue_bind(args.queue, args.exchange, routing_key=binding)


def run(args: argparse.Namespace) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(args.url))
    ch = conn.channel()
    declare(ch, args)
    r = redis.Redis.from_url(args.redis, decode_responses=True)
    r.ping()
    dedupe = Dedupe(r, lease=args.lease, done_ttl=args.done_ttl)
    handlers = Handlers(record=args.record)
    handler = handlers.get(args.handler)
    metrics = serve_metrics(args.metrics_port, args.metrics_host)

    def requeue_later(tag: int, delay: float) -> None:
        def requeue() -> None:
            if ch.is_open:
                ch.basic_reject(tag, requeue=True)
        conn.call_later(delay, requeue) if delay > 0 else requeue()

    def on_message(ch, method, props, body) -> None:
        headers = props.headers or {}
        returns = int(headers.get("x-delivery-count", 0))  # set by quorum queues on redelivery
        try:
            event = parse_event(headers, body)
        except NotAnEvent as e:
            print(f"not an event (message_id {props.message_id}): {e}", flush=True)
            count(header_text(headers.get("ce-type")) or "unknown", Verdict("dead", "reject"))
            ch.basic_reject(method.delivery_tag, requeue=False)  # -> dead-letter queue now
            return
        event.delivery = returns + 1
        verdict = process(
            dedupe, dedupe_key(args.queue, event.source, event.id, args.dedupe_prefix), handler, event,
            last_delivery=returns >= args.delivery_limit, retry_delay=args.retry_delay)
        if verdict.action == "ack":
            ch.basic_ack(method.delivery_tag)
        else:
            requeue_later(method.delivery_tag, verdict.delay)
        count(event.type, verdict, event)

    ch.basic_qos(prefetch_count=args.prefetch)
    ch.basic_consume(args.queue, on_message)
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))  # only a flag: pika is not reentrant
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    _, dlq = names(args)
    print(f"ready metrics={metrics} queue={args.queue} bindings={','.join(args.binding)} "
          f"exchange={args.exchange} delivery_limit={args.delivery_limit} dlq={dlq}", flush=True)
    while not stopping:
        conn.process_data_events(time_limit=0.5)
    conn.close()  # unacked (held) messages go back to the queue
    r.close()
    print("stopped", flush=True)
    return 0


DEAD_LETTER_HEADERS = ("x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
                       "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason", "x-delivery-count")


def replay(args: argparse.Namespace) -> int:
    conn = pika.BlockingConnection(pika.URLParameters(args.url))
    ch = conn.channel()
    ch.confirm_delivery()
    _, dlq = names(args)
    replayed = 0
    while True:
        method, props, body = ch.basic_get(dlq)
        if method is None:
            break
        headers = dict(props.headers or {})
        deaths = headers.get("x-death") or [{}]
        routing_key = (deaths[0].get("routing-keys") or [method.routing_key])[0]
        for h in DEAD_LETTER_HEADERS:
            headers.pop(h, None)
        headers["replay-of"] = dlq
        props.headers = headers
        # Straight to this consumer's queue (default exchange), not through the events
        # exchange: the other queues bound to that routing key have had the event already.
        ch.basic_publish("", args.queue, body, props, mandatory=True)
        ch.basic_ack(method.delivery_tag)
        print(f"replayed {props.message_id} ({routing_key}) from {dlq} to {args.queue}", flush=True)
        replayed += 1
    print(f"replayed {replayed}", flush=True)
    conn.close()
    return 0


def main() -> int:
    env = os.environ.get
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", nargs="?", default="run", choices=("run", "declare", "replay"))
    ap.add_argument("--url", default=env("POSTBOX_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"))
    ap.add_argument("--exchange", default=env("POSTBOX_EXCHANGE", "events"))
    ap.add_argument("--queue", default="example")
    ap.add_argument("--binding", action="append", help="topic pattern (repeatable; default events.#)")
    ap.add_argument("--delivery-limit", type=int, default=3, help="x-delivery-limit: returns before dead-lettering")
    ap.add_argument("--dead-letter-exchange", help="default {exchange}.dlx")
    ap.add_argument("--dead-letter-queue", help="default {queue}.dlq")
    ap.add_argument("--prefetch", type=int, default=10)
    add_common_args(ap)
    args = ap.parse_args()
    args.binding = args.binding or ["events.#"]
    if args.command == "declare":
        conn = pika.BlockingConnection(pika.URLParameters(args.url))
        declare(conn.channel(), args)
        conn.close()
        return 0
    return {"run": run, "replay": replay}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
