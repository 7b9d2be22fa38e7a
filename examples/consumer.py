#!/usr/bin/env python3
"""Consume postbox's events from RabbitMQ with pika, dropping redeliveries.

    pip install pika
    POSTBOX_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f POSTBOX_EXCHANGE=events \
        python3 examples/consumer.py [--binding events.order.paid.#] [--expect N] [--linger SECONDS]

postbox delivers at least once (a publish whose confirm was lost is retried), so a consumer
must be idempotent. Every message carries the event id as AMQP `message_id` (ids are unique per
CloudEvents `source`, sent in the `ce-source` header), so this consumer remembers the last
10,000 (source, id) pairs and drops a message it has already handled. Use a table with a
unique key instead when duplicates must be caught across restarts.

With --expect N it exits after N distinct events (plus --linger seconds to catch late
duplicates) and prints a one-line JSON summary; without it, it runs until interrupted.
"""

import argparse
import json
import os
import sys
import time
from collections import OrderedDict

import pika

AMQP_URL = os.environ.get("POSTBOX_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
EXCHANGE = os.environ.get("POSTBOX_EXCHANGE", "events")
QUEUE = os.environ.get("POSTBOX_QUEUE", "")  # empty: a private queue that goes away with us


class Seen:
    """A bounded set: remembers the most recent `limit` keys."""

    def __init__(self, limit: int = 10_000) -> None:
        self.limit = limit
        self.keys: OrderedDict[tuple[str, str], None] = OrderedDict()

    def add(self, key: tuple[str, str]) -> bool:
        """True if the key is new."""
        if key in self.keys:
            self.keys.move_to_end(key)
            return False
        self.keys[key] = None
        if len(self.keys) > self.limit:
            self.keys.popitem(last=False)
        return True


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--binding", default="events.#", help="routing key pattern, events.{type}.{version}")
    ap.add_argument("--expect", type=int, default=0, help="exit after this many distinct events")
    ap.add_argument("--linger", type=float, default=2.0, help="seconds to wait for duplicates then")
    args = ap.parse_args()

    conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    ch = conn.channel()
    ch.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)  # as postbox declares it
    if QUEUE:
        queue = ch.queue_declare(QUEUE, durable=True, arguments={"x-queue-type": "quorum"}).method.queue
    else:
        queue = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(queue, EXCHANGE, routing_key=args.binding)
    ch.basic_qos(prefetch_count=100)
    print(f"ready: queue {queue} bound to {EXCHANGE} with {args.binding}", flush=True)

    seen, handled, dropped = Seen(), [], []
    done_at = None
    for method, props, body in ch.consume(queue, inactivity_timeout=0.2):
        if method is not None:
            headers = props.headers or {}
            source = headers.get("ce-source", b"")
            source = source.decode() if isinstance(source, bytes) else str(source)
            if seen.add((source, props.message_id)):
                event = json.loads(body)  # structured CloudEvent: attributes and data
                print(f"event {props.message_id} {event['type']} {json.dumps(event.get('data'))}", flush=True)
                handled.append(props.message_id)
            else:
                print(f"duplicate {props.message_id} from {source}: dropped", flush=True)
                dropped.append(props.message_id)
            ch.basic_ack(method.delivery_tag)  # ack after handling: at-least-once
        if args.expect and done_at is None and len(handled) >= args.expect:
            done_at = time.monotonic() + args.linger
        if done_at is not None and time.monotonic() >= done_at:
            break
    print("summary " + json.dumps({"events": handled, "deduplicated": dropped}), flush=True)
    ch.cancel()
    conn.close()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(0)
