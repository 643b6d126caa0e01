//! The relay's handle: where it stands, its counts and lag, and a way to stop it.

use std::{
    fmt,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering},
    },
    time::Duration,
};

use tokio::sync::watch;
use tower_patterns_core::observe::{Health, Report, StateHandle};
use tower_patterns_eventstore::GlobalPosition;

use super::{ERRORS, LAG_EVENTS, LagFn};
use crate::{
    bus::nats::{BusError, BusErrorKind},
    projection::Lag,
};

/// Where a relay stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RelayStatus {
    /// Loading its checkpoint.
    Starting,
    /// Publishing a backlog.
    CatchingUp,
    /// Everything readable is published; waiting for new events.
    Live,
    /// A read, publish or checkpoint failed; waiting to try again.
    Retrying {
        /// Failures in a row.
        attempt: u32,
    },
    /// Stopped (by its handle, or fenced by another relay).
    Stopped,
}

pub(crate) const STARTING: u8 = 0;
pub(crate) const CATCHING_UP: u8 = 1;
pub(crate) const LIVE: u8 = 2;
pub(crate) const RETRYING: u8 = 3;
pub(crate) const STOPPED: u8 = 4;

pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) position: watch::Sender<GlobalPosition>,
    pub(crate) stop: watch::Sender<bool>,
    pub(crate) status: AtomicU8,
    pub(crate) attempt: AtomicU32,
    pub(crate) published: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) lag_events: AtomicU64,
    pub(crate) last_error: Mutex<Option<String>>,
    pub(crate) lag: LagFn,
}

impl Shared {
    pub(crate) fn new(name: Arc<str>, lag: LagFn) -> Self {
        Self {
            name,
            position: watch::Sender::new(GlobalPosition::START),
            stop: watch::Sender::new(false),
            status: AtomicU8::new(STARTING),
            attempt: AtomicU32::new(0),
            published: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            lag_events: AtomicU64::new(0),
            last_error: Mutex::new(None),
            lag,
        }
    }

    pub(crate) fn set_status(&self, status: u8) {
        self.status.store(status, Ordering::Relaxed);
    }

    pub(crate) fn failed(&self, attempt: u32, error: &BusError) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(ERRORS, "name" => self.name.to_string()).increment(1);
        self.attempt.store(attempt, Ordering::Relaxed);
        self.set_status(RETRYING);
        tracing::warn!(target: "tower_patterns::cqrs", relay = %self.name, attempt, %error, "outbox relay failed, retrying");
        *self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error.to_string());
    }
}

/// A relay's handle: `Clone`, cheap, and it never slows the relay. Reports as pattern
/// `cqrs` (the relay is part of the CQRS crate, and its metrics are named
/// `tower_patterns_cqrs_outbox_*`, which is what a report's pattern promises).
#[derive(Clone)]
pub struct OutboxRelayHandle {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for OutboxRelayHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutboxRelayHandle")
            .field("name", &self.shared.name)
            .field("position", &self.position())
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

impl OutboxRelayHandle {
    /// The checkpoint: every event up to it is published and acknowledged.
    pub fn position(&self) -> GlobalPosition {
        *self.shared.position.borrow()
    }

    /// Events published (acknowledged by JetStream, duplicates included) since the relay was
    /// built.
    pub fn published(&self) -> u64 {
        self.shared.published.load(Ordering::Relaxed)
    }

    /// Acknowledgements that said `duplicate`: republished events JetStream dropped.
    pub fn duplicates(&self) -> u64 {
        self.shared.duplicates.load(Ordering::Relaxed)
    }

    /// Failures (each followed by a backoff) since the relay was built.
    pub fn errors(&self) -> u64 {
        self.shared.errors.load(Ordering::Relaxed)
    }

    /// The last failure's message, if any failed.
    pub fn last_error(&self) -> Option<String> {
        self.shared
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Where the relay stands.
    pub fn status(&self) -> RelayStatus {
        match self.shared.status.load(Ordering::Relaxed) {
            STARTING => RelayStatus::Starting,
            CATCHING_UP => RelayStatus::CatchingUp,
            LIVE => RelayStatus::Live,
            RETRYING => RelayStatus::Retrying {
                attempt: self.shared.attempt.load(Ordering::Relaxed),
            },
            _ => RelayStatus::Stopped,
        }
    }

    /// Waits until the checkpoint reaches `position`, at most `within`; true if it did.
    pub async fn wait_for(&self, position: GlobalPosition, within: Duration) -> bool {
        let mut rx = self.shared.position.subscribe();
        tokio::time::timeout(within, rx.wait_for(|p| *p >= position))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The events after the checkpoint (counted up to 100,000), and how much older the
    /// oldest of them is than the head of the log, in seconds as the store recorded them (0
    /// when none waits); sets the `tower_patterns_cqrs_outbox_lag_events` gauge.
    ///
    /// # Errors
    ///
    /// [`BusErrorKind::Store`] when the store cannot count.
    pub async fn lag(&self) -> Result<Lag, BusError> {
        let (events, seconds) = (self.shared.lag)(self.position()).await.map_err(|e| {
            BusError::with(
                BusErrorKind::Store,
                format!("relay {}: lag", self.shared.name),
                e,
            )
        })?;
        self.shared.lag_events.store(events, Ordering::Relaxed);
        #[allow(clippy::cast_precision_loss)]
        metrics::gauge!(LAG_EVENTS, "name" => self.shared.name.to_string()).set(events as f64);
        Ok(Lag { events, seconds })
    }

    /// Asks the relay to stop: it finishes the batch it is publishing (acks and checkpoint),
    /// then `run` returns `Ok`.
    pub fn stop(&self) {
        self.shared.stop.send_replace(true);
    }
}

impl StateHandle for OutboxRelayHandle {
    fn pattern(&self) -> &'static str {
        "cqrs"
    }

    fn name(&self) -> &str {
        &self.shared.name
    }

    #[allow(clippy::cast_precision_loss)]
    fn report(&self) -> Report {
        let (health, state) = match self.status() {
            RelayStatus::Starting => (Health::Ready, "starting"),
            RelayStatus::CatchingUp => (Health::Ready, "catching_up"),
            RelayStatus::Live => (Health::Ready, "live"),
            RelayStatus::Retrying { .. } => (Health::Degraded, "retrying"),
            RelayStatus::Stopped => (Health::Unavailable, "stopped"),
        };
        Report::new("cqrs", self.shared.name.to_string(), health, state)
            .with_value("position", self.position().index as f64)
            .with_value("published", self.published() as f64)
            .with_value("duplicates", self.duplicates() as f64)
            .with_value("errors", self.errors() as f64)
            .with_value(
                "lag_events",
                self.shared.lag_events.load(Ordering::Relaxed) as f64,
            )
    }
}
