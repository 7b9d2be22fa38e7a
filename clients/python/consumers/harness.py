"""Test harness for the example consumers (examples/consumers/): the publisher, the brokers'
test topologies ("beds"), the consumer processes, and reading /metrics.

The publisher is what postbox puts on the wire, built here until postbox's NATS sink lands:
`NatsBed.publish` / `AmqpBed.publish` (with `cloudevent` and `ce_headers`) are the only places
that know the message shape, so pointing the tests at postbox means replacing those two
methods with a POST of the same CloudEvent to /v1/events (returning, for NATS, the stream
sequence the tests compare with the dead-letter advisory).

Every name a test creates starts with `ct{RUN}` (RUN: $CONSUMER_TESTS_RUN, set by
scripts/consumer-tests.sh, or random), and each bed deletes what it made; the script sweeps
that prefix again at exit in case a test was killed.

Environment: NATS_URL (nats://127.0.0.1:4222), REDIS_URL (redis://127.0.0.1:6379/0),
POSTBOX_AMQP_URL (amqp://guest:guest@127.0.0.1:5672/%2f), NODE (node).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import nats
import pika
import redis
import requests
from nats.js.api import RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parents[3]
EXAMPLES = ROOT / "examples" / "consumers"
NODE_DIR = ROOT / "clients" / "node"
NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
REDIS_URL = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
AMQP_URL = os.environ.get("POSTBOX_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
NODE = os.environ.get("NODE", "node")
RUN = os.environ.get("CONSUMER_TESTS_RUN") or uuid.uuid4().hex[:6]
PREFIX = f"ct{RUN}"
TYPE = "order.paid.v1"


def new_name() -> str:
    """A unique name for one test: valid as a NATS stream/consumer name, subject token and
    AMQP queue/exchange name."""
    return f"{PREFIX}_{uuid.uuid4().hex[:8]}"


def wait_until(cond: Callable[[], Any], timeout: float = 20.0, what: str = "condition", every: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(every)


# --- what postbox publishes -------------------------------------------------------------------

def cloudevent(source: str, event_id: str, data: Any, type_: str = TYPE) -> dict[str, Any]:
    """A structured-mode CloudEvent, as postbox builds it."""
    return {"specversion": "1.0", "id": event_id, "source": source, "type": type_,
            "time": datetime.now(timezone.utc).isoformat().replace("+00:00", "Z"),
            "datacontenttype": "application/json", "data": data}


def ce_headers(event: dict[str, Any]) -> dict[str, str]:
    """content-type plus every CloudEvents attribute (not data) as a ce-* header."""
    h = {"content-type": "application/cloudevents+json"}
    h.update({f"ce-{k}": str(v) for k, v in event.items() if k != "data"})
    return h


def msg_id(event: dict[str, Any]) -> str:
    """Nats-Msg-Id: stable and unique per (source, id). (postbox's sink chooses its own form;
    the consumers do not read it.)"""
    return hashlib.sha256(f"{event['source']}\0{event['id']}".encode()).hexdigest()


def subject(prefix: str, event: dict[str, Any]) -> str:
    return f"{prefix}.{event['type']}"  # events.order.paid.v1


def body(event: dict[str, Any]) -> bytes:
    return json.dumps(event, separators=(",", ":")).encode()


# --- Redis ------------------------------------------------------------------------------------

def dedupe_key(consumer: str, source: str, event_id: str) -> str:
    """The key the examples use (exactly_once.py / .mjs), built independently here so a
    mismatch between the Python and Node examples fails the tests."""
    return f"processed:{consumer}:" + json.dumps([source, event_id], separators=(",", ":"), ensure_ascii=False)


def redis_client() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL, decode_responses=True)


def delete_keys(r: redis.Redis, pattern: str) -> int:
    keys = list(r.scan_iter(match=pattern, count=500))
    return r.delete(*keys) if keys else 0


# --- beds: one test's topology on one broker --------------------------------------------------

class NatsBed:
    """A stream created as postbox creates it (but with subjects {name}.> so it cannot overlap
    another stream on this server, and a 1 s duplicate window so a test can step out of it),
    the name the consumer will use, and the dead-letter stream it will declare."""

    broker = "nats"

    def __init__(self, *, allow_direct: bool = True, duplicate_window: float = 1.0) -> None:
        self.name = new_name()
        self.stream = self.consumer = self.prefix = self.name
        self.dlq = f"{self.stream}_{self.consumer}_DLQ"
        self.max_deliver = 3
        self.max_deliveries = 3  # deliveries before the server gives up
        self.loop = asyncio.new_event_loop()
        self.nc = self.run(nats.connect(NATS_URL))
        self.js, self.jsm = self.nc.jetstream(), self.nc.jsm()
        self.run(self.jsm.add_stream(StreamConfig(
            name=self.stream, subjects=[f"{self.prefix}.>"], retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE, duplicate_window=duplicate_window, allow_direct=allow_direct)))

    def run(self, coro):
        return self.loop.run_until_complete(coro)

    def consumer_args(self) -> list[str]:
        return ["--url", NATS_URL, "--stream", self.stream, "--consumer", self.consumer, "--prefix", self.prefix,
                "--max-deliver", str(self.max_deliver), "--ack-wait", "10"]

    def admin_args(self) -> list[str]:
        """For the example's `dead` and `replay` commands."""
        return ["--url", NATS_URL, "--stream", self.stream, "--consumer", self.consumer]

    def publish_raw(self, payload: bytes) -> None:
        self.run(self.js.publish(f"{self.prefix}.junk.v1", payload, stream=self.stream))

    def publish(self, event: dict[str, Any], *, nats_msg_id: str | None = None):
        """Publish as postbox's NATS sink does; returns the PubAck (seq, duplicate)."""
        headers = ce_headers(event)
        headers["traceparent"] = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
        headers["Nats-Msg-Id"] = nats_msg_id or msg_id(event)
        return self.run(self.js.publish(subject(self.prefix, event), body(event), headers=headers, stream=self.stream))

    def stream_messages(self) -> int:
        return self.run(self.jsm.stream_info(self.stream)).state.messages

    def get(self, seq: int):
        return self.run(self.jsm.get_msg(self.stream, seq))

    def consumer_info(self):
        return self.run(self.jsm.consumer_info(self.stream, self.consumer))

    def dead_letters(self) -> list[tuple[str, dict[str, Any]]]:
        """(subject, advisory JSON) of every message in the dead-letter stream."""
        try:
            state = self.run(self.jsm.stream_info(self.dlq)).state
        except NotFoundError:
            return []
        out = []
        for seq in (range(state.first_seq, state.last_seq + 1) if state.messages else ()):
            try:
                m = self.run(self.jsm.get_msg(self.dlq, seq))
            except NotFoundError:
                continue
            out.append((m.subject, json.loads(m.data)))
        return out

    def settled(self) -> bool:
        """Nothing waiting for this consumer and nothing unacked."""
        ci = self.consumer_info()
        return ci.num_pending == 0 and ci.num_ack_pending == 0

    def close(self) -> None:
        for s in (self.stream, self.dlq):
            try:
                self.run(self.jsm.delete_stream(s))
            except NotFoundError:
                pass
        self.run(self.nc.close())
        self.loop.close()


class AmqpBed:
    """A unique topic exchange standing in for postbox's `events` exchange; the consumer
    declares its quorum queue, DLX and DLQ on it."""

    broker = "rabbitmq"

    def __init__(self) -> None:
        self.name = new_name()
        self.exchange = self.queue = self.consumer = self.name
        self.dlx, self.dlq = f"{self.exchange}.dlx", f"{self.queue}.dlq"
        self.delivery_limit = 3
        self.max_deliveries = self.delivery_limit + 1  # x-delivery-limit counts returns
        self.conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
        self.ch = self.conn.channel()
        self.ch.confirm_delivery()
        self.ch.exchange_declare(self.exchange, exchange_type="topic", durable=True)

    def consumer_args(self) -> list[str]:
        return ["--url", AMQP_URL, "--exchange", self.exchange, "--queue", self.queue,
                "--binding", "events.#", "--delivery-limit", str(self.delivery_limit)]

    def admin_args(self) -> list[str]:
        """For the example's `replay` command."""
        return ["--url", AMQP_URL, "--exchange", self.exchange, "--queue", self.queue]

    def publish_raw(self, payload: bytes) -> None:
        self.ch.basic_publish(self.exchange, "events.junk.v1", payload, mandatory=True)

    def publish(self, event: dict[str, Any]) -> None:
        """Publish as postbox's relay does (mandatory, confirmed: it must reach the queue)."""
        headers = ce_headers(event)
        del headers["content-type"]
        headers["traceparent"] = f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01"
        self.ch.basic_publish(
            self.exchange, subject("events", event), body(event),
            pika.BasicProperties(message_id=event["id"], content_type="application/cloudevents+json",
                                 delivery_mode=2, type=event["type"], timestamp=int(time.time()), headers=headers),
            mandatory=True)

    def count(self, queue_name: str) -> int:
        return self.ch.queue_declare(queue_name, passive=True).method.message_count

    def dead_letters(self) -> list[tuple[pika.BasicProperties, bytes]]:
        """Every message in the DLQ (looked at, then put back)."""
        out, tags = [], []
        while True:
            method, props, payload = self.ch.basic_get(self.dlq)
            if method is None:
                break
            out.append((props, payload))
            tags.append(method.delivery_tag)
        for t in tags:
            self.ch.basic_nack(t, requeue=True)
        return out

    def declare_as_postbox(self, delivery_limit: int) -> None:
        """queue.declare with the arguments postbox's `[[queues]]` gives this queue
        (src/relay/topology.rs); RabbitMQ refuses (406) if they differ from the queue's."""
        ch = self.conn.channel()
        try:
            ch.queue_declare(self.queue, durable=True, arguments={
                "x-queue-type": "quorum", "x-delivery-limit": delivery_limit,
                "x-dead-letter-exchange": self.dlx, "x-dead-letter-routing-key": self.dlq})
        finally:
            if ch.is_open:
                ch.close()

    def settled(self) -> bool:
        return self.count(self.queue) == 0

    def close(self) -> None:
        try:
            ch = self.conn.channel() if self.conn.is_open else None
        except Exception:  # noqa: BLE001
            ch = None
        if ch is None:
            self.conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
            ch = self.conn.channel()
        for q in (self.queue, self.dlq):
            ch.queue_delete(q)
        for x in (self.exchange, self.dlx):
            ch.exchange_delete(x)
        self.conn.close()


# --- consumer processes -----------------------------------------------------------------------

class ConsumerProc:
    """One example consumer as a child process: waits for its `ready` line, keeps its output."""

    def __init__(self, lang: str, bed: NatsBed | AmqpBed, handler: str, tmp: Path, *extra: str) -> None:
        self.lang, self.bed = lang, bed
        self.record = tmp / f"calls-{uuid.uuid4().hex[:6]}.jsonl"
        self.record.touch()
        args = [*bed.consumer_args(), "--redis", REDIS_URL, "--handler", handler, "--record", str(self.record),
                "--metrics-port", "0", "--retry-delay", "0.3", "--lease", "10", "--done-ttl", "600", *extra]
        script = f"{bed.broker}_consumer"
        self.rundir: Path | None = None
        if lang == "python":
            cmd = [sys.executable, str(EXAMPLES / f"{script}.py"), "run", *args]
        else:
            # The .mjs imports nats/amqplib/ioredis/prom-client: run a copy from inside
            # clients/node so they resolve from its node_modules (as the client tests do).
            self.rundir = NODE_DIR / f".run-{PREFIX}-{uuid.uuid4().hex[:8]}"
            self.rundir.mkdir()
            for f in (f"{script}.mjs", "exactly_once.mjs"):
                shutil.copy(EXAMPLES / f, self.rundir / f)
            cmd = [NODE, str(self.rundir / f"{script}.mjs"), *args]
        self.lines: list[str] = []
        # Same process group as pytest: when scripts/consumer-tests.sh's `timeout` fires, it
        # signals the whole group, so no consumer outlives a killed run.
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        threading.Thread(target=self._read, daemon=True).start()
        try:
            ready = self.wait_line(lambda l: l.startswith("ready "), 30)
        except AssertionError:
            self.stop()
            raise
        self.metrics_url = re.search(r"metrics=(\S+)", ready).group(1)

    def _read(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            self.lines.append(line)
            print(f"[{self.lang} {self.bed.broker}] {line}", flush=True)
        self.lines.append("<exited>")

    def wait_line(self, pred: Callable[[str], bool], timeout: float = 20) -> str:
        def found() -> str | None:
            for l in list(self.lines):
                if l == "<exited>":
                    raise AssertionError(f"consumer exited (rc {self.proc.poll()}): " + " | ".join(self.lines[-20:]))
                if pred(l):
                    return l
            return None
        return wait_until(found, timeout, "a consumer line")

    def metrics(self) -> dict[tuple[str, str], float]:
        """event_processed_total as {(type, status): value}, read from /metrics."""
        text = requests.get(self.metrics_url, timeout=5).text
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                if s.name == "event_processed_total":
                    out[(s.labels["type"], s.labels["status"])] = s.value
        return out

    def counts(self, type_: str = TYPE) -> dict[str, float]:
        """The nonzero statuses of one type, e.g. {"failed": 2.0, "processed": 1.0}."""
        return {st: v for (t, st), v in self.metrics().items() if t == type_ and v}

    def calls(self) -> list[dict[str, Any]]:
        """The handler's invocations, from its --record file."""
        return [json.loads(l) for l in self.record.read_text().splitlines() if l.strip()]

    def stop(self, timeout: float = 15) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.rundir:
            shutil.rmtree(self.rundir, ignore_errors=True)
        return self.proc.returncode


def run_example(broker: str, command: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run a Python example's helper command (declare, dead, replay)."""
    p = subprocess.run([sys.executable, str(EXAMPLES / f"{broker}_consumer.py"), command, *args],
                       capture_output=True, text=True, timeout=timeout)
    print(p.stdout, p.stderr, flush=True)
    return p


# --- sweeping a run's leftovers (scripts/consumer-tests.sh calls this at exit) ----------------

def sweep(prefix: str = PREFIX) -> None:
    async def nats_sweep() -> None:
        nc = await nats.connect(NATS_URL)
        jsm = nc.jsm()
        names, offset = [], 0
        while page := await jsm.streams_info(offset):
            names += [si.config.name for si in page]
            offset += len(page)
        for name in names:
            if name.startswith(prefix):
                await jsm.delete_stream(name)
                print(f"swept stream {name}")
        await nc.close()

    try:
        asyncio.run(nats_sweep())
    except Exception as e:  # noqa: BLE001
        print(f"sweep NATS: {e!r}")
    try:
        n = delete_keys(redis_client(), f"processed:{prefix}*")
        if n:
            print(f"swept {n} Redis keys")
    except Exception as e:  # noqa: BLE001
        print(f"sweep Redis: {e!r}")
    # RabbitMQ cannot list queues over AMQP: ask rabbitmqctl when it is here.
    if shutil.which("rabbitmqctl"):
        for what in ("queues", "exchanges"):
            out = subprocess.run(["rabbitmqctl", "-q", f"list_{what}", "name"], capture_output=True, text=True,
                                 timeout=60).stdout.split()
            names = [n for n in out if n.startswith(prefix)]
            if names:
                conn = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
                ch = conn.channel()
                for n in names:
                    (ch.queue_delete if what == "queues" else ch.exchange_delete)(n)
                    print(f"swept {what[:-1]} {n}")
                conn.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["sweep"]:
        sweep(sys.argv[2] if len(sys.argv) > 2 else PREFIX)
