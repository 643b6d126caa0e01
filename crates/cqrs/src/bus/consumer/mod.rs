//! A durable JetStream pull consumer that hands each event the relay published to a handler
//! (a `tower::Service`), acknowledging it once handled: redelivered with a backoff delay on
//! failure, set aside on a dead-letter subject after `max_deliver` deliveries.

use std::{
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicU8, AtomicU64, Ordering},
    },
    time::Duration,
};

mod ledger;
mod run;

use async_nats::jetstream;
use tokio::{sync::watch, task::JoinHandle};
use tower_patterns_core::{
    BoxError, ConfigError,
    backoff::Backoff,
    observe::{Health, Report, StateHandle},
    rng::SplitMix64,
};
use tower_patterns_eventstore::RecordedEvent;
use tower_service::Service;

#[cfg(doc)]
use super::nats::BusErrorKind;
use super::{nats::BusError, outbox::NoJetStream};
#[cfg(doc)]
use crate::projection::ApplyError;
use ledger::Ledger;
use run::Runner;

/// Events handled and acknowledged, per consumer.
pub const HANDLED: &str = "tower_patterns_cqrs_consumer_handled_total";
/// Deliveries of a message delivered before (after a failure or an expired `ack_wait`).
pub const REDELIVERED: &str = "tower_patterns_cqrs_consumer_redelivered_total";
/// Messages published to the dead-letter subject and terminated.
pub const DEAD_LETTERED: &str = "tower_patterns_cqrs_consumer_dead_lettered_total";

/// An event as a consumer receives it: the event, and how JetStream delivered it.
#[derive(Clone, Debug)]
pub struct Delivery {
    /// The event, as the relay read it from the log (id, stream, version, position, type,
    /// payload, metadata).
    pub event: RecordedEvent,
    /// The subject it was published to.
    pub subject: String,
    /// Its sequence number in the JetStream stream.
    pub stream_sequence: u64,
    /// Deliveries so far, this one included (1 the first time).
    pub delivered: u64,
}

/// Marker: no stream set yet (`.stream(s)` sets it).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoStream;

/// Marker: no handler set yet (`.handler(h)` sets it).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoHandler;

#[derive(Clone, Debug)]
pub(crate) struct Settings {
    pub(crate) name: Arc<str>,
    pub(crate) max_deliver: u32,
    pub(crate) ack_wait: Duration,
    pub(crate) backoff: Backoff,
    pub(crate) cap: Duration,
    pub(crate) batch: usize,
    pub(crate) dead_letter: Option<String>,
    pub(crate) filter: Option<String>,
    pub(crate) rng: u64,
}

/// Builds a [`JetStreamConsumer`]: `JetStreamConsumer::builder(name)` (the durable consumer's
/// name) then the required `.jetstream(ctx)`, `.stream(s)` and `.handler(h)`, optional
/// settings, `build()`.
pub struct JetStreamConsumerBuilder<St = NoStream, Js = NoJetStream, H = NoHandler> {
    settings: Settings,
    stream: St,
    jetstream: Js,
    handler: H,
}

impl<St, Js, H> fmt::Debug for JetStreamConsumerBuilder<St, Js, H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamConsumerBuilder")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl<St, Js, H> JetStreamConsumerBuilder<St, Js, H> {
    /// Deliveries of one message before it goes to the dead-letter subject (default 5): after
    /// the handler fails the last one, or gives no answer to it within `ack_wait`.
    #[must_use]
    pub fn max_deliver(mut self, deliveries: u32) -> Self {
        self.settings.max_deliver = deliveries;
        self
    }

    /// How long a delivered message may stay unacknowledged before JetStream delivers it
    /// again, or after the last delivery gives up on it (default 30 s). JetStream starts
    /// this clock when it sends the message, not when the handler starts on it, and a pull
    /// brings up to [`batch`](Self::batch) messages that wait their turn: `ack_wait` must
    /// exceed `batch` times the handler's slowest call (or lower the batch).
    #[must_use]
    pub fn ack_wait(mut self, wait: Duration) -> Self {
        self.settings.ack_wait = wait;
        self
    }

    /// The delay before a failed message is delivered again (default: exponential from
    /// 1 s, doubling), and the longest delay (default 1 min).
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff, cap: Duration) -> Self {
        self.settings.backoff = backoff;
        self.settings.cap = cap;
        self
    }

    /// Messages asked for per pull (default 64). They wait in the client, one handled after
    /// another, while their `ack_wait` runs: with a slow handler, a smaller batch keeps the
    /// last of them from expiring before their turn (see [`ack_wait`](Self::ack_wait)).
    #[must_use]
    pub fn batch(mut self, messages: usize) -> Self {
        self.settings.batch = messages;
        self
    }

    /// Where messages go after `max_deliver` failures (default
    /// `tp.dead_letter.<stream>.<name>`); some stream must capture it.
    #[must_use]
    pub fn dead_letter(mut self, subject: impl Into<String>) -> Self {
        self.settings.dead_letter = Some(subject.into());
        self
    }

    /// Only messages of subjects matching `subject` (wildcards allowed; default all).
    #[must_use]
    pub fn filter_subject(mut self, subject: impl Into<String>) -> Self {
        self.settings.filter = Some(subject.into());
        self
    }

    /// Seeds the backoff's jitter, for repeatable tests (by default a fixed value).
    #[must_use]
    pub fn seed(mut self, seed: u64) -> Self {
        self.settings.rng = seed;
        self
    }
}

impl<Js, H> JetStreamConsumerBuilder<NoStream, Js, H> {
    /// The JetStream stream to consume (required), as [`ensure_stream`](super::ensure_stream)
    /// or `jetstream.get_stream(name)` returns it.
    pub fn stream(
        self,
        stream: jetstream::stream::Stream,
    ) -> JetStreamConsumerBuilder<jetstream::stream::Stream, Js, H> {
        JetStreamConsumerBuilder {
            settings: self.settings,
            stream,
            jetstream: self.jetstream,
            handler: self.handler,
        }
    }
}

impl<St, H> JetStreamConsumerBuilder<St, NoJetStream, H> {
    /// The JetStream context (required): the consumer listens on it for JetStream's
    /// advisory that a message reached `max_deliver` deliveries without an answer, and sets
    /// that message aside too.
    pub fn jetstream(
        self,
        jetstream: jetstream::Context,
    ) -> JetStreamConsumerBuilder<St, jetstream::Context, H> {
        JetStreamConsumerBuilder {
            settings: self.settings,
            stream: self.stream,
            jetstream,
            handler: self.handler,
        }
    }
}

impl<St, Js> JetStreamConsumerBuilder<St, Js, NoHandler> {
    /// What handles each event (required): a `tower::Service<Delivery>`, or an async closure
    /// through `tower::service_fn`. `Ok` acknowledges the message; an error has it delivered
    /// again, except an [`ApplyError`] that is not transient, which goes to the dead-letter
    /// subject at once.
    pub fn handler<H>(self, handler: H) -> JetStreamConsumerBuilder<St, Js, H>
    where
        H: Service<Delivery, Response = ()> + Send + 'static,
        H::Error: Into<BoxError>,
        H::Future: Send,
    {
        JetStreamConsumerBuilder {
            settings: self.settings,
            stream: self.stream,
            jetstream: self.jetstream,
            handler,
        }
    }
}

impl<H> JetStreamConsumerBuilder<jetstream::stream::Stream, jetstream::Context, H>
where
    H: Service<Delivery, Response = ()> + Send + 'static,
    H::Error: Into<BoxError>,
    H::Future: Send,
{
    /// Checks the settings, registers the metrics and makes the consumer; it is created on
    /// the server (or found) when it runs.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `name` (empty, over 64 characters, or other than ASCII
    /// letters, digits, `_` and `-`), `max_deliver` (0), `ack_wait` (zero), `batch` (0) or
    /// `backoff`.
    pub fn build(self) -> Result<JetStreamConsumer, ConfigError> {
        let s = self.settings;
        tower_patterns_core::error::check_name(&s.name).map_err(|_| {
            ConfigError::new(
                "name",
                "must be 1 to 64 ASCII letters, digits, '_' or '-' (it names the durable consumer)",
            )
        })?;
        if s.max_deliver == 0 {
            return Err(ConfigError::new("max_deliver", "must be at least 1"));
        }
        if s.ack_wait.is_zero() {
            return Err(ConfigError::new("ack_wait", "must be above zero"));
        }
        if s.batch == 0 {
            return Err(ConfigError::new("batch", "must be at least 1"));
        }
        s.backoff.validate()?;
        for counter in [HANDLED, REDELIVERED, DEAD_LETTERED] {
            metrics::counter!(counter, "name" => s.name.to_string()).absolute(0);
        }
        let shared = Arc::new(Shared {
            // An advisory comes about ack_wait after the delivery it is about.
            ledger: Mutex::new(Ledger::new(
                s.ack_wait.saturating_mul(4).max(Duration::from_secs(60)),
                s.batch.saturating_mul(16).max(4096),
            )),
            name: s.name.clone(),
            stop: watch::Sender::new(false),
            status: AtomicU8::new(STARTING),
            handled: AtomicU64::new(0),
            redelivered: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            dead_lettered: AtomicU64::new(0),
        });
        let run = Runner {
            rng: SplitMix64::new(s.rng),
            settings: s,
            stream: self.stream,
            jetstream: self.jetstream,
            handler: self.handler,
            shared: shared.clone(),
        }
        .run();
        Ok(JetStreamConsumer {
            handle: JetStreamConsumerHandle { shared },
            run: Box::pin(run),
        })
    }
}

type RunFuture = Pin<Box<dyn Future<Output = Result<(), BusError>> + Send>>;

/// A built consumer: run it (or spawn it) and watch it through its handle.
///
/// # Dead letters
///
/// A message goes to the dead-letter subject when the handler fails its last delivery (or
/// fails it permanently), and also when the last delivery gets no answer within `ack_wait`
/// from an instance that no longer holds it: the process stopped or crashed in the middle of
/// it, or the message waited in the client's buffer past `ack_wait`.
/// JetStream then delivers the message no more and announces it with the advisory
/// `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.<stream>.<consumer>`; every running instance
/// of the consumer listens for it (one of them takes each, as a queue group), reads the
/// message back from the stream by its sequence and sets it aside, with the error header
/// saying that no answer came within `ack_wait`.
///
/// An instance never does both to one message: it keeps a bounded record of the stream
/// sequences its loop holds (taken, not yet answered) and answered lately (for a few
/// `ack_wait`s), and of those its listener set aside. The listener leaves a message its own
/// loop holds or answered to that loop (which dead-letters it itself if the handler fails
/// the last delivery, or fails an earlier one it still held when JetStream gave up; an `Ok`
/// after `ack_wait` counts as handled), and the loop skips a
/// message the listener set aside while it still waited in the client's buffer (its last
/// `ack_wait` ran out before its turn: see [`ack_wait`](JetStreamConsumerBuilder::ack_wait)).
///
/// The limits: JetStream sends the advisory once, when it would have delivered the message
/// again (when a pull request is waiting, such as the one a restarted instance makes), and
/// does not keep it. If no instance of the consumer is connected at that moment, the
/// message gets no dead letter; it stays in the stream (up to the stream's limits), but no
/// consumer is given it again. To keep a record of such messages, capture
/// `$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.>` in a stream of its own.
/// With several instances, the advisory goes to any one of them: one that does not hold the
/// message dead-letters it even while another still has it in its buffer or its handler,
/// and that other then handles it too (as does a handler that answers `Ok` after the
/// record forgot the message). Replaying a dead letter into a handler that records event ids
/// with the [`Inbox`](crate::inbox) is harmless. A message gone from the stream by then
/// (its limits, or deleted) is logged, not dead-lettered.
pub struct JetStreamConsumer {
    handle: JetStreamConsumerHandle,
    run: RunFuture,
}

impl fmt::Debug for JetStreamConsumer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamConsumer")
            .field("handle", &self.handle)
            .finish_non_exhaustive()
    }
}

impl JetStreamConsumer {
    /// A builder for the durable consumer named `name`.
    pub fn builder(name: impl Into<Arc<str>>) -> JetStreamConsumerBuilder {
        JetStreamConsumerBuilder {
            settings: Settings {
                name: name.into(),
                max_deliver: 5,
                ack_wait: Duration::from_secs(30),
                backoff: Backoff::Exponential {
                    base: Duration::from_secs(1),
                    multiplier: 2.0,
                },
                cap: Duration::from_secs(60),
                batch: 64,
                dead_letter: None,
                filter: None,
                rng: 0x636f_6e73_756d_6572,
            },
            stream: NoStream,
            jetstream: NoJetStream,
            handler: NoHandler,
        }
    }

    /// The consumer's handle.
    pub fn handle(&self) -> JetStreamConsumerHandle {
        self.handle.clone()
    }

    /// Creates (or finds) the durable consumer, then handles messages until
    /// [`stop`](JetStreamConsumerHandle::stop)ped (then `Ok`).
    ///
    /// # Errors
    ///
    /// [`BusErrorKind::Consumer`] when the consumer cannot be created, the max-deliveries
    /// advisory cannot be subscribed to, or its messages cannot be read (the message stream
    /// ended: connection closed for good).
    pub async fn run(self) -> Result<(), BusError> {
        self.run.await
    }

    /// Runs the consumer on a Tokio task.
    pub fn spawn(self) -> (JetStreamConsumerHandle, JoinHandle<Result<(), BusError>>) {
        let handle = self.handle.clone();
        (handle, tokio::spawn(self.run))
    }
}

pub(crate) const STARTING: u8 = 0;
pub(crate) const RUNNING: u8 = 1;
pub(crate) const STOPPED: u8 = 2;

pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) status: AtomicU8,
    pub(crate) handled: AtomicU64,
    pub(crate) redelivered: AtomicU64,
    pub(crate) failures: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) ledger: Mutex<Ledger>,
}

impl Shared {
    /// The ledger, also after a panic elsewhere while it was held (it stays consistent).
    pub(crate) fn ledger(&self) -> std::sync::MutexGuard<'_, Ledger> {
        self.ledger.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A consumer's handle: `Clone`, cheap. Reports as pattern `cqrs`, as the relay's does.
#[derive(Clone)]
pub struct JetStreamConsumerHandle {
    shared: Arc<Shared>,
}

impl fmt::Debug for JetStreamConsumerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JetStreamConsumerHandle")
            .field("name", &self.shared.name)
            .field("handled", &self.handled())
            .finish_non_exhaustive()
    }
}

impl JetStreamConsumerHandle {
    /// Messages handled and acknowledged.
    pub fn handled(&self) -> u64 {
        self.shared.handled.load(Ordering::Relaxed)
    }

    /// Deliveries of messages delivered before.
    pub fn redelivered(&self) -> u64 {
        self.shared.redelivered.load(Ordering::Relaxed)
    }

    /// Handler failures.
    pub fn failures(&self) -> u64 {
        self.shared.failures.load(Ordering::Relaxed)
    }

    /// Messages set aside on the dead-letter subject.
    pub fn dead_lettered(&self) -> u64 {
        self.shared.dead_lettered.load(Ordering::Relaxed)
    }

    /// Asks the consumer to stop after the message it is handling.
    pub fn stop(&self) {
        self.shared.stop.send_replace(true);
    }
}

impl StateHandle for JetStreamConsumerHandle {
    fn pattern(&self) -> &'static str {
        "cqrs"
    }

    fn name(&self) -> &str {
        &self.shared.name
    }

    #[allow(clippy::cast_precision_loss)]
    fn report(&self) -> Report {
        let (health, state) = match self.shared.status.load(Ordering::Relaxed) {
            STARTING => (Health::Ready, "starting"),
            RUNNING => (Health::Ready, "running"),
            _ => (Health::Unavailable, "stopped"),
        };
        Report::new("cqrs", self.shared.name.to_string(), health, state)
            .with_value("handled", self.handled() as f64)
            .with_value("redelivered", self.redelivered() as f64)
            .with_value("failures", self.failures() as f64)
            .with_value("dead_lettered", self.dead_lettered() as f64)
    }
}
