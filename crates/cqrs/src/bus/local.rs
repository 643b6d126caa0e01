//! `LocalBus`: an in-process event bus for one node, fed by a projection.
//!
//! The bus is an [`ExternalProjection`]: run it as one (`Projection::builder(name)
//! .source(store).external(checkpoints, bus.clone())`), so it reads the global log from a
//! checkpoint, at least once. Each event it applies goes to every [`Subscriber`] as an
//! `Arc<RecordedEvent>` through a Tokio `broadcast` channel: publishing never waits for a
//! subscriber.
//!
//! - **A redelivery is dropped**: a subscriber remembers the position of the last event it
//!   received and skips any event at or before it (the projection redelivers after a restart
//!   of its runner).
//! - **A slow subscriber is told what it missed**: when it falls more than the bus's capacity
//!   behind, its next [`recv`](Subscriber::recv) fails with a [`SubscriberError`] saying how many
//!   events it missed and after which position; [`catch_up`](Subscriber::catch_up) reads
//!   them from the event store, then receiving goes on.
//! - Nothing survives a restart of the process: a subscriber that must see every event keeps
//!   its position and starts with [`subscribe_at`](LocalBus::subscribe_at) and `catch_up`.
//!
//! ```
//! use std::sync::Arc;
//! use tower_patterns_cqrs::{MemoryCheckpoints, Projection, bus::local::LocalBus};
//! use tower_patterns_eventstore::{EventData, EventStore, ExpectedVersion, InMemoryStore};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let store = Arc::new(InMemoryStore::new());
//! let bus = LocalBus::builder("events").capacity(1024).build()?;
//! let mut subscriber = bus.subscribe();
//! let (projection, _task) = Projection::builder("bus")
//!     .source(store.clone())
//!     .external(MemoryCheckpoints::new(), bus.clone())
//!     .build()?
//!     .spawn();
//!
//! let event = EventData::json("PriceUpdated", &serde_json::json!({"cents": 999}))?;
//! store.append("product-1", ExpectedVersion::Any, vec![event]).await?;
//! let received = subscriber.recv().await?;
//! assert_eq!(received.event_type, "PriceUpdated");
//! projection.shutdown();
//! # Ok(())
//! # }
//! ```

use std::{
    fmt,
    sync::{Arc, Mutex, PoisonError},
};

use tokio::sync::broadcast::{self, error::RecvError};
use tower_patterns_core::ConfigError;
use tower_patterns_eventstore::{EventStore, GlobalPosition, RecordedEvent};

use crate::projection::{ApplyError, ExternalProjection};

/// The default number of events a subscriber may fall behind before it lags.
const DEFAULT_CAPACITY: usize = 1024;

/// Builds a [`LocalBus`]: `LocalBus::builder(name).capacity(n).build()`.
#[derive(Debug)]
pub struct LocalBusBuilder {
    name: Arc<str>,
    capacity: usize,
}

impl LocalBusBuilder {
    /// How many events a subscriber may fall behind before it lags (default 1,024).
    #[must_use]
    pub fn capacity(mut self, events: usize) -> Self {
        self.capacity = events;
        self
    }

    /// Makes the bus.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `capacity` when it is zero or above `usize::MAX / 2`, or
    /// `name` when the name is empty.
    pub fn build(self) -> Result<LocalBus, ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        if self.capacity == 0 || self.capacity > usize::MAX / 2 {
            return Err(ConfigError::new(
                "capacity",
                "must be at least 1 and at most usize::MAX / 2",
            ));
        }
        let (tx, _) = broadcast::channel(self.capacity);
        Ok(LocalBus {
            inner: Arc::new(Inner {
                name: self.name,
                tx,
                last: Mutex::new(GlobalPosition::START),
            }),
        })
    }
}

struct Inner {
    name: Arc<str>,
    tx: broadcast::Sender<Arc<RecordedEvent>>,
    /// The position of the last event published; held while publishing, so a new subscriber
    /// starts exactly after it.
    last: Mutex<GlobalPosition>,
}

/// An in-process event bus (see the [module docs](self)). `Clone`: clones share the channel.
#[derive(Clone)]
pub struct LocalBus {
    inner: Arc<Inner>,
}

impl fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalBus")
            .field("name", &self.inner.name)
            .field("subscribers", &self.inner.tx.receiver_count())
            .finish()
    }
}

impl LocalBus {
    /// A builder for the bus named `name`.
    pub fn builder(name: impl Into<Arc<str>>) -> LocalBusBuilder {
        LocalBusBuilder {
            name: name.into(),
            capacity: DEFAULT_CAPACITY,
        }
    }

    /// The bus's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// A subscriber that receives the events published from now on.
    pub fn subscribe(&self) -> Subscriber {
        let last = self.lock();
        Subscriber {
            rx: self.inner.tx.subscribe(),
            after: *last,
        }
    }

    /// A subscriber that has seen every event up to `position` (its own stored position):
    /// it skips events at or before it, and [`catch_up`](Subscriber::catch_up) reads those
    /// after it that were published before it subscribed.
    pub fn subscribe_at(&self, position: GlobalPosition) -> Subscriber {
        let _last = self.lock();
        Subscriber {
            rx: self.inner.tx.subscribe(),
            after: position,
        }
    }

    /// How many subscribers are listening.
    pub fn subscribers(&self) -> usize {
        self.inner.tx.receiver_count()
    }

    /// The position of the last event published.
    pub fn position(&self) -> GlobalPosition {
        *self.lock()
    }

    /// Publishes `event` to every subscriber (what the projection does for each event).
    pub fn publish(&self, event: Arc<RecordedEvent>) {
        let mut last = self.lock();
        if event.position > *last {
            *last = event.position;
        }
        // No subscriber is not an error: the event is simply not wanted now.
        let _ = self.inner.tx.send(event);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GlobalPosition> {
        self.inner
            .last
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl ExternalProjection for LocalBus {
    async fn apply(&self, event: &RecordedEvent) -> Result<(), ApplyError> {
        self.publish(Arc::new(event.clone()));
        Ok(())
    }
}

/// Why a subscriber received no event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SubscriberError {
    kind: Kind,
    after: GlobalPosition,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Lagged(u64),
    Closed,
}

impl SubscriberError {
    /// How many events the subscriber missed by lagging (`None`: the bus is closed).
    pub fn missed(&self) -> Option<u64> {
        match self.kind {
            Kind::Lagged(n) => Some(n),
            Kind::Closed => None,
        }
    }

    /// True when every handle of the bus is gone: nothing more will come.
    pub fn is_closed(&self) -> bool {
        self.kind == Kind::Closed
    }

    /// The position of the last event the subscriber received: read the store after it to
    /// recover what it missed ([`Subscriber::catch_up`]).
    pub fn after(&self) -> GlobalPosition {
        self.after
    }
}

impl fmt::Display for SubscriberError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            Kind::Lagged(n) => write!(
                f,
                "the subscriber lagged: {n} events missed after position {}",
                self.after
            ),
            Kind::Closed => f.write_str("the bus is closed"),
        }
    }
}

impl std::error::Error for SubscriberError {}

/// A subscriber of a [`LocalBus`].
#[derive(Debug)]
pub struct Subscriber {
    rx: broadcast::Receiver<Arc<RecordedEvent>>,
    after: GlobalPosition,
}

impl Subscriber {
    /// The next event after the last one received, skipping repeats.
    ///
    /// # Errors
    ///
    /// A [`SubscriberError`] when the subscriber lagged (how many events it missed, and after
    /// which position: then [`catch_up`](Self::catch_up), or receive on from the oldest event
    /// the bus still holds) or when the bus is closed.
    pub async fn recv(&mut self) -> Result<Arc<RecordedEvent>, SubscriberError> {
        loop {
            match self.rx.recv().await {
                Ok(event) if event.position <= self.after => {} // a redelivery
                Ok(event) => {
                    self.after = event.position;
                    return Ok(event);
                }
                Err(RecvError::Lagged(n)) => {
                    return Err(SubscriberError {
                        kind: Kind::Lagged(n),
                        after: self.after,
                    });
                }
                Err(RecvError::Closed) => {
                    return Err(SubscriberError {
                        kind: Kind::Closed,
                        after: self.after,
                    });
                }
            }
        }
    }

    /// The position of the last event received (or caught up).
    pub fn position(&self) -> GlobalPosition {
        self.after
    }

    /// Reads up to `max` events after the last one received from `store` (what a lag
    /// skipped); they count as received, so the bus's copies of them are skipped. It first
    /// drops the stale events the bus still holds for this subscriber and listens from the
    /// newest: every event the bus publishes is stored first, so an event published before
    /// that is in the store, and one published after it is received (once: by position).
    /// Call it again while it returns `max` events.
    ///
    /// # Errors
    ///
    /// The store's error.
    pub async fn catch_up<S: EventStore>(
        &mut self,
        store: &S,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, tower_patterns_eventstore::Error> {
        self.rx = self.rx.resubscribe();
        let events = store.read_all(self.after, max).await?;
        if let Some(last) = events.last() {
            self.after = last.position;
        }
        Ok(events)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tower_patterns_eventstore::{EventData, ExpectedVersion, InMemoryStore};

    use super::*;
    use crate::{MemoryCheckpoints, Projection};

    async fn append(store: &InMemoryStore, n: usize) {
        for i in 0..n {
            let e = EventData::json("Tick", &i).unwrap();
            store
                .append("clock-1", ExpectedVersion::Any, vec![e])
                .await
                .unwrap();
        }
    }

    fn indexes(events: &[RecordedEvent]) -> Vec<u64> {
        events.iter().map(|e| e.position.index).collect()
    }

    #[tokio::test]
    async fn subscribers_get_each_event_once_in_order_and_a_lag_says_what_was_missed() {
        let store = Arc::new(InMemoryStore::new());
        let bus = LocalBus::builder("bus").capacity(4).build().unwrap();
        let mut fast = bus.subscribe();
        let mut slow = bus.subscribe();
        let (projection, task) = Projection::builder("bus")
            .source(store.clone())
            .external(MemoryCheckpoints::new(), bus.clone())
            .batch(3)
            .build()
            .unwrap()
            .spawn();
        for i in 1..=10 {
            append(&store, 1).await;
            assert_eq!(fast.recv().await.unwrap().position.index, i);
        }
        assert!(
            projection
                .wait_for(GlobalPosition::new(0, 10), Duration::from_secs(5))
                .await
        );
        // The slow one missed the 6 the bus no longer holds.
        let lag = slow.recv().await.unwrap_err();
        assert_eq!(
            (lag.missed(), lag.after()),
            (Some(6), GlobalPosition::START)
        );
        assert!(lag.to_string().contains("6 events missed"), "{lag}");
        let missed = slow.catch_up(&*store, 100).await.unwrap();
        assert_eq!(indexes(&missed), (1..=10).collect::<Vec<_>>());
        // The bus's copies of 7..=10 were caught up already: skipped.
        bus.publish(Arc::new(missed[9].clone()));
        append(&store, 1).await;
        assert_eq!(slow.recv().await.unwrap().position.index, 11);
        assert_eq!(fast.recv().await.unwrap().position.index, 11);
        projection.shutdown();
        task.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_redelivery_is_skipped_and_a_late_subscriber_starts_after_the_last_event() {
        let store = InMemoryStore::new();
        append(&store, 3).await;
        let events = store.read_all(GlobalPosition::START, 10).await.unwrap();
        let bus = LocalBus::builder("bus").build().unwrap();
        let mut early = bus.subscribe();
        for e in &events[..2] {
            bus.apply(e).await.unwrap();
        }
        let mut late = bus.subscribe();
        assert_eq!(late.position(), GlobalPosition::new(0, 2));
        for e in &events {
            bus.apply(e).await.unwrap(); // the first two again: a redelivery after a restart
        }
        assert_eq!(early.recv().await.unwrap().position.index, 1);
        assert_eq!(early.recv().await.unwrap().position.index, 2);
        assert_eq!(early.recv().await.unwrap().position.index, 3);
        assert_eq!(late.recv().await.unwrap().position.index, 3);

        let mut resumed = bus.subscribe_at(GlobalPosition::new(0, 1));
        let missed = resumed.catch_up(&store, 10).await.unwrap();
        assert_eq!(indexes(&missed), [2, 3]);
        assert_eq!(bus.subscribers(), 3);
        assert_eq!(bus.position(), GlobalPosition::new(0, 3));
        assert!(format!("{bus:?}").contains("subscribers: 3"));
        drop(bus);
        let closed = early.recv().await.unwrap_err();
        assert!(closed.is_closed() && closed.missed().is_none());
        assert_eq!(closed.to_string(), "the bus is closed");
    }

    #[test]
    fn a_capacity_of_zero_or_an_empty_name_is_refused() {
        let e = LocalBus::builder("b").capacity(0).build().unwrap_err();
        assert!(e.to_string().contains("capacity"), "{e}");
        assert!(LocalBus::builder("").build().is_err());
        assert_eq!(LocalBus::builder("b").build().unwrap().name(), "b");
    }
}
