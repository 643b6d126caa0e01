//! The transactional outbox relay: the event store's global log is the outbox. The relay reads
//! it after its own checkpoint, publishes each event to JetStream with its id as
//! `Nats-Msg-Id`, and moves the checkpoint to the last event JetStream acknowledged.
//!
//! Only committed events can be read from the log, so nothing uncommitted is ever published;
//! the checkpoint never passes an unacknowledged event, so nothing committed is lost. A crash
//! between a publish and its checkpoint republishes the rest of that batch, which JetStream
//! drops inside the stream's duplicate window (the acknowledgement says `duplicate`, and the
//! relay counts it). After a failed publish the relay retries one event at a time until the
//! failed one is acknowledged, so retries do not send the rest of its batch again and again
//! (past the window, those repeats would be stored again).

mod handle;
mod run;

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use async_nats::jetstream;
use tokio::task::JoinHandle;
use tower_patterns_core::{ConfigError, backoff::Backoff, rng::SplitMix64};
use tower_patterns_eventstore::{EventStore, GlobalPosition, RecordedEvent};

pub use handle::{OutboxRelayHandle, RelayStatus};

use super::nats::BusError;
#[cfg(doc)]
use super::nats::BusErrorKind;
use crate::{
    checkpoint::CheckpointStore,
    projection::{NoSource, Source},
};
use handle::Shared;
use run::Relay;

/// Events published, per relay.
pub const PUBLISHED: &str = "tower_patterns_cqrs_outbox_published_total";
/// Publishes JetStream answered as duplicates (a republish after a crash, inside the window).
pub const DUPLICATES: &str = "tower_patterns_cqrs_outbox_duplicates_total";
/// Failed publishes, reads and checkpoint writes, each followed by a backoff.
pub const ERRORS: &str = "tower_patterns_cqrs_outbox_errors_total";
/// Events after the relay's checkpoint, set when [`OutboxRelayHandle::lag`] runs.
pub const LAG_EVENTS: &str = "tower_patterns_cqrs_outbox_lag_events";

/// How far [`OutboxRelayHandle::lag`] counts.
const LAG_LIMIT: u64 = 100_000;

/// Marker: no checkpoint store set yet (`.checkpoints(c)` sets it).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoCheckpoints;

/// Marker: no JetStream context set yet (`.jetstream(ctx)` sets it).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoJetStream;

/// Marker: no subject chooser set yet (`.subject(f)` sets it).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoSubject;

pub(crate) type Observer = Arc<dyn Fn(&RecordedEvent, bool) + Send + Sync>;

/// The settings every relay has, whatever its parts.
struct Settings {
    name: Arc<str>,
    batch: usize,
    backoff: Backoff,
    cap: Duration,
    rng: u64,
    observer: Option<Observer>,
}

/// Builds an [`OutboxRelay`]: `OutboxRelay::builder(name)` then the required `.source(store)`,
/// `.checkpoints(c)`, `.jetstream(ctx)` and `.subject(f)`, optional settings, `build()`.
pub struct OutboxRelayBuilder<Src = NoSource, Ck = NoCheckpoints, Js = NoJetStream, Sub = NoSubject>
{
    settings: Settings,
    source: Src,
    checkpoints: Ck,
    jetstream: Js,
    subject: Sub,
}

impl<Src, Ck, Js, Sub> fmt::Debug for OutboxRelayBuilder<Src, Ck, Js, Sub> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxRelayBuilder")
            .field("name", &self.settings.name)
            .field("batch", &self.settings.batch)
            .field("backoff", &self.settings.backoff)
            .field("cap", &self.settings.cap)
            .finish_non_exhaustive()
    }
}

impl<Src, Ck, Js, Sub> OutboxRelayBuilder<Src, Ck, Js, Sub> {
    /// Events read, published and checkpointed together (default 256, at most 10,000): their
    /// publishes are pipelined, and a crash republishes at most one batch. After a failure,
    /// the relay publishes one event at a time until the failed event is acknowledged: the
    /// events behind it in its batch are sent again once, not at every retry.
    #[must_use]
    pub fn batch(mut self, events: usize) -> Self {
        self.settings.batch = events;
        self
    }

    /// The delay before retrying after a failure (default: exponential from 100 ms,
    /// doubling), and the longest delay (default 30 s).
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff, cap: Duration) -> Self {
        self.settings.backoff = backoff;
        self.settings.cap = cap;
        self
    }

    /// Seeds the backoff's jitter, for repeatable tests (by default a fixed value).
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.settings.rng = seed;
        self
    }

    /// Calls `f(event, duplicate)` after each event's acknowledgement, in log order, before
    /// the batch's checkpoint is stored: for tracing, per-type counts, or a test that stops
    /// the relay at a chosen event. Keep it quick: the relay waits for it.
    #[must_use]
    pub fn on_published(
        mut self,
        f: impl Fn(&RecordedEvent, bool) + Send + Sync + 'static,
    ) -> Self {
        self.settings.observer = Some(Arc::new(f));
        self
    }
}

impl<Ck, Js, Sub> OutboxRelayBuilder<NoSource, Ck, Js, Sub> {
    /// The event store whose global log is the outbox (required).
    pub fn source<S: EventStore>(
        self,
        store: Arc<S>,
    ) -> OutboxRelayBuilder<Source<S>, Ck, Js, Sub> {
        OutboxRelayBuilder {
            settings: self.settings,
            source: Source(store),
            checkpoints: self.checkpoints,
            jetstream: self.jetstream,
            subject: self.subject,
        }
    }
}

impl<Src, Js, Sub> OutboxRelayBuilder<Src, NoCheckpoints, Js, Sub> {
    /// Where the relay keeps its checkpoint, under the name `outbox:<name>` (required). Keep
    /// it durable (PostgreSQL or SQLite): a relay that forgets it republishes the whole log,
    /// and JetStream drops only the repeats inside its duplicate window.
    pub fn checkpoints<C: CheckpointStore>(
        self,
        checkpoints: C,
    ) -> OutboxRelayBuilder<Src, C, Js, Sub> {
        OutboxRelayBuilder {
            settings: self.settings,
            source: self.source,
            checkpoints,
            jetstream: self.jetstream,
            subject: self.subject,
        }
    }
}

impl<Src, Ck, Sub> OutboxRelayBuilder<Src, Ck, NoJetStream, Sub> {
    /// The JetStream context to publish with (required).
    pub fn jetstream(
        self,
        jetstream: jetstream::Context,
    ) -> OutboxRelayBuilder<Src, Ck, jetstream::Context, Sub> {
        OutboxRelayBuilder {
            settings: self.settings,
            source: self.source,
            checkpoints: self.checkpoints,
            jetstream,
            subject: self.subject,
        }
    }
}

impl<Src, Ck, Js> OutboxRelayBuilder<Src, Ck, Js, NoSubject> {
    /// The subject each event is published to (required), such as
    /// `|e| format!("catalog.{}", e.event_type)`. A stream must capture every subject it
    /// returns: a subject no stream captures fails, and the relay retries it with backoff.
    pub fn subject<F>(self, subject: F) -> OutboxRelayBuilder<Src, Ck, Js, F>
    where
        F: Fn(&RecordedEvent) -> String + Send + Sync + 'static,
    {
        OutboxRelayBuilder {
            settings: self.settings,
            source: self.source,
            checkpoints: self.checkpoints,
            jetstream: self.jetstream,
            subject,
        }
    }
}

impl<S, C, F> OutboxRelayBuilder<Source<S>, C, jetstream::Context, F>
where
    S: EventStore,
    C: CheckpointStore,
    F: Fn(&RecordedEvent) -> String + Send + Sync + 'static,
{
    /// Checks the settings, registers the relay's metrics and makes the relay, ready to run.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `name` (empty, longer than 64 characters, or other than
    /// ASCII letters, digits, `_` and `-`), `batch` (0 or over 10,000) or `backoff`.
    pub fn build(self) -> Result<OutboxRelay, ConfigError> {
        let Settings {
            name,
            batch,
            backoff,
            cap,
            rng,
            observer,
        } = self.settings;
        tower_patterns_core::error::check_name(&name)?;
        if batch == 0 || batch > 10_000 {
            return Err(ConfigError::new("batch", "must be 1 to 10,000 events"));
        }
        backoff.validate()?;
        if cap.is_zero() {
            return Err(ConfigError::new(
                "backoff",
                "the longest delay must be above zero",
            ));
        }
        for counter in [PUBLISHED, DUPLICATES, ERRORS] {
            metrics::counter!(counter, "name" => name.to_string()).absolute(0);
        }
        metrics::gauge!(LAG_EVENTS, "name" => name.to_string()).set(0.0);

        let store = self.source.0;
        let lag_store = store.clone();
        let lag: LagFn = Box::new(move |after| {
            let store = lag_store.clone();
            Box::pin(async move {
                let events = store.count_after(after, LAG_LIMIT).await?;
                if events == 0 {
                    return Ok((0, 0.0));
                }
                // The oldest unpublished event's age against the head, in the log's time.
                let oldest = store.read_all(after, 1).await?;
                let head = store.head().await?;
                let micros =
                    |e: Option<&RecordedEvent>| e.map_or(0, |e| e.metadata.recorded_at_micros);
                #[allow(clippy::cast_precision_loss)]
                let seconds =
                    micros(head.as_ref()).saturating_sub(micros(oldest.first())) as f64 / 1e6;
                Ok((events, seconds))
            })
        });
        let shared = Arc::new(Shared::new(name, lag));
        let relay = Relay {
            store,
            checkpoints: self.checkpoints,
            jetstream: self.jetstream,
            subject: self.subject,
            observer,
            batch,
            backoff,
            cap,
            rng: SplitMix64::new(rng),
            shared: shared.clone(),
        };
        Ok(OutboxRelay {
            handle: OutboxRelayHandle { shared },
            run: Box::pin(relay.run()),
        })
    }
}

type RunFuture = Pin<Box<dyn Future<Output = Result<(), BusError>> + Send>>;
type LagFuture =
    Pin<Box<dyn Future<Output = Result<(u64, f64), tower_patterns_eventstore::Error>> + Send>>;
pub(crate) type LagFn = Box<dyn Fn(GlobalPosition) -> LagFuture + Send + Sync>;

/// A built relay: run it (or spawn it) and watch it through its handle.
pub struct OutboxRelay {
    handle: OutboxRelayHandle,
    run: RunFuture,
}

impl fmt::Debug for OutboxRelay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxRelay")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

impl OutboxRelay {
    /// A builder for the relay named `name` (it labels metrics and names the checkpoint).
    pub fn builder(name: impl Into<Arc<str>>) -> OutboxRelayBuilder {
        OutboxRelayBuilder {
            settings: Settings {
                name: name.into(),
                batch: 256,
                backoff: Backoff::Exponential {
                    base: Duration::from_millis(100),
                    multiplier: 2.0,
                },
                cap: Duration::from_secs(30),
                rng: 0x6f75_7462_6f78,
                observer: None,
            },
            source: NoSource,
            checkpoints: NoCheckpoints,
            jetstream: NoJetStream,
            subject: NoSubject,
        }
    }

    /// The relay's handle.
    pub fn handle(&self) -> OutboxRelayHandle {
        self.handle.clone()
    }

    /// Publishes until [`stop`](OutboxRelayHandle::stop)ped (then `Ok`), retrying failures
    /// with backoff.
    ///
    /// # Errors
    ///
    /// [`BusErrorKind::Fenced`] when the stored checkpoint moved under the relay (another
    /// relay of the same name runs): it stops rather than race it.
    pub async fn run(self) -> Result<(), BusError> {
        self.run.await
    }

    /// Runs the relay on a Tokio task.
    pub fn spawn(self) -> (OutboxRelayHandle, JoinHandle<Result<(), BusError>>) {
        let handle = self.handle.clone();
        (handle, tokio::spawn(self.run))
    }
}
