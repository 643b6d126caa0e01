//! The dual write as a tower service, and its builder.

use std::{
    fmt,
    sync::{Arc, atomic::Ordering},
    task::{Context, Poll},
    time::Duration,
};

use tower_patterns_core::{ConfigError, backoff::Backoff, error::check_name, rng::SplitMix64};
use tower_service::Service;

use super::{
    APPLIED, DualError, DualWriteHandle, FAILURES, MISSED, MISSED_TOTAL, PENDING, SUPERSEDED,
    Write, Written,
    future::ResponseFuture,
    handle::Shared,
    policy::RetryPolicy,
    row::{check_key, now_micros, now_ms},
    store::{OutboxStore, RowStore},
    worker::Worker,
};

/// Marker: no primary set yet (`.primary(p)` sets it).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoPrimary;

/// Marker: no secondary set yet (`.secondary(s)` sets it).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoSecondary;

/// Builds a [`DualWrite`]: `DualWrite::builder(name)`, the required `.primary(p)` and
/// `.secondary(s)`, optional settings, `build()`.
pub struct DualWriteBuilder<P = NoPrimary, S = NoSecondary> {
    name: Arc<str>,
    primary: P,
    secondary: S,
    settings: DualSettings,
}

/// The builder's settings that change no type parameter.
struct DualSettings {
    backoff: Backoff,
    cap: Duration,
    missed_after: u32,
    batch: usize,
    poll: Duration,
    seed: u64,
}

impl<P, S> fmt::Debug for DualWriteBuilder<P, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DualWriteBuilder")
            .field("name", &self.name)
            .field("backoff", &self.settings.backoff)
            .field("cap", &self.settings.cap)
            .field("missed_after", &self.settings.missed_after)
            .field("batch", &self.settings.batch)
            .field("poll", &self.settings.poll)
            .finish_non_exhaustive()
    }
}

impl<P, S> DualWriteBuilder<P, S> {
    /// The delay before retrying a failed delivery, by attempt (default: exponential from
    /// 100 ms, doubling), and the longest delay (default 30 s). A write the secondary
    /// missed is still retried, at most `cap` apart, so it arrives soon after the secondary
    /// is back.
    #[must_use]
    pub fn backoff(mut self, backoff: Backoff, cap: Duration) -> Self {
        self.settings.backoff = backoff;
        self.settings.cap = cap;
        self
    }

    /// After how many failed attempts a write is recorded as missed (default 5, at least
    /// 1). A failure that retrying is not expected to cure (not
    /// [`transient`](DualError::is_transient)) records it at once.
    #[must_use]
    pub const fn missed_after(mut self, attempts: u32) -> Self {
        self.settings.missed_after = attempts;
        self
    }

    /// Outbox entries the worker handles in one round, one transaction on the secondary
    /// (default 256, 1 to 10,000).
    #[must_use]
    pub const fn batch(mut self, entries: usize) -> Self {
        self.settings.batch = entries;
        self
    }

    /// How often the worker looks for due entries when nothing wakes it (default 100 ms,
    /// 1 ms to 1 hour). A write wakes it at once; retries are due to within this interval.
    #[must_use]
    pub const fn poll(mut self, every: Duration) -> Self {
        self.settings.poll = every;
        self
    }

    /// Seeds the backoff's jitter, for repeatable tests (by default a fixed value).
    #[must_use]
    pub const fn seed(mut self, seed: u64) -> Self {
        self.settings.seed = seed;
        self
    }
}

impl<S> DualWriteBuilder<NoPrimary, S> {
    /// The primary store (required): writes commit there, with their outbox entries.
    pub fn primary<P: OutboxStore>(self, primary: P) -> DualWriteBuilder<P, S> {
        DualWriteBuilder {
            name: self.name,
            primary,
            secondary: self.secondary,
            settings: self.settings,
        }
    }
}

impl<P> DualWriteBuilder<P, NoSecondary> {
    /// The secondary store (required): the worker delivers every write to it.
    pub fn secondary<S: RowStore>(self, secondary: S) -> DualWriteBuilder<P, S> {
        DualWriteBuilder {
            name: self.name,
            primary: self.primary,
            secondary,
            settings: self.settings,
        }
    }
}

impl<P: OutboxStore, S: RowStore> DualWriteBuilder<P, S> {
    /// Checks the settings, registers the metrics and starts the worker on the current
    /// Tokio runtime. The worker first delivers whatever the outbox holds from before (a
    /// previous process's writes).
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `name` (empty, over 64 characters, or other than ASCII
    /// letters, digits, `_` and `-`), `backoff` (a bad multiplier, a zero cap),
    /// `missed_after` (0), `batch` (0 or over 10,000), `poll` (under 1 ms or over an hour),
    /// or `runtime` (called outside a Tokio runtime).
    pub fn build(self) -> Result<DualWrite<P>, ConfigError> {
        check_name(&self.name)?;
        self.settings.backoff.validate()?;
        if self.settings.cap.is_zero() {
            return Err(ConfigError::new(
                "backoff",
                "the longest delay must be above zero",
            ));
        }
        if self.settings.missed_after == 0 {
            return Err(ConfigError::new("missed_after", "must be at least 1"));
        }
        if self.settings.batch == 0 || self.settings.batch > 10_000 {
            return Err(ConfigError::new("batch", "must be 1 to 10,000 entries"));
        }
        if self.settings.poll < Duration::from_millis(1)
            || self.settings.poll > Duration::from_secs(3_600)
        {
            return Err(ConfigError::new("poll", "must be 1 ms to 1 hour"));
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return Err(ConfigError::new(
                "runtime",
                "build() needs a Tokio runtime to run the worker on",
            ));
        };
        super::error::register();
        let name = self.name.to_string();
        for counter in [APPLIED, SUPERSEDED, FAILURES, MISSED_TOTAL] {
            metrics::counter!(counter, "name" => name.clone()).increment(0);
        }
        for gauge in [PENDING, MISSED] {
            metrics::gauge!(gauge, "name" => name.clone()).set(0.0);
        }

        let primary = Arc::new(self.primary);
        let lister = primary.clone();
        let shared = Arc::new(Shared::new(
            self.name,
            Box::new(move |limit| {
                let primary = lister.clone();
                Box::pin(async move { primary.missed(limit).await })
            }),
        ));
        let worker = Worker {
            primary: primary.clone(),
            secondary: self.secondary,
            shared: shared.clone(),
            policy: RetryPolicy {
                backoff: self.settings.backoff,
                cap: self.settings.cap,
                missed_after: self.settings.missed_after,
            },
            batch: self.settings.batch,
            poll: self.settings.poll,
            rng: SplitMix64::new(self.settings.seed),
        };
        runtime.spawn(worker.run());
        Ok(DualWrite {
            primary,
            guard: Arc::new(StopOnDrop(shared.clone())),
            shared,
        })
    }
}

/// Stops the worker when the last service clone goes.
struct StopOnDrop(Arc<Shared>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop.send_replace(true);
    }
}

/// Dual writes: a tower [`Service`] of [`Write`]s that commits each on the primary, with an
/// outbox entry in the same transaction, and answers once it is committed; a worker then
/// delivers it to the secondary. See the [module docs](super).
///
/// Always ready. Cloning shares the worker; it stops when the last clone is dropped (or by
/// [`DualWriteHandle::stop`]).
pub struct DualWrite<P> {
    primary: Arc<P>,
    shared: Arc<Shared>,
    guard: Arc<StopOnDrop>,
}

impl<P> Clone for DualWrite<P> {
    fn clone(&self) -> Self {
        Self {
            primary: self.primary.clone(),
            shared: self.shared.clone(),
            guard: self.guard.clone(),
        }
    }
}

impl<P> fmt::Debug for DualWrite<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DualWrite")
            .field("name", &self.shared.name)
            .finish_non_exhaustive()
    }
}

impl DualWrite<NoPrimary> {
    /// A builder for the dual write named `name` (it labels metrics, logs and the handle).
    pub fn builder(name: impl Into<Arc<str>>) -> DualWriteBuilder {
        DualWriteBuilder {
            name: name.into(),
            primary: NoPrimary,
            secondary: NoSecondary,
            settings: DualSettings {
                backoff: Backoff::Exponential {
                    base: Duration::from_millis(100),
                    multiplier: 2.0,
                },
                cap: Duration::from_secs(30),
                missed_after: 5,
                batch: 256,
                poll: Duration::from_millis(100),
                seed: 0x6475_616c,
            },
        }
    }
}

impl<P> DualWrite<P> {
    /// The handle: counts, missed writes, waiting for the outbox to drain, stopping.
    pub fn handle(&self) -> DualWriteHandle {
        DualWriteHandle {
            shared: self.shared.clone(),
        }
    }

    /// The primary store (for reads).
    pub fn primary(&self) -> &P {
        &self.primary
    }
}

impl<P: OutboxStore> Service<Write> for DualWrite<P> {
    type Response = Written;
    type Error = DualError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), DualError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, write: Write) -> ResponseFuture {
        let (primary, shared) = (self.primary.clone(), self.shared.clone());
        ResponseFuture {
            inner: Box::pin(async move {
                check_key(write.key())?;
                let written = primary.write(&write, now_micros(), now_ms()).await?;
                shared.written.fetch_add(1, Ordering::Relaxed);
                shared.pending.fetch_add(1, Ordering::Relaxed);
                shared.wake.notify_one();
                Ok(written)
            }),
        }
    }
}
