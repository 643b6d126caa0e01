//! The repository: loads aggregates (snapshot + later events), handles commands with
//! optimistic concurrency and retries, takes snapshots, travels in time.

use std::{fmt, marker::PhantomData, sync::Arc, time::SystemTime};

use uuid::Uuid;

use super::{
    error::RepositoryError,
    model::{Aggregate, Committed, DomainEvent, HistoryEntry, Loaded},
};
use crate::{
    Direction, Error, EventData, EventStore, ExpectedVersion, Metadata, RecordedEvent, Snapshot,
    Upcasters, event::micros,
};

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
        crate::error::register_error_responses();
        tower_patterns_core::http::register_error_response::<RepositoryError<A::Error>>();
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

    pub(super) async fn execute_keyed(
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
