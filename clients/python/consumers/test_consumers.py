"""The consumer contract, proved against the real NATS JetStream, RabbitMQ and Redis, for each
example consumer in examples/consumers/ (NATS and RabbitMQ, Python and Node):

- a handler that fails twice then succeeds runs the side effect once (failed=2, processed=1);
- a handler that always fails ends in the dead-letter stream / queue after exactly the
  broker's limit of deliveries, and the replay helper brings the event back to a fixed
  consumer, which processes it once;
- duplicates (a republish, JetStream's duplicate window, a different Nats-Msg-Id, the same id
  from another source) are processed once per (source, id);
- a claim left by a crashed worker delays the event by its lease but does not lose it;
- a message that is not an event is dead-lettered at once.

Counters are read from each consumer's /metrics; the side effect from the handler's --record
file; the delivery numbers come from the broker (NATS metadata, x-delivery-count).

Run by scripts/consumer-tests.sh (which also sweeps leftovers); see harness.py.
"""

from __future__ import annotations

import json
import time
import uuid

import pika
import pytest

from harness import (
    AmqpBed, ConsumerProc, NatsBed, TYPE, cloudevent, dedupe_key, delete_keys, redis_client, run_example,
    wait_until,
)

SETTLE = 1.2  # s: several retry delays (0.3 s); a stray redelivery would show up within it

KINDS = [("nats", "python"), ("nats", "node"), ("rabbitmq", "python"), ("rabbitmq", "node")]


@pytest.fixture(params=KINDS, ids=lambda k: f"{k[0]}-{k[1]}")
def kind(request):
    return request.param


@pytest.fixture
def r():
    client = redis_client()
    yield client
    client.close()


@pytest.fixture
def bed(kind, r):
    broker, lang = kind
    # The Python runs' streams allow direct get and the Node runs' do not, so the replay
    # helper is exercised on both of its ways to fetch a message by sequence.
    b = NatsBed(allow_direct=(lang == "python")) if broker == "nats" else AmqpBed()
    yield b
    try:
        b.close()
    finally:
        delete_keys(r, f"processed:{b.consumer}:*")


@pytest.fixture
def start(kind, bed, tmp_path):
    procs: list[ConsumerProc] = []

    def _start(handler: str) -> ConsumerProc:
        p = ConsumerProc(kind[1], bed, handler, tmp_path)
        procs.append(p)
        return p

    yield _start
    for p in procs:
        p.stop()


def new_event(bed, n: int = 1, source: str | None = None) -> dict:
    return cloudevent(source or f"/tests/consumers/{bed.name}", f"order-{uuid.uuid4().hex[:8]}",
                      {"order_id": f"o-{n}", "amount": 10 * n, "currency": "EUR"})


def calls_of(proc: ConsumerProc) -> list[tuple]:
    return [(c["source"], c["id"], c["delivery"], c["result"]) for c in proc.calls()]


def test_transient_failure_is_processed_once(bed, start, r):
    c = start("fail-twice")
    ev = new_event(bed)
    bed.publish(ev)
    wait_until(lambda: c.counts().get("processed") == 1, what="processed=1")
    time.sleep(SETTLE)

    assert c.counts() == {"failed": 2, "processed": 1}
    s, i = ev["source"], ev["id"]
    # Three deliveries by the broker (not a loop in the consumer), the side effect in the last.
    assert calls_of(c) == [(s, i, 1, "error"), (s, i, 2, "error"), (s, i, 3, "ok")]
    key = dedupe_key(bed.consumer, s, i)
    assert r.get(key) == "done"
    assert 0 < r.ttl(key) <= 600
    wait_until(bed.settled, what="nothing pending or unacked")
    assert bed.dead_letters() == []

    # The topology the example declared.
    if bed.broker == "nats":
        ci = bed.consumer_info().config
        assert (ci.durable_name, ci.filter_subject, ci.max_deliver, ci.ack_wait, ci.ack_policy) == \
            (bed.consumer, f"{bed.prefix}.>", 3, 10.0, "explicit")
        dlq = bed.run(bed.jsm.stream_info(bed.dlq)).config
        assert sorted(dlq.subjects) == sorted(
            f"$JS.EVENT.ADVISORY.CONSUMER.{a}.{bed.stream}.{bed.consumer}" for a in ("MAX_DELIVERIES", "MSG_TERMINATED"))
    else:
        bed.declare_as_postbox(3)  # what postbox's [[queues]] declares: accepted as the same queue
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as e:
            bed.declare_as_postbox(5)
        assert e.value.reply_code == 406
    assert c.stop() == 0


def test_poison_event_is_dead_lettered_then_replayed(bed, start, r):
    c = start("always-fail")
    ev = new_event(bed)
    ack = bed.publish(ev)
    wait_until(bed.dead_letters, what="a dead letter")
    time.sleep(SETTLE)

    n = bed.max_deliveries  # NATS: max_deliver 3; RabbitMQ: x-delivery-limit 3 = 3 returns, 4 deliveries
    s, i = ev["source"], ev["id"]
    assert calls_of(c) == [(s, i, d, "error") for d in range(1, n + 1)]
    assert c.counts() == {"failed": n - 1, "dead": 1}
    dead = bed.dead_letters()
    assert len(dead) == 1
    if bed.broker == "nats":
        subject, adv = dead[0]
        assert subject == f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{bed.stream}.{bed.consumer}"
        assert (adv["stream"], adv["consumer"], adv["stream_seq"], adv["deliveries"]) == \
            (bed.stream, bed.consumer, ack.seq, 3)
        listed = run_example("nats", "dead", *bed.admin_args())
        assert listed.returncode == 0
        assert f"stream_seq={ack.seq} deliveries=3" in listed.stdout and i in listed.stdout
    else:
        props, payload = dead[0]
        assert props.message_id == i and json.loads(payload) == ev
        assert props.headers["ce-id"] == i and props.headers["ce-source"] == s
        death = props.headers["x-death"][0]
        assert (death["reason"], death["queue"]) == ("delivery_limit", bed.queue)
    assert r.get(dedupe_key(bed.consumer, s, i)) is None  # every failure released its claim
    assert c.stop() == 0

    # The handler is fixed and redeployed; the operator replays what was dead-lettered.
    fixed = start("succeed")
    replayed = run_example(bed.broker, "replay", *bed.admin_args())
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "replayed 1" in replayed.stdout
    wait_until(lambda: fixed.counts().get("processed") == 1, what="the replayed event processed")
    time.sleep(SETTLE)
    assert fixed.counts() == {"processed": 1}
    assert calls_of(fixed) == [(s, i, 1, "ok")]
    assert bed.dead_letters() == []
    assert r.get(dedupe_key(bed.consumer, s, i)) == "done"
    if bed.broker == "nats":
        again = bed.get(ack.seq + 1)  # the replay: same body and CloudEvents headers, new seq
        assert again.data == bed.get(ack.seq).data
        assert again.headers["ce-id"] == i and again.headers["replay-of"] == f"{bed.stream}/{ack.seq}"
    wait_until(bed.settled, what="nothing pending or unacked")


def test_duplicates_are_processed_once(bed, start):
    c = start("succeed")
    ev = new_event(bed)
    same_id_other_source = dict(ev, source=ev["source"] + "/other")
    first = bed.publish(ev)
    wait_until(lambda: c.counts().get("processed") == 1, what="processed=1")

    if bed.broker == "nats":
        # Same Nats-Msg-Id inside the duplicate window: JetStream drops it, nothing is stored.
        inside = bed.publish(ev)
        assert inside.duplicate and inside.seq == first.seq
        # Outside the window (1 s on this stream), and with another Nats-Msg-Id: both stored,
        # both delivered, and the Redis dedupe acks them without running the handler.
        time.sleep(1.5)
        # (the server forgets ids on a timer: allow it a little longer than the window)
        outside = wait_until(lambda: (a := bed.publish(ev)) and not a.duplicate and a, timeout=3,
                             what="JetStream to forget the Nats-Msg-Id", every=0.25)
        assert outside.seq > first.seq
        other_id = bed.publish(ev, nats_msg_id=f"another-{uuid.uuid4().hex}")
        assert not other_id.duplicate and other_id.seq > outside.seq
        expected_dups = 2
    else:
        bed.publish(ev)  # a republish (the relay after a lost confirm)
        expected_dups = 1
    wait_until(lambda: c.counts().get("duplicate") == expected_dups, what=f"duplicate={expected_dups}")
    bed.publish(same_id_other_source)  # same id, another source: another event
    wait_until(lambda: c.counts().get("processed") == 2, what="processed=2")
    time.sleep(SETTLE)

    assert c.counts() == {"processed": 2, "duplicate": expected_dups}
    assert sorted(calls_of(c)) == sorted([(ev["source"], ev["id"], 1, "ok"),
                                          (same_id_other_source["source"], ev["id"], 1, "ok")])
    if bed.broker == "nats":
        assert bed.stream_messages() == 4  # first, outside, other_id, other source
    wait_until(bed.settled, what="nothing pending or unacked")


def test_claim_of_a_crashed_worker_delays_but_does_not_lose(bed, start, r):
    c = start("succeed")
    ev = new_event(bed)
    key = dedupe_key(bed.consumer, ev["source"], ev["id"])
    # A worker claimed the event and died: its claim lives out its lease (1.5 s here).
    r.set(key, "processing:crashed-worker", px=1500)
    t0 = time.monotonic()
    bed.publish(ev)
    wait_until(lambda: c.counts().get("processed") == 1, what="processed=1")
    elapsed = time.monotonic() - t0
    time.sleep(SETTLE)

    assert c.counts() == {"busy": 1, "processed": 1}
    assert calls_of(c) == [(ev["source"], ev["id"], 2, "ok")]  # the 1st delivery waited for the lease
    assert elapsed >= 1.3, elapsed
    assert r.get(key) == "done"
    wait_until(bed.settled, what="nothing pending or unacked")


def test_not_an_event_is_dead_lettered_at_once(bed, start):
    c = start("succeed")
    bed.publish_raw(b"{not json")
    wait_until(bed.dead_letters, what="a dead letter")
    time.sleep(SETTLE)

    assert c.counts("unknown") == {"dead": 1}
    assert c.calls() == []  # the handler never saw it
    dead = bed.dead_letters()
    assert len(dead) == 1
    if bed.broker == "nats":
        subject, adv = dead[0]
        assert subject == f"$JS.EVENT.ADVISORY.CONSUMER.MSG_TERMINATED.{bed.stream}.{bed.consumer}"
        assert adv["deliveries"] == 1
    else:
        props, payload = dead[0]
        assert payload == b"{not json" and props.headers["x-death"][0]["reason"] == "rejected"
    assert TYPE not in {t for t, _ in c.metrics()}
