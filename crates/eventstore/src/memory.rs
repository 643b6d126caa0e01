//! An in-memory event store, for tests and examples: the same guarantees as the durable
//! stores, without the durability.

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
    time::SystemTime,
};

use tokio::sync::watch;
use uuid::Uuid;

use crate::{
    AppendResult, Error, EventData, ExpectedVersion, GlobalPosition, RecordedEvent, Snapshot,
    event::micros,
    store::{Direction, EventStore, Seen, check_expected, seen, validate},
};

#[derive(Default)]
struct Stream {
    /// Indexes into `State::events`, by version − 1.
    events: Vec<usize>,
    metadata: Option<serde_json::Value>,
    snapshot: Option<Snapshot>,
}

#[derive(Default)]
struct State {
    events: Vec<RecordedEvent>,
    streams: HashMap<String, Stream>,
    ids: HashMap<Uuid, usize>,
}

/// An in-memory [`EventStore`]. Cloning shares the store.
#[derive(Clone)]
pub struct InMemoryStore {
    state: Arc<RwLock<State>>,
    head: watch::Sender<u64>,
    clock: Arc<dyn Fn() -> SystemTime + Send + Sync>,
}

impl std::fmt::Debug for InMemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InMemoryStore")
            .field("events", &self.state.read().map_or(0, |s| s.events.len()))
            .finish()
    }
}

impl Default for InMemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        crate::error::register_error_responses();
        Self {
            state: Arc::default(),
            head: watch::Sender::new(0),
            clock: Arc::new(SystemTime::now),
        }
    }

    /// Replaces the clock that stamps `recorded_at` (tests of time travel).
    #[must_use]
    pub fn with_clock(mut self, clock: impl Fn() -> SystemTime + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(clock);
        self
    }
}

impl EventStore for InMemoryStore {
    async fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> Result<AppendResult, Error> {
        validate(stream, &events)?;
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let found: Vec<_> = events
            .iter()
            .map(|e| {
                state.ids.get(&e.id).map(|&i| {
                    let r = &state.events[i];
                    (r.stream_id.clone(), r.version, r.position)
                })
            })
            .collect();
        if let Seen::All(done) = seen(stream, &events, &found)? {
            return Ok(done);
        }
        let current = state
            .streams
            .get(stream)
            .map_or(0, |s| s.events.len() as u64);
        check_expected(stream, expected, current)?;
        let recorded_at = micros((self.clock)());
        let mut positions = Vec::with_capacity(events.len());
        let mut version = current;
        for e in events {
            version += 1;
            let index = state.events.len();
            let position = GlobalPosition::new(0, index as u64 + 1);
            positions.push(position);
            let mut metadata = e.metadata;
            metadata.recorded_at_micros = recorded_at;
            state.ids.insert(e.id, index);
            state.events.push(RecordedEvent {
                stream_id: stream.to_owned(),
                version,
                position,
                id: e.id,
                event_type: e.event_type,
                schema_version: e.schema_version,
                payload: e.payload,
                metadata,
            });
            state
                .streams
                .entry(stream.to_owned())
                .or_default()
                .events
                .push(index);
        }
        let head = state.events.len() as u64;
        drop(state);
        self.head.send_replace(head);
        Ok(AppendResult {
            version,
            positions,
            duplicate: false,
        })
    }

    async fn read_stream(
        &self,
        stream: &str,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let Some(s) = state.streams.get(stream) else {
            return Ok(Vec::new());
        };
        let n = s.events.len() as u64;
        let pick = |v: u64| state.events[s.events[(v - 1) as usize]].clone();
        Ok(match direction {
            Direction::Forward => (from.max(1)..=n).take(max).map(pick).collect(),
            Direction::Backward => (1..=from.min(n)).rev().take(max).map(pick).collect(),
        })
    }

    async fn read_all(
        &self,
        after: GlobalPosition,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, Error> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let start = usize::try_from(after.index).unwrap_or(usize::MAX);
        Ok(state.events.iter().skip(start).take(max).cloned().collect())
    }

    async fn head(&self) -> Result<Option<RecordedEvent>, Error> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        Ok(state.events.last().cloned())
    }

    async fn count_after(&self, after: GlobalPosition, limit: u64) -> Result<u64, Error> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        let total = state.events.len() as u64;
        Ok(total.saturating_sub(after.index).min(limit))
    }

    async fn find_event(&self, id: Uuid) -> Result<Option<RecordedEvent>, Error> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        Ok(state.ids.get(&id).map(|&i| state.events[i].clone()))
    }

    async fn stream_version(&self, stream: &str) -> Result<u64, Error> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        Ok(state
            .streams
            .get(stream)
            .map_or(0, |s| s.events.len() as u64))
    }

    async fn stream_metadata(&self, stream: &str) -> Result<Option<serde_json::Value>, Error> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        Ok(state.streams.get(stream).and_then(|s| s.metadata.clone()))
    }

    async fn set_stream_metadata(
        &self,
        stream: &str,
        metadata: serde_json::Value,
    ) -> Result<(), Error> {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        state.streams.entry(stream.to_owned()).or_default().metadata = Some(metadata);
        Ok(())
    }

    async fn load_snapshot(&self, stream: &str) -> Result<Option<Snapshot>, Error> {
        let state = self.state.read().unwrap_or_else(PoisonError::into_inner);
        Ok(state.streams.get(stream).and_then(|s| s.snapshot.clone()))
    }

    async fn save_snapshot(&self, stream: &str, snapshot: Snapshot) -> Result<(), Error> {
        let mut state = self.state.write().unwrap_or_else(PoisonError::into_inner);
        let slot = &mut state.streams.entry(stream.to_owned()).or_default().snapshot;
        if slot
            .as_ref()
            .is_none_or(|old| old.version <= snapshot.version)
        {
            *slot = Some(snapshot);
        }
        Ok(())
    }

    async fn wait_for_events(&self, after: GlobalPosition) {
        let mut rx = self.head.subscribe();
        let _ = rx.wait_for(|head| *head > after.index).await;
    }
}
