//! A projection that lags on demand: the orders' read models read the event store through
//! [`Lagging`], whose reads of the global log first pass a chaos layer. With a latency fault
//! on it (`POST /admin/chaos/orders-projection`), every page the projection reads comes that
//! much later, as when a read model falls behind under load, and read-your-writes tokens have
//! something to wait for.

use std::sync::Arc;

use tower::{ServiceExt, service_fn, util::BoxCloneSyncService};
use tower_patterns::{
    BoxError,
    chaos::{AnswerAsError, ChaosHandle, ChaosLayer},
    eventstore::{
        AppendResult, Direction, Error, EventData, EventStore, ExpectedVersion, GlobalPosition,
        RecordedEvent, Snapshot,
    },
};
use uuid::Uuid;

/// A gate every read of the global log passes: a chaos layer over a service that does nothing.
type Gate = BoxCloneSyncService<(), (), BoxError>;

/// An event store whose global reads pass a chaos layer first; everything else goes straight
/// to the store.
pub(crate) struct Lagging<S> {
    inner: Arc<S>,
    gate: Gate,
}

impl<S> Lagging<S> {
    /// `inner`, its global reads delayed by the faults of `chaos`.
    pub(crate) fn new(
        inner: Arc<S>,
        chaos: &ChaosLayer<tower_patterns::chaos::Always, AnswerAsError>,
    ) -> Self {
        let gate = tower::Layer::layer(chaos, service_fn(|()| async { Ok::<_, BoxError>(()) }));
        Self {
            inner,
            gate: BoxCloneSyncService::new(gate),
        }
    }
}

/// The chaos layer of the orders' projections (one for every shard).
pub(crate) fn chaos() -> Result<
    (
        ChaosLayer<tower_patterns::chaos::Always, AnswerAsError>,
        ChaosHandle,
    ),
    BoxError,
> {
    let layer = ChaosLayer::builder("orders-projection")
        .answer_with(AnswerAsError)
        .build()?;
    let handle = layer.handle();
    Ok((layer, handle))
}

impl<S: EventStore> EventStore for Lagging<S> {
    fn append(
        &self,
        stream: &str,
        expected: ExpectedVersion,
        events: Vec<EventData>,
    ) -> impl Future<Output = Result<AppendResult, Error>> + Send {
        self.inner.append(stream, expected, events)
    }

    fn read_stream(
        &self,
        stream: &str,
        from: u64,
        direction: Direction,
        max: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>, Error>> + Send {
        self.inner.read_stream(stream, from, direction, max)
    }

    async fn read_all(
        &self,
        after: GlobalPosition,
        max: usize,
    ) -> Result<Vec<RecordedEvent>, Error> {
        // Only latency is meant here; any other fault reads as no delay.
        let _ = self.gate.clone().oneshot(()).await;
        self.inner.read_all(after, max).await
    }

    fn find_event(
        &self,
        id: Uuid,
    ) -> impl Future<Output = Result<Option<RecordedEvent>, Error>> + Send {
        self.inner.find_event(id)
    }

    fn stream_version(&self, stream: &str) -> impl Future<Output = Result<u64, Error>> + Send {
        self.inner.stream_version(stream)
    }

    fn stream_metadata(
        &self,
        stream: &str,
    ) -> impl Future<Output = Result<Option<serde_json::Value>, Error>> + Send {
        self.inner.stream_metadata(stream)
    }

    fn set_stream_metadata(
        &self,
        stream: &str,
        metadata: serde_json::Value,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        self.inner.set_stream_metadata(stream, metadata)
    }

    fn load_snapshot(
        &self,
        stream: &str,
    ) -> impl Future<Output = Result<Option<Snapshot>, Error>> + Send {
        self.inner.load_snapshot(stream)
    }

    fn save_snapshot(
        &self,
        stream: &str,
        snapshot: Snapshot,
    ) -> impl Future<Output = Result<(), Error>> + Send {
        self.inner.save_snapshot(stream, snapshot)
    }

    fn head(&self) -> impl Future<Output = Result<Option<RecordedEvent>, Error>> + Send {
        self.inner.head()
    }

    fn count_after(
        &self,
        after: GlobalPosition,
        limit: u64,
    ) -> impl Future<Output = Result<u64, Error>> + Send {
        self.inner.count_after(after, limit)
    }

    fn wait_for_events(&self, after: GlobalPosition) -> impl Future<Output = ()> + Send {
        self.inner.wait_for_events(after)
    }
}
