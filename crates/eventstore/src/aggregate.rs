//! Aggregates on the event store: load, decide, append with optimistic concurrency, retry;
//! snapshots; time travel; commands as a tower `Service`.

use std::{
    fmt,
    marker::PhantomData,
    sync::Arc,
    task::{Context, Poll},
    time::SystemTime,
};

use futures_util::{FutureExt as _, future::BoxFuture};
use serde::{Serialize, de::DeserializeOwned};
use tower_service::Service;
use uuid::Uuid;

use crate::{
    Direction, Error, EventData, EventStore, ExpectedVersion, GlobalPosition, Metadata,
    RecordedEvent, Snapshot, Upcasters, event::micros,
};

/// An event of an aggregate: serialised as JSON, with a type name and a schema version.
///
/// Events are read back by their stored type, not by the payload's shape (see
/// [`RecordedEvent::decode_event`]): make the event a serde enum in its default representation
/// whose variant names are the type names `event_type` returns, and bump `schema_version`
/// (with an upcaster for the old one) when a variant's fields change. An event whose payload
/// disagrees with its stored type or schema version is an error, never applied.
pub trait DomainEvent: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The type name stored with the event (`"Deposited"`).
    fn event_type(&self) -> &'static str;

    /// The current schema version of this event's type (1 unless it changed; older stored
    /// versions are brought up to it by [`Upcasters`]).
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

/// Why a command or load failed.
#[derive(Debug)]
#[non_exhaustive]
pub enum RepositoryError<E> {
    /// The aggregate refused the command.
    Domain(E),
    /// The store failed or returned bad data (typed: [`Error`]).
    Store(Error),
    /// Other writers won every attempt.
    Conflict {
        /// The stream.
        stream: String,
        /// The attempts made.
        attempts: u32,
    },
}

impl<E: fmt::Display> fmt::Display for RepositoryError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Domain(e) => write!(f, "command refused: {e}"),
            Self::Store(e) => write!(f, "{e}"),
            Self::Conflict { stream, attempts } => write!(
                f,
                "stream {stream:?}: concurrent writers won all {attempts} attempts"
            ),
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for RepositoryError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Domain(e) => Some(e),
            Self::Store(e) => Some(e),
            Self::Conflict { .. } => None,
        }
    }
}

impl<E> From<Error> for RepositoryError<E> {
    fn from(e: Error) -> Self {
        Self::Store(e)
    }
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

/// Loads and saves aggregates of type `A` in the streams `<prefix><id>` of a store.
pub struct Repository<A, S> {
    store: Arc<S>,
    prefix: Arc<str>,
    upcasters: Arc<Upcasters>,
    snapshot_every: Option<u64>,
    max_retries: u32,
    _a: PhantomData<fn() -> A>,
}

impl<A, S> Clone for Repository<A, S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            prefix: self.prefix.clone(),
            upcasters: self.upcasters.clone(),
            snapshot_every: self.snapshot_every,
            max_retries: self.max_retries,
            _a: PhantomData,
        }
    }
}

impl<A, S> fmt::Debug for Repository<A, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Repository")
            .field("prefix", &self.prefix)
            .field("snapshot_every", &self.snapshot_every)
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

const PAGE: usize = 1_000;

impl<A: Aggregate, S: EventStore> Repository<A, S> {
    /// A repository of streams named `<prefix><id>` (`"account-"`): no snapshots, 3 retries.
    pub fn new(store: Arc<S>, prefix: impl Into<Arc<str>>) -> Self {
        Self {
            store,
            prefix: prefix.into(),
            upcasters: Arc::new(Upcasters::new()),
            snapshot_every: None,
            max_retries: 3,
            _a: PhantomData,
        }
    }

    /// Takes a snapshot each time the stream's version crosses a multiple of `n`.
    #[must_use]
    pub fn snapshot_every(mut self, n: u64) -> Self {
        self.snapshot_every = (n > 0).then_some(n);
        self
    }

    /// How many times a command is retried after a version conflict (default 3).
    #[must_use]
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Upcasters applied to every event read.
    #[must_use]
    pub fn upcasters(mut self, upcasters: Upcasters) -> Self {
        self.upcasters = Arc::new(upcasters);
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<S> {
        &self.store
    }

    /// The stream of aggregate `id`.
    pub fn stream(&self, id: &str) -> String {
        format!("{}{id}", self.prefix)
    }

    fn decode(&self, event: RecordedEvent) -> Result<(RecordedEvent, A::Event), Error> {
        let event = self.upcasters.apply(event)?;
        let decoded = event.decode_event()?;
        Ok((event, decoded))
    }

    /// Folds the events of `stream` after `state.version`, up to `until` (inclusive), stopping
    /// early at the first event `stop` says is too late.
    async fn fold(
        &self,
        stream: &str,
        mut state: Loaded<A>,
        until: u64,
        stop: impl Fn(&RecordedEvent) -> bool,
    ) -> Result<Loaded<A>, Error> {
        loop {
            let page = self
                .store
                .read_stream(stream, state.version + 1, Direction::Forward, PAGE)
                .await?;
            let n = page.len();
            for raw in page {
                if raw.version > until || stop(&raw) {
                    return Ok(state);
                }
                let (raw, event) = self.decode(raw)?;
                state.state.apply(&event);
                state.version = raw.version;
            }
            if n < PAGE {
                return Ok(state);
            }
        }
    }

    /// The aggregate's current state: its latest usable snapshot plus the events after it.
    ///
    /// # Errors
    ///
    /// A store error, or an event that does not decode (typed, naming the event).
    pub async fn load(&self, id: &str) -> Result<Loaded<A>, Error> {
        let stream = self.stream(id);
        let start = match self.store.load_snapshot(&stream).await? {
            Some(s) if s.snapshot_version == A::SNAPSHOT_VERSION => {
                match serde_json::from_str::<A>(s.state.get()) {
                    Ok(state) => Loaded {
                        state,
                        version: s.version,
                    },
                    // A snapshot that no longer decodes is ignored: events are the truth.
                    Err(_) => Loaded::default(),
                }
            }
            _ => Loaded::default(),
        };
        self.fold(&stream, start, u64::MAX, |_| false).await
    }

    /// The current state rebuilt from every event, ignoring snapshots.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load).
    pub async fn load_from_events(&self, id: &str) -> Result<Loaded<A>, Error> {
        self.fold(&self.stream(id), Loaded::default(), u64::MAX, |_| false)
            .await
    }

    /// The state as of `version` (time travel by version).
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load).
    pub async fn state_at_version(&self, id: &str, version: u64) -> Result<Loaded<A>, Error> {
        self.fold(&self.stream(id), Loaded::default(), version, |_| false)
            .await
    }

    /// The state as it was at `at`: every event recorded at or before it (the bank
    /// account's balance on a date).
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load).
    pub async fn state_at(&self, id: &str, at: SystemTime) -> Result<Loaded<A>, Error> {
        let at = micros(at);
        self.fold(&self.stream(id), Loaded::default(), u64::MAX, |e| {
            e.metadata.recorded_at_micros > at
        })
        .await
    }

    /// Every event of the aggregate, decoded, oldest first.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load).
    pub async fn history(&self, id: &str) -> Result<Vec<HistoryEntry<A::Event>>, Error> {
        let stream = self.stream(id);
        let mut out = Vec::new();
        let mut from = 1;
        loop {
            let page = self
                .store
                .read_stream(&stream, from, Direction::Forward, PAGE)
                .await?;
            let n = page.len();
            for raw in page {
                from = raw.version + 1;
                let (raw, event) = self.decode(raw)?;
                out.push(HistoryEntry {
                    event,
                    version: raw.version,
                    position: raw.position,
                    metadata: raw.metadata,
                });
            }
            if n < PAGE {
                return Ok(out);
            }
        }
    }

    /// Runs `command` against aggregate `id`: load, decide, append expecting the loaded
    /// version; on a conflict, reload and decide again, up to the retry bound.
    ///
    /// # Errors
    ///
    /// The aggregate's refusal, a store error, or [`RepositoryError::Conflict`].
    pub async fn execute(
        &self,
        id: &str,
        command: &A::Command,
        metadata: Metadata,
    ) -> Result<Committed, RepositoryError<A::Error>> {
        self.execute_keyed(id, command, metadata, None).await
    }

    /// Like [`execute`](Self::execute), with an idempotency key: the events get ids derived
    /// from it, so running the same command again with the same key (a client's retry after a
    /// lost answer) stores nothing twice and answers the first run's versions.
    ///
    /// # Errors
    ///
    /// As [`execute`](Self::execute); [`Error::PartialDuplicate`] if the retried command now
    /// decides more events than the first run stored.
    pub async fn execute_idempotent(
        &self,
        id: &str,
        command: &A::Command,
        metadata: Metadata,
        key: Uuid,
    ) -> Result<Committed, RepositoryError<A::Error>> {
        self.execute_keyed(id, command, metadata, Some(key)).await
    }

    async fn execute_keyed(
        &self,
        id: &str,
        command: &A::Command,
        metadata: Metadata,
        key: Option<Uuid>,
    ) -> Result<Committed, RepositoryError<A::Error>> {
        let stream = self.stream(id);
        if let Some(key) = key
            && let Some(done) = self.already_committed(&stream, key).await?
        {
            return Ok(done);
        }
        let mut attempts = 0;
        loop {
            attempts += 1;
            let loaded = self.load(id).await?;
            let events = loaded
                .state
                .handle(command)
                .map_err(RepositoryError::Domain)?;
            if events.is_empty() {
                return Ok(Committed {
                    version: loaded.version,
                    positions: Vec::new(),
                    retries: attempts - 1,
                });
            }
            let data = events
                .iter()
                .enumerate()
                .map(|(i, e)| {
                    EventData::json(e.event_type(), e).map(|d| {
                        let d = d
                            .with_schema_version(e.schema_version())
                            .with_metadata(metadata.clone());
                        match key {
                            Some(key) => d.with_id(derived_id(key, i)),
                            None => d,
                        }
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let expected = if loaded.version == 0 {
                ExpectedVersion::NoStream
            } else {
                ExpectedVersion::Exact(loaded.version)
            };
            match self.store.append(&stream, expected, data).await {
                Ok(done) => {
                    self.maybe_snapshot(&stream, loaded, &events, done.version)
                        .await;
                    return Ok(Committed {
                        version: done.version,
                        positions: done.positions,
                        retries: attempts - 1,
                    });
                }
                Err(e) if e.is_conflict() && attempts <= self.max_retries => {}
                Err(e) if e.is_conflict() => {
                    return Err(RepositoryError::Conflict { stream, attempts });
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Takes a snapshot of aggregate `id` now (for example after a migration, or for an
    /// aggregate that grew long before snapshots were turned on). Returns its version.
    ///
    /// # Errors
    ///
    /// As [`load`](Self::load), or when the state does not serialise.
    pub async fn take_snapshot(&self, id: &str) -> Result<u64, Error> {
        let loaded = self.load(id).await?;
        let state = serde_json::value::to_raw_value(&loaded.state)
            .map_err(|e| Error::Encode(e.to_string()))?;
        self.store
            .save_snapshot(
                &self.stream(id),
                Snapshot {
                    version: loaded.version,
                    snapshot_version: A::SNAPSHOT_VERSION,
                    state,
                },
            )
            .await?;
        Ok(loaded.version)
    }

    /// What the command with idempotency `key` committed, if it ran already: its events are
    /// found by their derived ids.
    async fn already_committed(&self, stream: &str, key: Uuid) -> Result<Option<Committed>, Error> {
        let mut positions = Vec::new();
        let mut version = 0;
        loop {
            match self
                .store
                .find_event(derived_id(key, positions.len()))
                .await?
            {
                Some(e) if e.stream_id == stream => {
                    version = e.version;
                    positions.push(e.position);
                }
                Some(e) => {
                    return Err(Error::DuplicateElsewhere {
                        id: e.id,
                        stream: e.stream_id,
                    });
                }
                None => break,
            }
        }
        Ok((!positions.is_empty()).then_some(Committed {
            version,
            positions,
            retries: 0,
        }))
    }

    async fn maybe_snapshot(
        &self,
        stream: &str,
        mut loaded: Loaded<A>,
        events: &[A::Event],
        version: u64,
    ) {
        let Some(n) = self.snapshot_every else { return };
        if loaded.version / n == version / n {
            return;
        }
        for e in events {
            loaded.state.apply(e);
        }
        let state = match serde_json::value::to_raw_value(&loaded.state) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(target: "tower_patterns::eventstore", stream, error = %e, "snapshot not encodable");
                return;
            }
        };
        let snapshot = Snapshot {
            version,
            snapshot_version: A::SNAPSHOT_VERSION,
            state,
        };
        if let Err(e) = self.store.save_snapshot(stream, snapshot).await {
            // Snapshots are an optimisation: the command has succeeded.
            tracing::warn!(target: "tower_patterns::eventstore", stream, error = %e, "snapshot not saved");
        }
    }
}

/// The id of the `index`-th event of the command with idempotency `key`: a UUID v8 made of
/// the key with the index folded into its last eight bytes.
fn derived_id(key: Uuid, index: usize) -> Uuid {
    let mut bytes = *key.as_bytes();
    let tail = u64::from_be_bytes(bytes[8..].try_into().unwrap_or_default())
        ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    bytes[8..].copy_from_slice(&tail.to_be_bytes());
    Uuid::new_v8(bytes)
}

/// A command for aggregate `id`, with the metadata its events will carry.
#[derive(Clone, Debug)]
pub struct Command<C> {
    /// The aggregate's id (its stream is the repository's prefix + id).
    pub id: String,
    /// The command.
    pub command: C,
    /// Correlation, causation and tenant for the resulting events.
    pub metadata: Metadata,
    /// An idempotency key: with one, a retry of the same command (a retry layer in front of the
    /// service, or a client) appends nothing twice. See [`Repository::execute_idempotent`].
    pub idempotency_key: Option<Uuid>,
}

impl<C> Command<C> {
    /// `command` for aggregate `id`, with empty metadata.
    pub fn new(id: impl Into<String>, command: C) -> Self {
        Self {
            id: id.into(),
            command,
            metadata: Metadata::default(),
            idempotency_key: None,
        }
    }

    /// Sets the idempotency key.
    #[must_use]
    pub fn idempotent(mut self, key: Uuid) -> Self {
        self.idempotency_key = Some(key);
        self
    }

    /// Sets the metadata.
    #[must_use]
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }
}

/// Commands as a tower `Service`: `Service<Command<A::Command>>` answering [`Committed`], so
/// breakers, timeouts, bulkheads and retries stack on command handling. Always ready.
pub struct CommandService<A, S> {
    repository: Repository<A, S>,
}

impl<A, S> Clone for CommandService<A, S> {
    fn clone(&self) -> Self {
        Self {
            repository: self.repository.clone(),
        }
    }
}

impl<A, S> fmt::Debug for CommandService<A, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandService")
            .field("repository", &self.repository)
            .finish()
    }
}

impl<A, S> CommandService<A, S> {
    /// Commands handled by `repository`.
    pub fn new(repository: Repository<A, S>) -> Self {
        Self { repository }
    }
}

impl<A: Aggregate, S: EventStore> Service<Command<A::Command>> for CommandService<A, S> {
    type Response = Committed;
    type Error = RepositoryError<A::Error>;
    type Future = BoxFuture<'static, Result<Committed, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Command<A::Command>) -> Self::Future {
        let repository = self.repository.clone();
        async move {
            repository
                .execute_keyed(&req.id, &req.command, req.metadata, req.idempotency_key)
                .await
        }
        .boxed()
    }
}
