//! What an aggregate is: its events, its state, what loading and committing give back.

use serde::{Serialize, de::DeserializeOwned};

use crate::{GlobalPosition, Metadata};

/// An event of an aggregate: serialised as JSON, with a type name and a schema version.
///
/// Events are read back by their stored type, not by the payload's shape (see
/// [`RecordedEvent::decode_event`](crate::RecordedEvent::decode_event)): make the event a serde enum in its default representation
/// whose variant names are the type names `event_type` returns, and bump `schema_version`
/// (with an upcaster for the old one) when a variant's fields change. An event whose payload
/// disagrees with its stored type or schema version is an error, never applied.
pub trait DomainEvent: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The type name stored with the event (`"Deposited"`).
    fn event_type(&self) -> &'static str;

    /// The current schema version of this event's type (1 unless it changed; older stored
    /// versions are brought up to it by [`Upcasters`](crate::Upcasters)).
    fn schema_version(&self) -> u32 {
        1
    }
}

/// A consistency boundary whose state is the fold of its events.
///
/// `handle` decides (a command against the current state gives events, or a domain error);
/// `apply` evolves (an event changes the state, and never fails: it already happened).
pub trait Aggregate: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// What it is asked to do. `Clone`, so a repository can retry it after a conflict.
    type Command: Clone + Send + Sync + 'static;
    /// What happened to it.
    type Event: DomainEvent;
    /// Why a command was refused (insufficient funds, ...).
    type Error: std::error::Error + Send + Sync + 'static;

    /// The version of the state's serialised shape. Change it when the state's fields change:
    /// snapshots of another version are then ignored and the state is rebuilt from events.
    const SNAPSHOT_VERSION: u32 = 1;

    /// Decides what happens when `command` meets this state.
    ///
    /// # Errors
    ///
    /// The domain's refusal.
    fn handle(&self, command: &Self::Command) -> Result<Vec<Self::Event>, Self::Error>;

    /// Applies an event that happened.
    fn apply(&mut self, event: &Self::Event);
}

/// An aggregate's state and the version it is at.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Loaded<A> {
    /// The state.
    pub state: A,
    /// The version of its last event (0: no events).
    pub version: u64,
}

/// What a successful command did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The stream's version after it.
    pub version: u64,
    /// The positions of its events (none when the command changed nothing).
    pub positions: Vec<GlobalPosition>,
    /// How many conflicts it retried through.
    pub retries: u32,
}

/// One event of an aggregate's history, decoded, with where and when it was recorded.
#[derive(Clone, Debug)]
pub struct HistoryEntry<Ev> {
    /// The event.
    pub event: Ev,
    /// Its version in the stream.
    pub version: u64,
    /// Its global position.
    pub position: GlobalPosition,
    /// Its metadata, `recorded_at` included.
    pub metadata: Metadata,
}
