//! The anti-pattern postbox replaces, for `bench/anti-pattern.sh`: an HTTP handler that
//! publishes each event straight to RabbitMQ, with no outbox and no publisher confirms (the
//! channel is never put in confirm mode). `basic_publish` hands the frames to the socket and
//! the handler answers 202; whether RabbitMQ ever got the message, nobody knows.
//!
//! ```text
//! naive_gateway --listen 127.0.0.1:18190 --amqp URL --exchange X [--background]
//! ```
//!
//! `--background` is the other common shape ("a goroutine + a call in the background"): the
//! handler answers 202 at once and publishes from a spawned task, logging errors.
//!
//! In good faith it does what such gateways usually do: persistent messages to a durable
//! exchange, and when a publish fails it answers 503 and reconnects in the background.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{
    Json, Router,
    body::Bytes,
    extract::State,
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::post,
};
use lapin::{
    BasicProperties, Channel, Connection, ConnectionProperties, ExchangeKind,
    options::{BasicPublishOptions, ExchangeDeclareOptions},
    types::FieldTable,
};
use serde_json::{Value, json};
use tokio::sync::RwLock;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

struct Gateway {
    amqp: String,
    exchange: String,
    background: bool,
    /// The live link, `None` while reconnecting.
    link: RwLock<Option<(Connection, Channel)>>,
    reconnecting: AtomicBool,
}

async fn connect(amqp: &str, exchange: &str) -> anyhow::Result<(Connection, Channel)> {
    let conn = Connection::connect(amqp, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.exchange_declare(
        exchange.into(),
        ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await?;
    Ok((conn, ch))
}

impl Gateway {
    /// Drop the link and reconnect in the background (once at a time), every 500 ms.
    async fn broken(self: &Arc<Self>) {
        *self.link.write().await = None;
        if self.reconnecting.swap(true, Ordering::SeqCst) {
            return;
        }
        let gw = self.clone();
        tokio::spawn(async move {
            loop {
                match connect(&gw.amqp, &gw.exchange).await {
                    Ok(link) => {
                        *gw.link.write().await = Some(link);
                        eprintln!("naive_gateway: reconnected");
                        break;
                    }
                    Err(e) => eprintln!("naive_gateway: reconnect failed: {e}"),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            gw.reconnecting.store(false, Ordering::SeqCst);
        });
    }

    /// Fire and forget: done once the frames are on the socket.
    async fn publish(self: &Arc<Self>, id: &str, routing_key: &str, body: &[u8]) -> bool {
        let channel = match &*self.link.read().await {
            Some((_, ch)) => ch.clone(),
            None => return false,
        };
        let props = BasicProperties::default()
            .with_delivery_mode(2)
            .with_message_id(id.into())
            .with_content_type("application/json".into());
        let sent = channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.into(),
                BasicPublishOptions::default(),
                body,
                props,
            )
            .await;
        if let Err(e) = sent {
            eprintln!("naive_gateway: publish failed: {e}");
            self.broken().await;
            return false;
        }
        true
    }
}

async fn events(State(gw): State<Arc<Gateway>>, body: Bytes) -> Response {
    let Ok(v) = serde_json::from_slice::<Value>(&body) else {
        return (StatusCode::BAD_REQUEST, "not JSON").into_response();
    };
    let field = |k: &str| {
        v.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (id, ty, version) = (field("id"), field("type"), field("version"));
    let routing_key = format!("events.{ty}.{version}");
    if gw.background {
        let gw = gw.clone();
        let id = id.clone();
        tokio::spawn(async move { gw.publish(&id, &routing_key, &body).await });
    } else if !gw.publish(&id, &routing_key, &body).await {
        return (StatusCode::SERVICE_UNAVAILABLE, "broker unavailable").into_response();
    }
    (StatusCode::ACCEPTED, Json(json!({ "id": id }))).into_response()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let listen = arg("--listen").unwrap_or_else(|| "127.0.0.1:18190".into());
    let amqp = arg("--amqp").unwrap_or_else(|| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let exchange = arg("--exchange").unwrap_or_else(|| "events".into());
    let link = connect(&amqp, &exchange).await?;
    let gw = Arc::new(Gateway {
        amqp,
        exchange,
        background: std::env::args().any(|a| a == "--background"),
        link: RwLock::new(Some(link)),
        reconnecting: AtomicBool::new(false),
    });
    let app = Router::new()
        .route("/v1/events", post(events))
        .route("/readyz", axum::routing::get(|| async { "ok" }))
        .with_state(gw);
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}
