"""The official Python CloudEvents SDK against a running postbox, end to end.

Send with the SDK's stock HTTP helpers (structured, binary, and a batch written with the SDK's
JSON format), consume from RabbitMQ with pika, and decode every message with the SDK's
RabbitMQ protocol binding (`from_rabbitmq`): the decoded event must be the one that was sent.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
import requests
from cloudevents.core.bindings import http as ce_http
from cloudevents.core.bindings.rabbitmq import RabbitMQMessage, from_rabbitmq
from cloudevents.core.formats.json import JSONFormat
from cloudevents.core.v1.event import CloudEvent
from cloudevents.v1.conversion import to_binary as legacy_to_binary
from cloudevents.v1.conversion import to_structured as legacy_to_structured
from cloudevents.v1.http import CloudEvent as LegacyCloudEvent

from conftest import POSTBOX_URL, Consumer, Delivery

EVENTS_URL = f"{POSTBOX_URL}/v1/events"
FMT = JSONFormat()


def decode(d: Delivery) -> Any:
    """The SDK's RabbitMQ binding, fed exactly what pika received."""
    msg = RabbitMQMessage(headers=d.headers, content_type=d.properties.content_type, body=d.body)
    return from_rabbitmq(msg, FMT)


def post(headers: dict[str, str], body: bytes) -> requests.Response:
    return requests.post(EVENTS_URL, headers=headers, data=body, timeout=10)


def assert_same(received: Any, sent: Any) -> None:
    assert received.get_id() == sent.get_id()
    assert received.get_source() == sent.get_source()
    assert received.get_type() == sent.get_type()
    assert received.get_data() == sent.get_data()
    assert received.get_specversion() == "1.0"
    if sent.get_subject() is not None:
        assert received.get_subject() == sent.get_subject()
    if sent.get_dataschema() is not None:
        assert received.get_dataschema() == sent.get_dataschema()
    if sent.get_time() is not None:
        assert received.get_time() == sent.get_time()


def assert_amqp(d: Delivery, event: Any, routing_key: str) -> None:
    assert d.properties.message_id == event.get_id(), "AMQP message_id must be the event id"
    assert d.properties.content_type == "application/cloudevents+json"
    assert d.properties.delivery_mode == 2, "messages must be persistent"
    assert d.routing_key == routing_key
    h = d.headers
    assert h.get("ce-id") == event.get_id()
    assert h.get("ce-source") == event.get_source()
    assert h.get("ce-type") == event.get_type()
    assert h.get("ce-specversion") == "1.0"


def test_structured_mode(consumer: Consumer, run_id: str) -> None:
    event = CloudEvent(
        {
            "id": f"py-structured-{run_id}",
            "source": "/clients/python",
            "type": "order.paid.v1",
            "subject": "o-1001",
            "datacontenttype": "application/json",
            "time": datetime(2026, 11, 26, 12, 30, 5, 123456, tzinfo=timezone.utc),
            "tenant": "acme",  # an extension attribute
        },
        {"order_id": "o-1001", "amount": 25.5, "currency": "EUR"},
    )
    msg = ce_http.to_structured_event(event)
    assert msg.headers["content-type"].startswith("application/cloudevents+json")
    r = post(msg.headers, msg.body)
    assert r.status_code == 202, r.text
    assert r.json()["id"] == event.get_id()
    assert r.json()["source"] == event.get_source()

    d = consumer.wait_for([event.get_id()])[event.get_id()]
    assert_amqp(d, event, "events.order.paid.v1")
    got = decode(d)
    assert_same(got, event)
    assert got.get_extension("tenant") == "acme"
    assert d.headers.get("ce-tenant") == "acme"


def test_binary_mode(consumer: Consumer, run_id: str) -> None:
    event = CloudEvent(
        {
            "id": f"py-binary-{run_id}",
            "source": "/clients/python accounts",  # a space: percent-encoded in the header
            "type": "user.signed_up.v1",
            "subject": "Zoë",  # non-ASCII: percent-encoded UTF-8 in the header
            "datacontenttype": "application/json",
        },
        {"user_id": f"u-{run_id}", "email": "ada@example.com", "plan": "pro"},
    )
    msg = ce_http.to_binary_event(event)
    assert msg.headers["ce-id"] == event.get_id()
    assert msg.headers["content-type"] == "application/json"
    r = post(msg.headers, msg.body)
    assert r.status_code == 202, r.text
    assert r.json()["id"] == event.get_id()
    assert r.json()["source"] == event.get_source()

    d = consumer.wait_for([event.get_id()])[event.get_id()]
    assert_amqp(d, event, "events.user.signed_up.v1")
    assert_same(decode(d), event)


def test_batch(consumer: Consumer, run_id: str) -> None:
    """The SDK has no batch helper: a batch is a JSON array of events in the SDK's JSON format."""
    events = [
        CloudEvent(
            {
                "id": f"py-batch-0-{run_id}",
                "source": "/clients/python",
                # The version from `dataschema`, as postbox serves it, not from a .vN suffix.
                "type": "order.paid",
                "dataschema": f"{POSTBOX_URL}/v1/schemas/order.paid/v2",
                "datacontenttype": "application/json",
            },
            {
                "order_id": f"o-{run_id}",
                "customer_id": "c-42",
                "amount_minor": 990,
                "currency": "EUR",
            },
        ),
        CloudEvent(
            {
                "id": f"py-batch-1-{run_id}",
                "source": "/clients/python",
                "type": "user.signed_up.v1",
            },
            {"user_id": f"u-{run_id}", "email": "bob@example.com"},
        ),
    ]
    body = b"[" + b",".join(FMT.write(e) for e in events) + b"]"
    r = post({"content-type": "application/cloudevents-batch+json"}, body)
    assert r.status_code == 202, r.text
    assert [e["id"] for e in r.json()["events"]] == [e.get_id() for e in events]

    got = consumer.wait_for([e.get_id() for e in events])
    assert_amqp(got[events[0].get_id()], events[0], "events.order.paid.v2")
    assert_amqp(got[events[1].get_id()], events[1], "events.user.signed_up.v1")
    for e in events:
        assert_same(decode(got[e.get_id()]), e)


def test_legacy_sdk_api(consumer: Consumer, run_id: str) -> None:
    """The SDK's v1 API (`cloudevents.v1.http`, the pre-2.0 `cloudevents.http`) works too."""
    sent = []
    for mode, helper in (("structured", legacy_to_structured), ("binary", legacy_to_binary)):
        attrs = {
            "id": f"py-legacy-{mode}-{run_id}",
            "source": "/clients/python/legacy",
            "type": "order.paid.v1",
            "datacontenttype": "application/json",
        }
        data = {"order_id": f"o-{mode}", "amount": 1, "currency": "USD"}
        headers, body = helper(LegacyCloudEvent(attrs, data))
        r = post(headers, body)
        assert r.status_code == 202, f"{mode}: {r.status_code} {r.text}"
        sent.append((attrs, data))
    got = consumer.wait_for([a["id"] for a, _ in sent])
    for attrs, data in sent:
        ev = decode(got[attrs["id"]])
        assert (ev.get_id(), ev.get_source(), ev.get_type(), ev.get_data()) == (
            attrs["id"],
            attrs["source"],
            attrs["type"],
            data,
        )
        assert got[attrs["id"]].properties.message_id == attrs["id"]


@pytest.mark.parametrize("api", ["core", "v1"])
def test_binary_without_datacontenttype(consumer: Consumer, run_id: str, api: str) -> None:
    """The SDK's README example: dict data, no datacontenttype, `requests.post(data=body)`."""
    attrs = {"id": f"py-binary-nodct-{api}-{run_id}", "source": "/clients/python", "type": "order.paid.v1"}
    data = {"order_id": "o-nodct", "amount": 2, "currency": "EUR"}
    if api == "core":
        msg = ce_http.to_binary_event(CloudEvent(dict(attrs), data))
        headers, body = msg.headers, msg.body
    else:
        headers, body = legacy_to_binary(LegacyCloudEvent(dict(attrs), data))
    assert "content-type" not in {k.lower() for k in headers}
    r = post(headers, body)
    assert r.status_code == 202, f"{r.status_code} {r.text}"
    d = consumer.wait_for([attrs["id"]])[attrs["id"]]
    assert decode(d).get_data() == data


def test_replay_publishes_once(consumer: Consumer, run_id: str) -> None:
    event = CloudEvent(
        {"id": f"py-replay-{run_id}", "source": "/clients/python", "type": "order.paid.v1"},
        {"order_id": "o-r", "amount": 3, "currency": "EUR"},
    )
    msg = ce_http.to_structured_event(event)
    first = post(msg.headers, msg.body)
    second = post(msg.headers, msg.body)
    assert first.status_code == 202, first.text
    assert second.status_code == 202, second.text
    assert second.headers.get("idempotent-replayed") == "true"
    assert second.json()["id"] == first.json()["id"]
    consumer.wait_for([event.get_id()])
    assert consumer.count(event.get_id()) == 1
