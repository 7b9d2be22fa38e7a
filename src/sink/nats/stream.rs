//! The stream events are published to: used as it is when one already captures the subjects,
//! created when none does, and never changed or deleted. A conflict is one explained error;
//! the relay reports it on `/readyz` and tries again until someone fixes it.

use anyhow::{Context as _, bail};
use async_nats::jetstream::{
    self, ErrorCode,
    context::GetStreamErrorKind,
    stream::{Config, StorageType},
};
use futures_util::TryStreamExt;

use super::NatsConfig;

/// Make sure `cfg.stream` (or another stream) captures every subject `cfg.subjects` names;
/// returns the name of the stream that does.
pub async fn ensure(js: &jetstream::Context, cfg: &NatsConfig) -> anyhow::Result<String> {
    match js.get_stream(&cfg.stream).await {
        Ok(stream) => {
            let subjects = &stream.cached_info().config.subjects;
            if subjects.iter().any(|s| covers(s, &cfg.subjects)) {
                return Ok(cfg.stream.clone());
            }
            bail!(
                "the JetStream stream `{}` exists with subjects {subjects:?}, which do not capture \
                 `{}`; postbox never changes an existing stream: add `{}` to its subjects, or set \
                 nats_stream to another name",
                cfg.stream,
                cfg.subjects,
                cfg.subjects
            );
        }
        Err(e) if is_not_found(e.kind()) => {}
        Err(e) => bail!("looking up the JetStream stream `{}`: {e}", cfg.stream),
    }
    // Another stream may capture the subjects already (an operator's own).
    let mut streams = js.streams();
    while let Some(info) = streams
        .try_next()
        .await
        .context("listing the JetStream streams")?
    {
        if info
            .config
            .subjects
            .iter()
            .any(|s| covers(s, &cfg.subjects))
        {
            tracing::info!(
                stream = %info.config.name,
                subjects = %cfg.subjects,
                "publishing to the existing JetStream stream that captures the subjects"
            );
            return Ok(info.config.name);
        }
    }
    js.create_stream(Config {
        name: cfg.stream.clone(),
        subjects: vec![cfg.subjects.clone()],
        storage: StorageType::File,
        duplicate_window: cfg.duplicate_window,
        num_replicas: cfg.replicas,
        ..Config::default()
    })
    .await
    .with_context(|| {
        format!(
            "creating the JetStream stream `{}` for `{}` (another stream may hold some of these \
             subjects: a subject belongs to one stream only)",
            cfg.stream, cfg.subjects
        )
    })?;
    tracing::info!(
        stream = %cfg.stream,
        subjects = %cfg.subjects,
        duplicate_window_secs = cfg.duplicate_window.as_secs(),
        replicas = cfg.replicas,
        "created the JetStream stream"
    );
    Ok(cfg.stream.clone())
}

fn is_not_found(kind: GetStreamErrorKind) -> bool {
    matches!(kind, GetStreamErrorKind::JetStream(e) if e.error_code() == ErrorCode::STREAM_NOT_FOUND)
}

/// Whether the subject filter `pattern` matches every subject `wanted` matches (both may hold
/// the wildcards `*`, one token, and `>`, one or more trailing tokens).
pub fn covers(pattern: &str, wanted: &str) -> bool {
    let mut p = pattern.split('.');
    let mut w = wanted.split('.');
    loop {
        match (p.next(), w.next()) {
            (Some(">"), Some(_)) => return true,
            (Some(_), Some(">")) | (None, Some(_)) | (Some(_), None) => return false,
            (Some("*"), Some(wt)) if wt != ">" => {}
            (Some(pt), Some(wt)) if pt == wt && wt != "*" => {}
            (Some(_), Some(_)) => return false,
            (None, None) => return true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::covers;

    #[test]
    fn subject_coverage() {
        assert!(covers("events.>", "events.>"));
        assert!(covers(">", "events.>"));
        assert!(covers("*.>", "events.>"));
        assert!(!covers("events.order.>", "events.>"));
        assert!(!covers("events.*", "events.>"), "one token only");
        assert!(!covers("other.>", "events.>"));
        assert!(covers("events.*.paid.v1", "events.order.paid.v1"));
        assert!(!covers("events.order.paid.v1", "events.*.paid.v1"));
        assert!(covers("events.order", "events.order"));
        assert!(!covers("events.order", "events.order.paid"));
    }
}
