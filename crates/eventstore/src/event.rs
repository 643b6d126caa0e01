//! The event envelope: what is appended, what is read back, and where it sits.

use std::{
    cmp::Ordering,
    fmt,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::{DomainEvent, Error};

/// What the writer says about a stream's version before appending.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ExpectedVersion {
    /// Append whatever the stream's version.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must exist (have at least one event).
    StreamExists,
    /// The stream's last event must have this version (versions start at 1; 0 means no
    /// stream).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream at `current` (0: no stream) satisfies the expectation.
    pub fn admits(self, current: u64) -> bool {
        match self {
            Self::Any => true,
            Self::NoStream => current == 0,
            Self::StreamExists => current > 0,
            Self::Exact(v) => current == v,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("any version"),
            Self::NoStream => f.write_str("no stream"),
            Self::StreamExists => f.write_str("an existing stream"),
            Self::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// Where an event sits in the global log. Ordered: a reader that has seen position `p` has
/// seen every event before it, and no event will ever appear before it later.
///
/// Two numbers: `commit` orders appends (always 0 on SQLite and in memory, whose single writer
/// makes `index` enough; on PostgreSQL the append's number from the store's append-order
/// sequence, the same for every event of one append), and `index` orders events (a global
/// sequence). Compare and store positions; do no arithmetic on them: both may have gaps (a
/// rolled-back append on PostgreSQL uses up its numbers).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct GlobalPosition {
    /// The append's order (0 where one writer makes it unnecessary).
    pub commit: u64,
    /// The event's sequence number.
    pub index: u64,
}

impl GlobalPosition {
    /// The position before every event.
    pub const START: Self = Self {
        commit: 0,
        index: 0,
    };

    /// A position.
    pub const fn new(commit: u64, index: u64) -> Self {
        Self { commit, index }
    }
}

impl PartialOrd for GlobalPosition {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for GlobalPosition {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.commit, self.index).cmp(&(other.commit, other.index))
    }
}

impl fmt::Display for GlobalPosition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.commit == 0 {
            write!(f, "{}", self.index)
        } else {
            write!(f, "{}/{}", self.commit, self.index)
        }
    }
}

/// Who caused an event and for whom: carried with it, never interpreted by the store except
/// `recorded_at`, which the store sets.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// The request or conversation this event belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The message (command or event) that caused it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// The tenant it belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// When the store recorded it, in microseconds since the Unix epoch (set on append).
    #[serde(default)]
    pub recorded_at_micros: u64,
}

impl Metadata {
    /// When the store recorded the event.
    pub fn recorded_at(&self) -> SystemTime {
        UNIX_EPOCH + Duration::from_micros(self.recorded_at_micros)
    }

    /// Sets the correlation id.
    #[must_use]
    pub fn correlated(mut self, id: Uuid) -> Self {
        self.correlation_id = Some(id);
        self
    }

    /// Sets the causation id.
    #[must_use]
    pub fn caused_by(mut self, id: Uuid) -> Self {
        self.causation_id = Some(id);
        self
    }

    /// Sets the tenant.
    #[must_use]
    pub fn for_tenant(mut self, tenant: impl Into<String>) -> Self {
        self.tenant_id = Some(tenant.into());
        self
    }
}

/// Microseconds since the Unix epoch for `t` (0 before the epoch).
pub(crate) fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

/// An event to append.
#[derive(Clone, Debug)]
pub struct EventData {
    /// Its id: appending the same id twice stores the event once.
    pub id: Uuid,
    /// Its type (`"Deposited"`).
    pub event_type: String,
    /// The version of its payload's schema, for upcasting.
    pub schema_version: u32,
    /// The payload, as JSON.
    pub payload: Box<RawValue>,
    /// Its metadata (`recorded_at` is set by the store).
    pub metadata: Metadata,
}

impl EventData {
    /// An event with a new time-ordered id (UUID v7), schema version 1.
    ///
    /// # Errors
    ///
    /// When `payload` does not serialise to JSON.
    pub fn json(event_type: impl Into<String>, payload: &impl Serialize) -> Result<Self, Error> {
        let payload =
            serde_json::value::to_raw_value(payload).map_err(|e| Error::Encode(e.to_string()))?;
        Ok(Self {
            id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version: 1,
            payload,
            metadata: Metadata::default(),
        })
    }

    /// Sets the id (to make a retried append idempotent, reuse the first attempt's ids).
    #[must_use]
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// Sets the schema version.
    #[must_use]
    pub fn with_schema_version(mut self, v: u32) -> Self {
        self.schema_version = v;
        self
    }

    /// Sets the metadata.
    #[must_use]
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }
}

/// An event as stored.
#[derive(Clone, Debug)]
pub struct RecordedEvent {
    /// Its stream.
    pub stream_id: String,
    /// Its version within the stream (1 for the first).
    pub version: u64,
    /// Its place in the global log.
    pub position: GlobalPosition,
    /// Its id.
    pub id: Uuid,
    /// Its type.
    pub event_type: String,
    /// The version of its payload's schema (after upcasting, the current one).
    pub schema_version: u32,
    /// The payload, as JSON.
    pub payload: Box<RawValue>,
    /// Its metadata, `recorded_at` included.
    pub metadata: Metadata,
}

impl RecordedEvent {
    /// Decodes the payload as `T`.
    ///
    /// # Errors
    ///
    /// [`Error::Corrupt`] naming the stream, version and position when the payload is not a
    /// `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Error> {
        serde_json::from_str(self.payload.get()).map_err(|e| self.corrupt(e.to_string()))
    }

    /// Decodes the event as an `E` of its stored type and schema version: the type stored
    /// with the event chooses the variant of `E`, whatever the payload looks like. Upcast it
    /// first ([`Upcasters::apply`](crate::Upcasters::apply)) if it may be of an older schema.
    ///
    /// `E` is normally a serde enum in its default representation, whose variant names are
    /// the stored types and whose payload is `{"Type": {...}}` (what [`Repository`] stores).
    /// Another representation is decoded by its shape, then checked the same way.
    ///
    /// # Errors
    ///
    /// Each naming the stream, version and position: [`Error::UnknownEventType`] when `E`
    /// has no variant of the stored type, [`Error::Mismatch`] when the payload is of another
    /// type or schema version than the one stored with it, and [`Error::Corrupt`] when it is
    /// not a valid `E`.
    ///
    /// [`Repository`]: crate::Repository
    pub fn decode_event<E: DomainEvent>(&self) -> Result<E, Error> {
        crate::decode::decode_event(self)
    }

    /// An [`Error::Corrupt`] about this event.
    pub fn corrupt(&self, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            stream: self.stream_id.clone(),
            version: self.version,
            position: self.position,
            reason: reason.into(),
        }
    }
}

/// An event's columns as a database returns them, before checking.
#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres")),
    allow(dead_code, reason = "used by the SQL backends only")
)]
pub(crate) struct RawEvent {
    pub(crate) stream_id: String,
    pub(crate) version: u64,
    pub(crate) position: GlobalPosition,
    pub(crate) id: Result<Uuid, String>,
    pub(crate) event_type: String,
    pub(crate) schema_version: i64,
    pub(crate) payload: String,
    pub(crate) metadata: String,
}

impl RawEvent {
    /// Checks the columns: a bad id, payload, metadata or schema version is
    /// [`Error::Corrupt`] naming the stream, version and position.
    #[cfg_attr(
        not(any(feature = "sqlite", feature = "postgres")),
        allow(dead_code, reason = "used by the SQL backends only")
    )]
    pub(crate) fn check(self) -> Result<RecordedEvent, Error> {
        let corrupt = |reason: String| Error::Corrupt {
            stream: self.stream_id.clone(),
            version: self.version,
            position: self.position,
            reason,
        };
        let id = self.id.map_err(|e| corrupt(format!("event id: {e}")))?;
        let payload = RawValue::from_string(self.payload)
            .map_err(|e| corrupt(format!("payload is not JSON: {e}")))?;
        let metadata: Metadata =
            serde_json::from_str(&self.metadata).map_err(|e| corrupt(format!("metadata: {e}")))?;
        let schema_version = u32::try_from(self.schema_version)
            .map_err(|_| corrupt(format!("schema version {}", self.schema_version)))?;
        Ok(RecordedEvent {
            stream_id: self.stream_id,
            version: self.version,
            position: self.position,
            id,
            event_type: self.event_type,
            schema_version,
            payload,
            metadata,
        })
    }
}

/// What an append did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppendResult {
    /// The stream's version after the append (its last event's version).
    pub version: u64,
    /// The global positions of the appended events, in order.
    pub positions: Vec<GlobalPosition>,
    /// True when every event was already stored (an idempotent retry): nothing was written.
    pub duplicate: bool,
}

/// A snapshot of an aggregate's state.
#[derive(Clone, Debug)]
pub struct Snapshot {
    /// The stream version the state includes.
    pub version: u64,
    /// The version of the state's shape: snapshots of another version are ignored.
    pub snapshot_version: u32,
    /// The state, as JSON.
    pub state: Box<RawValue>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_admit_what_they_say() {
        assert!(ExpectedVersion::Any.admits(0) && ExpectedVersion::Any.admits(9));
        assert!(ExpectedVersion::NoStream.admits(0) && !ExpectedVersion::NoStream.admits(1));
        assert!(!ExpectedVersion::StreamExists.admits(0));
        assert!(ExpectedVersion::Exact(3).admits(3) && !ExpectedVersion::Exact(3).admits(4));
    }

    #[test]
    fn metadata_builders_set_what_they_name() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let m = Metadata::default()
            .correlated(a)
            .caused_by(b)
            .for_tenant("acme");
        assert_eq!(
            (m.correlation_id, m.causation_id, m.tenant_id.as_deref()),
            (Some(a), Some(b), Some("acme"))
        );
    }

    #[test]
    fn positions_order_by_commit_then_index() {
        assert!(GlobalPosition::new(1, 9) < GlobalPosition::new(2, 1));
        assert!(GlobalPosition::new(0, 1) < GlobalPosition::new(0, 2));
        assert_eq!(GlobalPosition::new(0, 7).to_string(), "7");
        assert_eq!(GlobalPosition::new(5, 7).to_string(), "5/7");
    }
}
