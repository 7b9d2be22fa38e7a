//! Consumer topology from configuration, against the real RabbitMQ: the relay declares the
//! configured queues and bindings before it publishes; a quorum queue with `x-delivery-limit`
//! and a dead-letter queue gives a consumer that keeps failing "retry N times, then the DLQ"
//! from RabbitMQ itself; a declaration that conflicts with an existing queue is explained and
//! holds events in the outbox until it is resolved.

use std::time::Duration;

use lapin::options::{
    BasicAckOptions, BasicNackOptions, BasicQosOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use postbox::sink::amqp::QueueSettings;

use crate::helpers::{
    Backend, Declared, Event, TestApp, body_json, channel, consumer, header_str, message_id,
    next_unacked as next, unique,
};

const WAIT: Duration = Duration::from_secs(15);

fn queue(name: &str, kind: &str, bindings: &[&str]) -> QueueSettings {
    QueueSettings {
        name: name.to_owned(),
        bindings: bindings.iter().map(|b| (*b).to_owned()).collect(),
        queue_type: Some(kind.to_owned()),
        delivery_limit: None,
        dead_letter: None,
        dead_letter_exchange: None,
        dead_letter_queue: None,
    }
}

#[tokio::test]
async fn quorum_queue_dead_letters_after_its_delivery_limit_and_classic_queue_receives() {
    let billing = unique("test-billing");
    let audit = unique("test-audit");
    let dlq = format!("{billing}.dlq");
    // Durable queues postbox declares, and the dead-letter exchange: removed even on failure.
    let mut declared = Declared::new();
    declared.queue(&billing).queue(&dlq).queue(&audit);
    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        let mut q = queue(&billing, "quorum", &["events.order.paid.#"]);
        q.delivery_limit = Some(2);
        q.dead_letter = Some(true);
        s.queues = Some(vec![q, queue(&audit, "classic", &["events.#"])]);
    })
    .await;
    declared.exchange(&format!("{}.dlx", app.exchange));

    // No queue was bound by the test: the event can only be routed (and so be confirmed and
    // marked published) through the configured topology.
    let id = unique("pay");
    let event = Event::order_paid("o-1").id(&id).source("/shop/checkout");
    let location = app.accept(&event).await;
    let ev = app.wait_status(&location, "published", WAIT).await;
    assert_eq!(ev["attempts"], 1, "{ev}");

    let (conn, ch) = channel().await;
    ch.basic_qos(1, BasicQosOptions::default())
        .await
        .expect("qos");

    // The classic queue got it through its `events.#` binding.
    let mut audit_c = consumer(&ch, &audit).await;
    let d = next(&mut audit_c, WAIT)
        .await
        .expect("the audit queue gets the event");
    assert_eq!(message_id(&d), id);
    assert_eq!(d.routing_key.as_str(), "events.order.paid.v1");
    d.ack(BasicAckOptions::default()).await.expect("ack");

    // A consumer of the quorum queue that always fails: nack with requeue until RabbitMQ
    // stops delivering the message.
    let mut billing_c = consumer(&ch, &billing).await;
    let mut deliveries = 0;
    let mut original_body = Vec::new();
    while let Some(d) = next(&mut billing_c, Duration::from_secs(3)).await {
        deliveries += 1;
        assert_eq!(message_id(&d), id);
        original_body = d.data.clone();
        d.nack(BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        })
        .await
        .expect("nack");
        assert!(deliveries <= 10, "the delivery limit is not enforced");
    }
    // x-delivery-limit = 2: the first delivery and two redeliveries, then dead-lettered.
    assert_eq!(deliveries, 3, "deliveries before dead-lettering");

    let mut dlq_c = consumer(&ch, &dlq).await;
    let dead = next(&mut dlq_c, WAIT)
        .await
        .expect("the message arrives in the dead-letter queue");
    assert_eq!(message_id(&dead), id);
    assert_eq!(dead.data, original_body, "the body is kept");
    let body = body_json(&dead);
    assert_eq!(body["id"], id.as_str());
    assert_eq!(&body["data"], event.data_value());
    assert_eq!(
        header_str(&dead, "x-first-death-reason").as_deref(),
        Some("delivery_limit")
    );
    assert_eq!(
        header_str(&dead, "x-first-death-queue").as_deref(),
        Some(billing.as_str())
    );
    assert_eq!(
        header_str(&dead, "ce-id").as_deref(),
        Some(id.as_str()),
        "the ce-* headers are kept"
    );
    dead.ack(BasicAckOptions::default()).await.expect("ack");

    app.stop().await.expect("clean stop");
    let _ = conn.close(200, "done".into()).await;
}

#[tokio::test]
async fn conflicting_queue_is_explained_and_events_wait_until_it_is_fixed() {
    let name = unique("test-orders");
    let mut declared = Declared::new();
    declared.queue(&name);
    // Someone declared the queue before, as a classic queue.
    let (conn, ch) = channel().await;
    ch.queue_declare(
        name.as_str().into(),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare the classic queue");

    let app = TestApp::spawn_with(Backend::Sqlite, |s| {
        s.queues = Some(vec![queue(&name, "quorum", &["events.order.paid.#"])]);
    })
    .await;
    let location = app.accept(&Event::order_paid("o-2")).await;

    // /readyz names the queue, RabbitMQ's reason and what to do; postbox stays ready (the
    // outbox buffers) and the event stays pending.
    let deadline = tokio::time::Instant::now() + WAIT;
    let broker = loop {
        let (code, ready) = app.get_json("/readyz").await;
        assert_eq!(code, 200, "{ready}");
        if ready["broker"]["state"] == "unreachable" {
            break ready["broker"].clone();
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the relay did not report the conflict: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let error = broker["error"].as_str().unwrap_or_default();
    assert!(error.contains("consumer topology"), "{error}");
    assert!(error.contains(&format!("`{name}`")), "{error}");
    assert!(error.contains("PRECONDITION_FAILED"), "{error}");
    assert!(error.contains("delete it"), "{error}");
    let (_, ev) = app.get_json(&location).await;
    assert_eq!(ev["status"], "pending", "{ev}");
    assert_eq!(ev["attempts"], 0, "no attempt is used up: {ev}");

    // The operator deletes the old queue: the relay declares the quorum queue on its next try
    // and publishes the event into it.
    ch.queue_delete(name.as_str().into(), QueueDeleteOptions::default())
        .await
        .expect("delete the classic queue");
    app.wait_status(&location, "published", Duration::from_secs(30))
        .await;
    let mut c = consumer(&ch, &name).await;
    let d = next(&mut c, WAIT).await.expect("the event is in the queue");
    assert_eq!(d.routing_key.as_str(), "events.order.paid.v1");
    d.ack(BasicAckOptions::default()).await.expect("ack");

    app.stop().await.expect("clean stop");
    let _ = conn.close(200, "done".into()).await;
    drop(declared);
}
