//! Publish spans: the publish of a traced event is a child span of the event's stored
//! `traceparent`, logged as a `tracing` span and, when OTLP export is on and the trace is
//! sampled, exported. The message then carries the publish span's `traceparent`, so the
//! consumer's span becomes its child.

use std::time::SystemTime;

use crate::{
    sink::{Message, Outcome, Sink},
    trace::{Child, SpanRecord, TraceParent, otlp::SpanSink},
};

/// The publish of one traced event.
pub struct PublishTrace {
    ctx: Child,
    /// Sampled by the caller and exported.
    sampled: bool,
    trace_state: Option<String>,
    span: tracing::Span,
    start: SystemTime,
    attributes: Vec<(&'static str, String)>,
}

impl PublishTrace {
    /// Start the span of `message` if it carries a valid `traceparent` (the request's), and
    /// make the message carry the span's own. Attributes are only built when the span will be
    /// exported.
    pub fn start<S: Sink>(message: &mut Message, sink: &S, export: bool) -> Option<PublishTrace> {
        let parent = TraceParent::parse(message.traceparent.as_deref()?)?;
        let ctx = parent.child();
        let span = tracing::info_span!(
            "publish",
            trace_id = %ctx.trace_id,
            parent_span_id = %ctx.parent_id,
            span_id = %ctx.span_id,
            event_id = %message.id,
            routing_key = %message.subject,
        );
        let sampled = parent.sampled() && export;
        // OpenTelemetry semantic conventions for messaging and CloudEvents; the sink adds its
        // system and destination.
        let attributes = if !sampled {
            Vec::new()
        } else {
            let mut a = sink.span_attributes(message);
            a.extend([
                ("messaging.operation.name", "publish".to_owned()),
                ("messaging.operation.type", "send".to_owned()),
                ("messaging.message.id", message.id.clone()),
                ("cloudevents.event_id", message.id.clone()),
                ("cloudevents.event_type", message.ce_type.clone()),
            ]);
            a
        };
        message.traceparent = Some(ctx.traceparent());
        Some(PublishTrace {
            sampled,
            ctx,
            trace_state: message.tracestate.clone(),
            span,
            start: SystemTime::now(),
            attributes,
        })
    }

    /// End the span with the publish's outcome (exported when sampled and `sink` is set).
    pub fn finish(self, outcome: &Outcome, end: SystemTime, sink: Option<&SpanSink>) {
        let error = outcome.error().map(str::to_owned);
        match &error {
            None => self.span.in_scope(|| tracing::debug!("published")),
            Some(e) => self
                .span
                .in_scope(|| tracing::debug!(error = %e, "publish failed")),
        }
        if let (Some(sink), true) = (sink, self.sampled) {
            sink.record(SpanRecord {
                ctx: self.ctx,
                trace_state: self.trace_state,
                name: "publish",
                start: self.start,
                end,
                attributes: self.attributes,
                error,
            });
        }
    }
}
