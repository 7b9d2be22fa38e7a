#!/usr/bin/env python3
"""Consume postbox's events from NATS JetStream with nats-py, processing each event once.

    pip install nats-py redis prometheus-client       # versions: clients/python/requirements.txt
    python3 examples/consumers/nats_consumer.py run --consumer billing --filter 'events.order.paid.>'
    python3 examples/consumers/nats_consumer.py dead --consumer billing      # what it gave up on
    python3 examples/consumers/nats_consumer.py replay --consumer billing [--seq N ...]

Needs NATS >= 2.9 with JetStream and Redis >= 7.0. exactly_once.py (beside this file) explains
the claim-then-mark-done dedupe, the demo handlers (--handler) and the metric
event_processed_total{type,status} served on --metrics-port.

Topology, declared by `run` and `declare` (postbox will declare it from its config file; what
exists already is left as it is):
- the stream (--stream, default EVENTS), created with subjects `{prefix}.>` only if missing,
  as postbox creates it;
- a durable pull consumer (--consumer) with filter_subject (--filter, default `{prefix}.>`),
  explicit acks, max_deliver (--max-deliver, default 3), ack_wait (--ack-wait) and optional
  backoff (--backoff 1,5,30: redelivery delays after ack_wait timeouts, i.e. after a crash;
  needs max_deliver > its length; on NATS 2.9 it also stretches a NakWithDelay to about
  backoff[0], see docs/consumers.md). Failed handlers are redelivered with NakWithDelay;
- a dead-letter stream (--dlq-stream, default `{stream}_{consumer}_DLQ`) capturing
  `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{stream}.{consumer}` (the server gave up after
  max_deliver deliveries) and `...MSG_TERMINATED.{stream}.{consumer}` (the consumer terminated
  a message that is not an event). An advisory is JSON holding `stream_seq` and `deliveries`;
  the message itself stays in the event stream (as long as its retention keeps it).

`dead` lists the advisories with the events they point at; `replay` fetches each event from
the stream by sequence (direct get when the stream allows it, else STREAM.MSG.GET),
republishes it to its subject with a fresh Nats-Msg-Id (so JetStream does not drop it as a
duplicate of the original) and a `replay-of: {stream}/{seq}` header, then deletes the
advisory. Fix the handler first: the replayed event is a new message with a fresh
max_deliver, and the Redis dedupe still applies (an event that was in fact done is skipped).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import nats
import redis.asyncio as aioredis
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from exactly_once import (  # noqa: E402
    AsyncDedupe, Handlers, NotAnEvent, Verdict, add_common_args, aprocess, count, dedupe_key, fail,
    parse_event, serve_metrics,
)

ADVISORIES = ("MAX_DELIVERIES", "MSG_TERMINATED")


def dlq_name(args: argparse.Namespace) -> str:
    return args.dlq_stream or f"{args.stream}_{args.consumer}_DLQ"


async def declare(jsm, args: argparse.Namespace) -> ConsumerConfig:
    """Create what is missing; return the consumer's config as the server has it.

    Only fields that NATS 2.9 knows are sent: 2.9 silently ignores unknown ones (a newer
    client's `filter_subjects` would leave a consumer without any filter)."""
    try:
        await jsm.stream_info(args.stream)
    except NotFoundError:
        await jsm.add_stream(StreamConfig(
            name=args.stream, subjects=[f"{args.prefix}.>"], retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE, duplicate_window=120.0))
        print(f"created stream {args.stream} with subjects {args.prefix}.>", flush=True)
    dlq = dlq_name(args)
    try:
        await jsm.stream_info(dlq)
    except NotFoundError:
        await jsm.add_stream(StreamConfig(
            name=dlq, retention=RetentionPolicy.LIMITS, storage=StorageType.FILE,
            subjects=[f"$JS.EVENT.ADVISORY.CONSUMER.{a}.{args.stream}.{args.consumer}" for a in ADVISORIES]))
        print(f"created dead-letter stream {dlq}", flush=True)
    backoff = [float(s) for s in args.backoff.split(",")] if args.backoff else None
    info = await jsm.add_consumer(args.stream, ConsumerConfig(
        durable_name=args.consumer, ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
        filter_subject=args.filter or f"{args.prefix}.>", max_deliver=args.max_deliver,
        ack_wait=args.ack_wait, backoff=backoff, max_ack_pending=args.batch * 10))
    return info.config


async def handle(msg, dedupe: AsyncDedupe, handlers: Handlers, args, max_deliver: int) -> None:
    delivery = msg.metadata.num_delivered
    try:
        event = parse_event(msg.headers, msg.data)
    except NotAnEvent as e:
        print(f"not an event (stream seq {msg.metadata.sequence.stream}): {e}", flush=True)
        count((msg.headers or {}).get("ce-type") or "unknown", Verdict("dead", "reject"))
        await msg.term()  # -> MSG_TERMINATED advisory -> dead-letter stream
        return
    event.delivery = delivery
    verdict = await aprocess(
        dedupe, dedupe_key(args.consumer, event.source, event.id, args.dedupe_prefix),
        handlers.get(args.handler), event,
        last_delivery=0 < max_deliver <= delivery, retry_delay=args.retry_delay)
    if verdict.action == "ack":
        await msg.ack()
    else:  # retry: NakWithDelay (no delay on the last delivery: the server dead-letters it)
        await msg.nak(delay=verdict.delay or None)
    count(event.type, verdict, event)


async def run(args: argparse.Namespace) -> int:
    nc = await nats.connect(args.url, name=f"postbox-consumer-{args.consumer}")
    js, jsm = nc.jetstream(), nc.jsm()
    cfg = await declare(jsm, args)
    r = aioredis.from_url(args.redis, decode_responses=True)
    await r.ping()
    dedupe = AsyncDedupe(r, lease=args.lease, done_ttl=args.done_ttl)
    handlers = Handlers(record=args.record)
    metrics = serve_metrics(args.metrics_port, args.metrics_host)
    sub = await js.pull_subscribe_bind(durable=args.consumer, stream=args.stream)

    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    print(f"ready metrics={metrics} stream={args.stream} consumer={args.consumer} "
          f"filter={cfg.filter_subject} max_deliver={cfg.max_deliver} dlq={dlq_name(args)}", flush=True)
    while not stop.is_set():
        try:
            msgs = await sub.fetch(args.batch, timeout=1)
        except asyncio.TimeoutError:  # nothing to pull. (Not nats.errors.TimeoutError: nats-py
            continue                  # 2.16 also raises the plain asyncio one from fetch.)
        for msg in msgs:  # one at a time; ack_wait must cover a batch
            await handle(msg, dedupe, handlers, args, cfg.max_deliver or -1)
    await sub.unsubscribe()
    await nc.drain()
    await r.aclose()
    print("stopped", flush=True)
    return 0


async def dead_letters(jsm, args: argparse.Namespace):
    """Yield (dlq_seq, advisory) for every advisory still in the dead-letter stream."""
    dlq = dlq_name(args)
    state = (await jsm.stream_info(dlq)).state
    for seq in (range(state.first_seq, state.last_seq + 1) if state.messages else ()):
        try:
            m = await jsm.get_msg(dlq, seq)
        except NotFoundError:  # deleted: replayed already
            continue
        yield seq, json.loads(m.data)


async def get_event(jsm, stream: str, seq: int):
    """The original message by stream sequence: direct get if the stream allows it."""
    direct = bool((await jsm.stream_info(stream)).config.allow_direct)
    return await jsm.get_msg(stream, seq, direct=direct)


async def replay(args: argparse.Namespace) -> int:
    nc = await nats.connect(args.url)
    js, jsm = nc.jetstream(), nc.jsm()
    only = set(args.seq or [])
    replayed = failed = 0
    async for dlq_seq, adv in dead_letters(jsm, args):
        seq = adv["stream_seq"]
        if only and seq not in only:
            continue
        try:
            msg = await get_event(jsm, args.stream, seq)
        except NotFoundError:
            print(f"stream seq {seq}: no longer in {args.stream} (retention); advisory kept", flush=True)
            failed += 1
            continue
        headers = {k: v for k, v in (msg.headers or {}).items() if not k.lower().startswith("nats-")}
        headers["Nats-Msg-Id"] = f"replay:{adv['id']}"  # the advisory's id: a second replay is a duplicate
        headers["replay-of"] = f"{args.stream}/{seq}"
        ack = await js.publish(msg.subject, msg.data or b"", headers=headers, stream=args.stream)
        await jsm.delete_msg(dlq_name(args), dlq_seq)
        print(f"replayed stream seq {seq} ({headers.get('ce-type')} {headers.get('ce-source')} "
              f"{headers.get('ce-id')}) as seq {ack.seq}{' (duplicate)' if ack.duplicate else ''}", flush=True)
        replayed += 1
    print(f"replayed {replayed}, failed {failed}", flush=True)
    await nc.close()
    return 1 if failed else 0


async def list_dead(args: argparse.Namespace) -> int:
    nc = await nats.connect(args.url)
    jsm = nc.jsm()
    async for dlq_seq, adv in dead_letters(jsm, args):
        kind = adv.get("type", "").rsplit(".", 1)[-1]
        try:
            h = (await get_event(jsm, args.stream, adv["stream_seq"])).headers or {}
            what = f"{h.get('ce-type')} {h.get('ce-source')} {h.get('ce-id')}"
        except NotFoundError:
            what = "(gone from the stream)"
        print(f"{dlq_seq}: {kind} stream_seq={adv['stream_seq']} deliveries={adv.get('deliveries')} "
              f"at {adv.get('timestamp')}: {what}", flush=True)
    await nc.close()
    return 0


async def declare_only(args: argparse.Namespace) -> int:
    nc = await nats.connect(args.url)
    cfg = await declare(nc.jsm(), args)
    print(json.dumps({"stream": args.stream, "consumer": cfg.durable_name, "filter_subject": cfg.filter_subject,
                      "max_deliver": cfg.max_deliver, "ack_wait": cfg.ack_wait, "backoff": cfg.backoff,
                      "dead_letter_stream": dlq_name(args)}), flush=True)
    await nc.close()
    return 0


def main() -> int:
    env = os.environ.get
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("command", nargs="?", default="run", choices=("run", "declare", "dead", "replay"))
    ap.add_argument("--url", default=env("NATS_URL", env("POSTBOX_NATS_URL", "nats://127.0.0.1:4222")))
    ap.add_argument("--stream", default=env("POSTBOX_NATS_STREAM", "EVENTS"))
    ap.add_argument("--prefix", default=env("POSTBOX_ROUTING_PREFIX", "events"), help="subjects are {prefix}.{type}.{version}")
    ap.add_argument("--consumer", default="example", help="durable consumer name")
    ap.add_argument("--filter", help="filter_subject (default {prefix}.>)")
    ap.add_argument("--max-deliver", type=int, default=3)
    ap.add_argument("--ack-wait", type=float, default=30.0, help="seconds")
    ap.add_argument("--backoff", default="", help="comma-separated seconds, e.g. 1,5,30")
    ap.add_argument("--dlq-stream", help="dead-letter stream (default {stream}_{consumer}_DLQ)")
    ap.add_argument("--batch", type=int, default=10, help="messages per pull")
    ap.add_argument("--seq", type=int, action="append", help="replay: only this stream sequence (repeatable)")
    add_common_args(ap)
    args = ap.parse_args()
    if args.backoff and args.max_deliver <= len(args.backoff.split(",")):
        fail("--max-deliver must be greater than the number of --backoff values")
    return asyncio.run({"run": run, "declare": declare_only, "dead": list_dead, "replay": replay}[args.command](args))


if __name__ == "__main__":
    sys.exit(main())
