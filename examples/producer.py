#!/usr/bin/env python3
"""Send events to postbox with nothing but the standard library.

    POSTBOX_URL=http://127.0.0.1:8080 python3 examples/producer.py [COUNT] [ID_PREFIX]

Sends COUNT `order.paid` v1 events in postbox's native envelope, each with its own id, then
sends the first one again: postbox answers 202 with `Idempotent-Replayed: true` and does not
store or publish it a second time. Exits non-zero if postbox does not accept an event.
"""

import json
import os
import sys
import time
import urllib.error
import urllib.request

URL = os.environ.get("POSTBOX_URL", "http://127.0.0.1:8080").rstrip("/") + "/v1/events"
SOURCE = "/examples/producer-py"


def send(event: dict) -> tuple[int, dict, dict]:
    req = urllib.request.Request(
        URL,
        data=json.dumps(event).encode(),
        headers={"content-type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, dict(resp.headers), json.load(resp)
    except urllib.error.HTTPError as e:  # 4xx/5xx: a problem+json document
        return e.code, dict(e.headers), json.load(e)


def main() -> int:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 3
    prefix = sys.argv[2] if len(sys.argv) > 2 else f"order-{int(time.time())}"
    events = [
        {
            "type": "order.paid",
            "version": "v1",
            "id": f"{prefix}-{i}",  # your id makes retries safe: (source, id) is the idempotency key
            "source": SOURCE,
            "data": {"order_id": f"o-{i}", "amount": 10 + i, "currency": "EUR"},
        }
        for i in range(count)
    ]
    for event in events + [events[0]]:  # the last one is a duplicate id, e.g. a client retry
        status, headers, body = send(event)
        replayed = {k.lower(): v for k, v in headers.items()}.get("idempotent-replayed") == "true"
        print(f"{'replayed' if replayed else 'sent'} {event['id']} -> {status} {json.dumps(body)}")
        if status != 202:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
