"""Shared fixtures: where postbox and RabbitMQ are, and a consumer bound to postbox's exchange.

Environment (scripts/client-tests.sh sets all of them):
  POSTBOX_URL       base URL of a running postbox   (default http://127.0.0.1:8080)
  POSTBOX_AMQP_URL  RabbitMQ the relay publishes to (default amqp://guest:guest@127.0.0.1:5672/%2f)
  POSTBOX_EXCHANGE  the relay's topic exchange      (default events)
"""

from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

import pika
import pytest

POSTBOX_URL = os.environ.get("POSTBOX_URL", "http://127.0.0.1:8080").rstrip("/")
AMQP_URL = os.environ.get("POSTBOX_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
EXCHANGE = os.environ.get("POSTBOX_EXCHANGE", "events")


@dataclass
class Delivery:
    routing_key: str
    properties: pika.BasicProperties
    body: bytes

    @property
    def headers(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for k, v in (self.properties.headers or {}).items():
            out[k] = v.decode() if isinstance(v, bytes) else str(v)
        return out


class Consumer:
    """An exclusive queue bound to the exchange with `events.#`; collects messages by id."""

    def __init__(self) -> None:
        self.conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        self.ch = self.conn.channel()
        # Same arguments as postbox's own declaration (durable topic), so whoever comes first wins.
        self.ch.exchange_declare(EXCHANGE, exchange_type="topic", durable=True)
        q = self.ch.queue_declare("", exclusive=True, auto_delete=True)
        self.queue = q.method.queue
        self.ch.queue_bind(self.queue, EXCHANGE, routing_key="events.#")
        self.by_id: dict[str, list[Delivery]] = {}
        self._gen = self.ch.consume(self.queue, auto_ack=True, inactivity_timeout=0.2)

    def _drain(self, seconds: float) -> None:
        """Collect deliveries for up to `seconds` (one long-lived consumer, never cancelled,
        so nothing buffered client-side is lost)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            method, props, body = next(self._gen)
            if method is not None:
                d = Delivery(method.routing_key, props, body)
                self.by_id.setdefault(props.message_id or "", []).append(d)

    def wait_for(self, ids: list[str], timeout: float = 30.0) -> dict[str, Delivery]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(i in self.by_id for i in ids):
                break
            self._drain(0.5)
        missing = [i for i in ids if i not in self.by_id]
        assert not missing, f"no AMQP message with message_id {missing} within {timeout}s"
        return {i: self.by_id[i][0] for i in ids}

    def count(self, message_id: str, settle: float = 1.5) -> int:
        """How many messages carried this id, after letting the relay settle."""
        self._drain(settle)
        return len(self.by_id.get(message_id, []))

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # noqa: BLE001 - best effort at teardown
            pass


@pytest.fixture(scope="session")
def consumer() -> Any:
    c = Consumer()
    yield c
    c.close()


@pytest.fixture
def run_id() -> str:
    """Unique per test, so reruns against the same outbox never collide with earlier ids."""
    return uuid.uuid4().hex[:12]
