"""Runs examples/producer.py and examples/consumer.py against postbox, with timeouts.

The producer sends N events plus one duplicate id (postbox answers it as a replay and publishes
nothing new). To show the consumer's own deduplication, the test then publishes one more copy
of an event straight to the exchange, as a relay redelivery after a lost confirm would; the
consumer must report it as deduplicated.
"""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
from pathlib import Path

import pika

from conftest import AMQP_URL, EXCHANGE, POSTBOX_URL

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
N = 3


def _reader(stream, lines: queue.Queue) -> None:
    for line in stream:
        lines.put(line.rstrip("\n"))
    lines.put(None)


def test_python_examples(run_id: str) -> None:
    env = {
        **os.environ,
        "POSTBOX_URL": POSTBOX_URL,
        "POSTBOX_AMQP_URL": AMQP_URL,
        "POSTBOX_EXCHANGE": EXCHANGE,
    }
    consumer = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "consumer.py"), "--binding", "events.order.paid.#",
         "--expect", str(N), "--linger", "3"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines: queue.Queue = queue.Queue()
    threading.Thread(target=_reader, args=(consumer.stdout, lines), daemon=True).start()
    out: list[str] = []
    try:
        first = lines.get(timeout=20)
        out.append(first)
        assert first and first.startswith("ready"), f"consumer did not start: {first}"

        prefix = f"py-example-{run_id}"
        prod = subprocess.run(
            [sys.executable, str(EXAMPLES / "producer.py"), str(N), prefix],
            env=env, capture_output=True, text=True, timeout=60,
        )
        print(prod.stdout, prod.stderr)
        assert prod.returncode == 0, prod.stdout + prod.stderr
        sent = [l for l in prod.stdout.splitlines() if l.startswith("sent ")]
        replayed = [l for l in prod.stdout.splitlines() if l.startswith("replayed ")]
        assert len(sent) == N and len(replayed) == 1, prod.stdout
        assert replayed[0].startswith(f"replayed {prefix}-0 -> 202")

        # A redelivery of event 0, as the relay would send after a lost publisher confirm.
        dup_id = f"{prefix}-0"
        conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        conn.channel().basic_publish(
            EXCHANGE,
            "events.order.paid.v1",
            json.dumps({"specversion": "1.0", "id": dup_id, "source": "/examples/producer-py",
                        "type": "order.paid", "data": {"order_id": "o-0", "amount": 10, "currency": "EUR"}}),
            pika.BasicProperties(message_id=dup_id, content_type="application/cloudevents+json",
                                 headers={"ce-source": "/examples/producer-py", "ce-id": dup_id}),
        )
        conn.close()

        rc = consumer.wait(timeout=60)
        while (line := lines.get(timeout=5)) is not None:
            out.append(line)
    finally:
        if consumer.poll() is None:
            consumer.kill()
        print("\n".join(out))
    assert rc == 0
    summary = json.loads(next(l for l in out if l.startswith("summary "))[len("summary "):])
    assert sorted(summary["events"]) == sorted(f"{prefix}-{i}" for i in range(N))
    assert summary["deduplicated"] == [dup_id]
