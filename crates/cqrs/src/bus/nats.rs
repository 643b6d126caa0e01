//! What the outbox relay and the JetStream consumers share: the headers an event travels
//! with, the bus's error, and the helper that creates (or checks) the JetStream stream.

use std::{error::Error as StdError, fmt, time::Duration};

use async_nats::{HeaderMap, jetstream};
use bytes::Bytes;
use serde_json::value::RawValue;
use tower_patterns_core::BoxError;
use tower_patterns_eventstore::{GlobalPosition, Metadata, RecordedEvent};

/// The event's stream (percent-escaped: `%`, CR and LF).
pub const HEADER_STREAM: &str = "Tp-Stream";
/// The event's version in its stream.
pub const HEADER_VERSION: &str = "Tp-Version";
/// The event's global position, `<commit>.<index>`.
pub const HEADER_POSITION: &str = "Tp-Position";
/// The event's type (percent-escaped as the stream).
pub const HEADER_TYPE: &str = "Tp-Type";
/// The version of the payload's schema.
pub const HEADER_SCHEMA_VERSION: &str = "Tp-Schema-Version";
/// The event's metadata, as one line of JSON.
pub const HEADER_METADATA: &str = "Tp-Metadata";
/// On a dead letter: the JetStream stream the message came from.
pub const HEADER_SOURCE_STREAM: &str = "Tp-Source-Stream";
/// On a dead letter: its sequence number in that stream.
pub const HEADER_SOURCE_SEQUENCE: &str = "Tp-Source-Sequence";
/// On a dead letter: the consumer that gave up on it.
pub const HEADER_CONSUMER: &str = "Tp-Consumer";
/// On a dead letter: deliveries made.
pub const HEADER_DELIVERIES: &str = "Tp-Deliveries";
/// On a dead letter: the last error, on one line.
pub const HEADER_ERROR: &str = "Tp-Error";

/// The header JetStream deduplicates by (`Nats-Msg-Id`; received headers name it by this
/// constant, not by the string).
pub(crate) const MSG_ID: async_nats::header::HeaderName = async_nats::header::NATS_MESSAGE_ID;

/// The duplicate window [`ensure_stream`] is usually given: ten minutes, so a relay that is
/// down (or restarting in a loop) for less than that republishes nothing twice into the stream.
pub const DEFAULT_DUPLICATE_WINDOW: Duration = Duration::from_secs(600);

/// What went wrong on the bus.
#[derive(Debug)]
pub struct BusError {
    kind: BusErrorKind,
    context: String,
    source: Option<BoxError>,
}

/// The kind of a [`BusError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BusErrorKind {
    /// The event store failed to answer.
    Store,
    /// The checkpoint store failed to answer.
    Checkpoint,
    /// Another relay moved the checkpoint: this one stopped (two relays of one name).
    Fenced,
    /// A publish (or its acknowledgement) failed: NATS unreachable, no stream for the
    /// subject, a timeout.
    Publish,
    /// The JetStream stream is missing or set up otherwise than asked.
    Stream,
    /// Creating or reading the durable consumer failed.
    Consumer,
}

impl BusError {
    pub(crate) fn new(kind: BusErrorKind, context: impl Into<String>) -> Self {
        Self {
            kind,
            context: context.into(),
            source: None,
        }
    }

    pub(crate) fn with(
        kind: BusErrorKind,
        context: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Self {
            kind,
            context: context.into(),
            source: Some(source.into()),
        }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> BusErrorKind {
        self.kind
    }
}

impl fmt::Display for BusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.context)?;
        if let Some(source) = &self.source {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

impl StdError for BusError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

/// Escapes what a header value cannot hold (CR, LF) and the escape itself.
fn escape(s: &str) -> String {
    if !s.contains(['%', '\r', '\n']) {
        return s.to_owned();
    }
    s.replace('%', "%25")
        .replace('\r', "%0D")
        .replace('\n', "%0A")
}

fn unescape(s: &str) -> String {
    if !s.contains('%') {
        return s.to_owned();
    }
    s.replace("%0A", "\n")
        .replace("%0D", "\r")
        .replace("%25", "%")
}

/// A text on one line, for an error header.
pub(crate) fn one_line(s: &str) -> String {
    s.replace(['\r', '\n'], " ")
}

/// The headers an event is published with.
pub(crate) fn event_headers(e: &RecordedEvent) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert(MSG_ID, e.id.to_string());
    h.insert(HEADER_STREAM, escape(&e.stream_id));
    h.insert(HEADER_VERSION, e.version.to_string());
    h.insert(
        HEADER_POSITION,
        format!("{}.{}", e.position.commit, e.position.index),
    );
    h.insert(HEADER_TYPE, escape(&e.event_type));
    h.insert(HEADER_SCHEMA_VERSION, e.schema_version.to_string());
    // Compact JSON has no line breaks (serde escapes them inside strings).
    h.insert(
        HEADER_METADATA,
        serde_json::to_string(&e.metadata).unwrap_or_default(),
    );
    h
}

/// Decodes a message the relay published back into the event.
pub(crate) fn decode_event(
    headers: Option<&HeaderMap>,
    payload: &Bytes,
) -> Result<RecordedEvent, String> {
    let h = headers.ok_or("the message has no headers: not published by an outbox relay")?;
    let get = |name: &str| {
        h.get(name)
            .map(|v| v.as_str())
            .ok_or_else(|| format!("header {name} missing: not published by an outbox relay"))
    };
    let bad = |name: &str, v: &str| format!("header {name} is not valid: {v:?}");
    let id = h
        .get(MSG_ID)
        .map(|v| v.as_str())
        .ok_or("header Nats-Msg-Id missing: not published by an outbox relay")?;
    let id = uuid::Uuid::parse_str(id).map_err(|_| bad("Nats-Msg-Id", id))?;
    let version = get(HEADER_VERSION)?;
    let version = version
        .parse::<u64>()
        .map_err(|_| bad(HEADER_VERSION, version))?;
    let position = get(HEADER_POSITION)?;
    let position = position
        .split_once('.')
        .and_then(|(c, i)| Some(GlobalPosition::new(c.parse().ok()?, i.parse().ok()?)))
        .ok_or_else(|| bad(HEADER_POSITION, position))?;
    let schema = get(HEADER_SCHEMA_VERSION)?;
    let schema_version = schema
        .parse::<u32>()
        .map_err(|_| bad(HEADER_SCHEMA_VERSION, schema))?;
    let metadata = match h.get(HEADER_METADATA) {
        Some(m) => serde_json::from_str::<Metadata>(m.as_str())
            .map_err(|e| format!("header {HEADER_METADATA}: {e}"))?,
        None => Metadata::default(),
    };
    let payload = std::str::from_utf8(payload)
        .map_err(|e| format!("the payload is not UTF-8: {e}"))
        .and_then(|p| {
            RawValue::from_string(p.to_owned()).map_err(|e| format!("the payload is not JSON: {e}"))
        })?;
    Ok(RecordedEvent {
        stream_id: unescape(get(HEADER_STREAM)?),
        version,
        position,
        id,
        event_type: unescape(get(HEADER_TYPE)?),
        schema_version,
        payload,
        metadata,
    })
}

/// Creates the JetStream stream `name` capturing `subjects` with a duplicate window of
/// `duplicate_window`, or checks the one that exists: it must capture every subject asked
/// and keep duplicates at least as long.
///
/// # The duplicate window
///
/// JetStream drops a message whose `Nats-Msg-Id` it stored less than `duplicate_window`
/// ago, and answers the publish as a duplicate: that is what makes the relay's republishing
/// after a crash harmless. Set it at least as long as the relay can be down between a
/// publish and its checkpoint (a restart, a rollout, a crash loop); the relay republishes at
/// most one batch, the one it was publishing when it stopped. A longer window costs server
/// memory: JetStream keeps every id of the window in memory (about 100 bytes each), so
/// 10 minutes at 1,000 events/s is some 60 MB. Beyond the window a repeat is stored again,
/// and consumers drop it by event id with the [`Inbox`](crate::inbox).
///
/// # Errors
///
/// [`BusErrorKind::Stream`] when the stream cannot be read or created, or exists with other
/// subjects or a shorter duplicate window.
pub async fn ensure_stream(
    jetstream: &jetstream::Context,
    name: &str,
    subjects: &[&str],
    duplicate_window: Duration,
) -> Result<jetstream::stream::Stream, BusError> {
    let config = jetstream::stream::Config {
        name: name.to_owned(),
        subjects: subjects.iter().map(|s| (*s).to_owned()).collect(),
        duplicate_window,
        storage: jetstream::stream::StorageType::File,
        ..Default::default()
    };
    let stream = jetstream
        .get_or_create_stream(config)
        .await
        .map_err(|e| BusError::with(BusErrorKind::Stream, format!("stream {name}"), e))?;
    let info = &stream.cached_info().config;
    if let Some(missing) = subjects
        .iter()
        .find(|s| !info.subjects.iter().any(|have| have == *s))
    {
        return Err(BusError::new(
            BusErrorKind::Stream,
            format!(
                "stream {name} exists without subject {missing} (it has {:?})",
                info.subjects
            ),
        ));
    }
    if info.duplicate_window < duplicate_window {
        return Err(BusError::new(
            BusErrorKind::Stream,
            format!(
                "stream {name} keeps duplicates for {:?}, less than the {duplicate_window:?} asked: \
                 update its duplicate_window",
                info.duplicate_window
            ),
        ));
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(stream: &str, kind: &str) -> RecordedEvent {
        RecordedEvent {
            stream_id: stream.to_owned(),
            version: 7,
            position: GlobalPosition::new(3, 41),
            id: uuid::Uuid::now_v7(),
            event_type: kind.to_owned(),
            schema_version: 2,
            payload: RawValue::from_string(r#"{"price":12}"#.to_owned()).unwrap(),
            metadata: Metadata::default().for_tenant("acme"),
        }
    }

    #[test]
    fn an_event_survives_its_headers() {
        for (stream, kind) in [
            ("product-1", "PriceUpdated"),
            ("odd\r\nstream %0A", "Type\nwith%break"),
        ] {
            let e = event(stream, kind);
            let h = event_headers(&e);
            assert_eq!(h.get(MSG_ID).unwrap().as_str(), e.id.to_string());
            for (_, values) in h.iter() {
                for v in values {
                    assert!(!v.as_str().contains(['\r', '\n']), "{v:?}");
                }
            }
            let back = decode_event(Some(&h), &Bytes::from(e.payload.get().to_owned())).unwrap();
            assert_eq!(back.stream_id, stream);
            assert_eq!(back.event_type, kind);
            assert_eq!(
                (back.id, back.version, back.position, back.schema_version),
                (e.id, 7, GlobalPosition::new(3, 41), 2)
            );
            assert_eq!(back.payload.get(), r#"{"price":12}"#);
            assert_eq!(back.metadata, e.metadata);
        }
    }

    #[test]
    fn a_foreign_message_is_refused_by_name() {
        let err = decode_event(None, &Bytes::from_static(b"{}")).unwrap_err();
        assert!(err.contains("no headers"), "{err}");
        let mut h = event_headers(&event("s", "T"));
        h.insert(HEADER_POSITION, "12");
        let err = decode_event(Some(&h), &Bytes::from_static(b"{}")).unwrap_err();
        assert!(err.contains(HEADER_POSITION), "{err}");
        let h = event_headers(&event("s", "T"));
        let err = decode_event(Some(&h), &Bytes::from_static(b"not json")).unwrap_err();
        assert!(err.contains("not JSON"), "{err}");
    }

    #[test]
    fn errors_say_what_failed() {
        let e = BusError::with(BusErrorKind::Publish, "relay orders", "timed out");
        assert_eq!(e.to_string(), "relay orders: timed out");
        assert_eq!(e.kind(), BusErrorKind::Publish);
        assert!(e.source().is_some());
        assert_eq!(one_line("a\r\nb"), "a  b");
    }
}
