//! The [`EventStore`] trait, and the catch-up-then-live [`subscribe`] every store shares.

use std::{future::Future, sync::Arc};

use futures_util::stream::{self, Stream};
use uuid::Uuid;

use crate::{
    AppendResult, Error, EventData, ExpectedVersion, GlobalPosition, RecordedEvent, Snapshot,
};

/// Which way to read a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Versions `from`, `from + 1`, ... (oldest first).
    Forward,
    /// Versions `from`, `from − 1`, ... (newest first; `u64::MAX` starts at the end).
    Backward,
}

/// An event store: streams of events with optimistic concurrency, and one global log.
///
/// # Guarantees every implementation gives
///
/// - **Atomic appends**: the events of one `append` are stored all together or not at all,
///   with consecutive stream versions.
/// - **Expectations**: an append whose [`ExpectedVersion`] the stream does not meet stores
///   nothing and fails with [`Error::WrongExpectedVersion`]; of two appends expecting the same
///   version, exactly one wins.
/// - **Idempotence**: appending events whose ids are all stored already (in this stream)
///   stores nothing and succeeds with the original versions and positions
///   (`AppendResult::duplicate`), whatever the expectation: a retry after a lost answer is
///   safe. A mix of stored and new ids is [`Error::PartialDuplicate`].
/// - **One global order**: [`read_all`](EventStore::read_all) returns events in
///   [`GlobalPosition`] order and never skips an event: once a reader has passed a position, no
///   event appears before it later, even when transactions commit out of order.
/// - **Bad data is typed**: a payload that does not decode is [`Error::Corrupt`], naming the
///   stream, version and position.
pub trait EventStore: Send + Sync + 'static {
    /// Appends `events` to `stream` if it meets `expected`.
    fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> impl Future<Output = Result<AppendResult, Error>> + Send;

    /// Reads up to `max` events of `stream` from version `from`, in `direction`.
    fn read_stream(
        &self,
        stream: &str,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, Error>> + Send;

    /// Reads up to `max` events of the global log strictly after `after`, in order.
    fn read_all(
        &self,
        after: GlobalPosition,
        max: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, Error>> + Send;

    /// The event with id `id`, wherever it is stored.
    fn find_event(
        &self,
        id: Uuid,
    ) -> impl Future<Output = Result<Option<RecordedEvent>, Error>> + Send;

    /// The stream's version: its last event's version, 0 when it has none.
    fn stream_version(&self, stream: &str) -> impl Future<Output = Result<u64, Error>> + Send;

    /// The stream's metadata (any JSON), if set.
    fn stream_metadata(
        &self,
        stream: &str,
    ) -> impl Future<Output = Result<Option<serde_json::Value>, Error>> + Send;

    /// Sets the stream's metadata.
    fn set_stream_metadata(
        &self,
        stream: &str,
        metadata: serde_json::Value,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// The stream's latest snapshot, if any.
    fn load_snapshot(
        &self,
        stream: &str,
    ) -> impl Future<Output = Result<Option<Snapshot>, Error>> + Send;

    /// Stores a snapshot, replacing one of the same or an older version (a snapshot of an
    /// older version than the stored one is ignored).
    fn save_snapshot(
        &self,
        stream: &str,
        snapshot: Snapshot,
    ) -> impl Future<Output = Result<(), Error>> + Send;

    /// The last event [`read_all`](EventStore::read_all) can return now, if any: what a
    /// reader's lag is measured against. The default reads the whole log; the stores of this
    /// crate answer with one indexed query.
    fn head(&self) -> impl Future<Output = Result<Option<RecordedEvent>, Error>> + Send {
        async move {
            let mut after = GlobalPosition::START;
            let mut last = None;
            loop {
                let page = self.read_all(after, 512).await?;
                match page.last() {
                    None => return Ok(last),
                    Some(e) => after = e.position,
                }
                last = page.into_iter().last();
            }
        }
    }

    /// How many events [`read_all`](EventStore::read_all) would return after `after`, counting
    /// no further than `limit` (a reader's lag in events, cheap to ask when small). The default
    /// reads them; the stores of this crate count with one query.
    fn count_after(
        &self,
        after: GlobalPosition,
        limit: u64,
    ) -> impl Future<Output = Result<u64, Error>> + Send {
        async move {
            let mut after = after;
            let mut n = 0u64;
            while n < limit {
                let page = self.read_all(after, 512).await?;
                match page.last() {
                    None => break,
                    Some(e) => after = e.position,
                }
                n += page.len() as u64;
            }
            Ok(n.min(limit))
        }
    }

    /// Returns when events after `after` may exist: at once if they do, else when an append
    /// commits or a polling interval passes. May return early; callers read and wait again.
    fn wait_for_events(&self, after: GlobalPosition) -> impl Future<Output = ()> + Send;
}

/// Catch-up then live: every event after `after`, in global order, as it commits; the stream
/// never ends (stop by dropping it). Delivery is at-least-once across restarts: store the
/// position of the last event handled and subscribe from it.
pub fn subscribe<S: EventStore>(
    store: Arc<S>,
    after: GlobalPosition,
) -> impl Stream<Item = Result<RecordedEvent, Error>> + Send + 'static {
    const PAGE: usize = 512;
    stream::unfold(
        (store, after, std::collections::VecDeque::new()),
        |(store, mut after, mut buffered)| async move {
            loop {
                if let Some(e) = buffered.pop_front() {
                    return Some((Ok(e), (store, after, buffered)));
                }
                match store.read_all(after, PAGE).await {
                    Ok(page) if page.is_empty() => store.wait_for_events(after).await,
                    Ok(page) => {
                        after = page.last().map_or(after, |e: &RecordedEvent| e.position);
                        buffered.extend(page);
                    }
                    Err(e) => return Some((Err(e), (store, after, buffered))),
                }
            }
        },
    )
}

/// Parses stored stream metadata; bad JSON is [`Error::Corrupt`] naming the stream.
#[cfg_attr(
    not(any(feature = "sqlite", feature = "postgres")),
    allow(dead_code, reason = "used by the SQL backends only")
)]
pub(crate) fn parse_stream_metadata(
    stream: &str,
    raw: Option<String>,
) -> Result<Option<serde_json::Value>, Error> {
    raw.map(|m| {
        serde_json::from_str(&m).map_err(|e| Error::Corrupt {
            stream: stream.to_owned(),
            version: 0,
            position: GlobalPosition::START,
            reason: format!("stream metadata: {e}"),
        })
    })
    .transpose()
}

/// Refuses an append whose expectation a stream at `current` does not meet.
pub(crate) fn check_expected(
    stream: &str,
    expected: ExpectedVersion,
    current: u64,
) -> Result<(), Error> {
    if expected.admits(current) {
        Ok(())
    } else {
        Err(Error::WrongExpectedVersion {
            stream: stream.to_owned(),
            expected,
            actual: current,
        })
    }
}

pub(crate) fn validate(stream: &str, events: &[EventData]) -> Result<(), Error> {
    if stream.is_empty() {
        return Err(Error::Invalid("empty stream id".into()));
    }
    if stream.len() > 512 {
        return Err(Error::Invalid("stream id longer than 512 bytes".into()));
    }
    if events.is_empty() {
        return Err(Error::Invalid("no events to append".into()));
    }
    let mut ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    ids.sort_unstable();
    if ids.windows(2).any(|w| w[0] == w[1]) {
        return Err(Error::Invalid(
            "the same event id twice in one append".into(),
        ));
    }
    if events.iter().any(|e| e.event_type.is_empty()) {
        return Err(Error::Invalid("an event with an empty type".into()));
    }
    Ok(())
}

/// What an append found of its ids already stored.
pub(crate) enum Seen {
    /// None: append.
    New,
    /// All, in this stream, at these versions and positions: answer them.
    All(AppendResult),
}

/// Decides from the stored copies of the append's ids (`found[i]` for `events[i]`: its stream,
/// version and position).
pub(crate) fn seen(
    stream: &str,
    events: &[EventData],
    found: &[Option<(String, u64, GlobalPosition)>],
) -> Result<Seen, Error> {
    let stored = found.iter().filter(|f| f.is_some()).count();
    if stored == 0 {
        return Ok(Seen::New);
    }
    for (e, f) in events.iter().zip(found) {
        if let Some((s, _, _)) = f
            && s != stream
        {
            return Err(Error::DuplicateElsewhere {
                id: e.id,
                stream: s.clone(),
            });
        }
    }
    if stored < events.len() {
        return Err(Error::PartialDuplicate {
            stream: stream.to_owned(),
        });
    }
    let version = found
        .iter()
        .flatten()
        .map(|(_, v, _)| *v)
        .max()
        .unwrap_or(0);
    Ok(Seen::All(AppendResult {
        version,
        positions: found.iter().flatten().map(|(_, _, p)| *p).collect(),
        duplicate: true,
    }))
}
