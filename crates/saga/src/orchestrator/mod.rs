//! The orchestrator: drives sagas from their durable log, resumes them after a crash, and
//! shares them out between processes by lease.

mod claim;
mod driver;
mod handle;
mod lease;
mod operator;
mod service;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, PoisonError, Weak, atomic::AtomicU64},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde_json::Value;
use tokio::sync::{Notify, Semaphore, watch};
use tower_patterns_core::ConfigError;
use tower_patterns_eventstore::{Direction, EventStore};

pub use handle::OrchestratorHandle;
pub use operator::{LoggedEvent, StuckSaga};
pub use service::{SagaService, StartSaga};

use crate::{
    Outcome, SagaDefinition, SagaError, SagaEvent, SagaId, SagaState, SagaStatus, index::SagaIndex,
};

/// Marker: no event store set yet (`.store(s)` sets it).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoStore;

/// Marker: no index set yet (`.index(i)` sets it).
#[derive(Clone, Copy, Debug, Default)]
pub struct NoIndex;

/// Milliseconds since the Unix epoch, read from Tokio's clock (so paused-time tests move it)
/// from a base taken from the system clock once per process, so that every orchestrator of a
/// process reads the same time.
#[derive(Debug)]
pub(crate) struct Clock {
    base_ms: u64,
    base: tokio::time::Instant,
}

static BASE: std::sync::OnceLock<(u64, tokio::time::Instant)> = std::sync::OnceLock::new();

impl Clock {
    fn new() -> Self {
        let (base_ms, base) = *BASE.get_or_init(|| {
            let ms = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
            (ms, tokio::time::Instant::now())
        });
        Self { base_ms, base }
    }

    pub(crate) fn now_ms(&self) -> u64 {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let now = tokio::time::Instant::now();
        // A runtime whose clock is behind the base (another runtime of the process took it,
        // later, with a paused clock) reads times before the base: its clock still moves.
        match now.checked_duration_since(self.base) {
            Some(since) => self.base_ms.saturating_add(ms(since)),
            None => self.base_ms.saturating_sub(ms(self.base - now)),
        }
    }

    /// The Tokio instant of Unix time `ms`.
    pub(crate) fn instant(&self, ms: u64) -> tokio::time::Instant {
        let now = self.now_ms();
        let now_i = tokio::time::Instant::now();
        if ms >= now {
            now_i + Duration::from_millis(ms - now)
        } else {
            now_i
                .checked_sub(Duration::from_millis(now - ms))
                .unwrap_or(now_i)
        }
    }
}

/// A saga this process drives.
#[derive(Debug)]
pub(crate) struct Driving {
    pub(crate) outcome: watch::Sender<Option<Outcome>>,
    pub(crate) lost: Arc<lease::Lost>,
    /// The renewal round when it began: a renewal that began earlier cannot know it.
    pub(crate) round: u64,
}

/// Counts for the handle.
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) started: AtomicU64,
    pub(crate) completed: AtomicU64,
    pub(crate) compensated: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) stuck: AtomicU64,
    /// Stuck sagas seen here that no operator here has retried or resolved since.
    pub(crate) stuck_now: AtomicU64,
    pub(crate) resolved: AtomicU64,
    pub(crate) resumed: AtomicU64,
    pub(crate) lost: AtomicU64,
    pub(crate) errors: AtomicU64,
}

impl Stats {
    /// An operator retried or resolved a stuck saga.
    pub(crate) fn operated(&self) {
        let _ = self.stuck_now.fetch_update(
            std::sync::atomic::Ordering::Relaxed,
            std::sync::atomic::Ordering::Relaxed,
            |n| n.checked_sub(1),
        );
    }
}

pub(crate) struct Inner<S, I> {
    pub(crate) name: Arc<str>,
    pub(crate) owner: Arc<str>,
    pub(crate) store: Arc<S>,
    pub(crate) index: I,
    pub(crate) definitions: HashMap<Arc<str>, SagaDefinition>,
    pub(crate) lease: Duration,
    pub(crate) poll: Duration,
    pub(crate) clock: Clock,
    pub(crate) driving: Mutex<HashMap<SagaId, Driving>>,
    pub(crate) round: AtomicU64,
    pub(crate) renewer: std::sync::Once,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) wake: Arc<Notify>,
    pub(crate) stats: Stats,
}

impl<S, I> Inner<S, I> {
    pub(crate) fn driving(&self) -> std::sync::MutexGuard<'_, HashMap<SagaId, Driving>> {
        self.driving.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn lease_until(&self, now: u64) -> u64 {
        now.saturating_add(u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX))
    }
}

/// Drives sagas: see the [crate docs](crate). Cloning shares it.
pub struct Orchestrator<S, I> {
    pub(crate) inner: Arc<Inner<S, I>>,
}

impl<S, I> Clone for Orchestrator<S, I> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<S, I> std::fmt::Debug for Orchestrator<S, I> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Orchestrator")
            .field("name", &self.inner.name)
            .field("owner", &self.inner.owner)
            .field("sagas", &self.inner.definitions.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// Builds an [`Orchestrator`]; see [`Orchestrator::builder`].
#[derive(Debug)]
pub struct OrchestratorBuilder<S, I> {
    name: Arc<str>,
    store: S,
    index: I,
    definitions: Vec<SagaDefinition>,
    lease: Duration,
    poll: Duration,
    max_running: usize,
    owner: Option<Arc<str>>,
}

impl Orchestrator<NoStore, NoIndex> {
    /// An orchestrator named `name`. Required: the log's event store (`.store(s)`) and the
    /// index (`.index(i)`); and at least one definition (`.saga(d)`).
    pub fn builder(name: impl Into<Arc<str>>) -> OrchestratorBuilder<NoStore, NoIndex> {
        OrchestratorBuilder {
            name: name.into(),
            store: NoStore,
            index: NoIndex,
            definitions: Vec::new(),
            lease: Duration::from_secs(30),
            poll: Duration::from_secs(1),
            max_running: 1_024,
            owner: None,
        }
    }
}

impl<S, I> OrchestratorBuilder<S, I> {
    /// The event store that holds the saga logs (one stream `saga-<id>` per saga).
    pub fn store<S2: EventStore>(self, store: Arc<S2>) -> OrchestratorBuilder<Arc<S2>, I> {
        OrchestratorBuilder {
            name: self.name,
            store,
            index: self.index,
            definitions: self.definitions,
            lease: self.lease,
            poll: self.poll,
            max_running: self.max_running,
            owner: self.owner,
        }
    }

    /// The index of open sagas and their leases.
    pub fn index<I2: SagaIndex>(self, index: I2) -> OrchestratorBuilder<S, I2> {
        OrchestratorBuilder {
            name: self.name,
            store: self.store,
            index,
            definitions: self.definitions,
            lease: self.lease,
            poll: self.poll,
            max_running: self.max_running,
            owner: self.owner,
        }
    }

    /// A saga definition this orchestrator runs (its name is the saga type).
    #[must_use]
    pub fn saga(mut self, definition: SagaDefinition) -> Self {
        self.definitions.push(definition);
        self
    }

    /// How long a saga stays leased to this orchestrator without a renewal (30 s). The
    /// orchestrator renews every third of it; a process that dies holds its sagas this long.
    #[must_use]
    pub const fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How often the worker looks for sagas to take (1 s), and how often a wait for a saga
    /// another process drives reads its log.
    #[must_use]
    pub const fn poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// The most sagas the worker drives at once (1,024); sagas started here do not count.
    #[must_use]
    pub const fn max_running(mut self, sagas: usize) -> Self {
        self.max_running = sagas;
        self
    }

    /// This process's name in leases and logs (default: the orchestrator's name, the process
    /// id and a random suffix). Two live processes must never share one.
    #[must_use]
    pub fn owner(mut self, owner: impl Into<Arc<str>>) -> Self {
        self.owner = Some(owner.into());
        self
    }
}

impl<S: EventStore, I: SagaIndex> OrchestratorBuilder<Arc<S>, I> {
    /// Checks the settings.
    ///
    /// # Errors
    ///
    /// A [`ConfigError`] naming `sagas` (none, or two of one name), `lease` (under 100 ms),
    /// `poll` (zero) or `max_running` (zero).
    pub fn build(self) -> Result<Orchestrator<S, I>, ConfigError> {
        crate::error::register();
        if self.definitions.is_empty() {
            return Err(ConfigError::new("sagas", "at least one saga definition"));
        }
        let mut definitions = HashMap::new();
        for d in self.definitions {
            if definitions.insert(d.name.clone(), d).is_some() {
                return Err(ConfigError::new(
                    "sagas",
                    "two definitions have the same name",
                ));
            }
        }
        if self.lease < Duration::from_millis(100) {
            return Err(ConfigError::new("lease", "at least 100 ms"));
        }
        if self.poll.is_zero() {
            return Err(ConfigError::new("poll", "must be more than zero"));
        }
        if self.max_running == 0 {
            return Err(ConfigError::new("max_running", "at least one"));
        }
        let owner = self.owner.unwrap_or_else(|| {
            let random = uuid::Uuid::now_v7().simple().to_string();
            format!("{}-{}-{}", self.name, std::process::id(), &random[20..]).into()
        });
        crate::metrics::register(&self.name, definitions.keys().map(|k| &**k));
        Ok(Orchestrator {
            inner: Arc::new(Inner {
                name: self.name,
                owner,
                store: self.store,
                index: self.index,
                definitions,
                lease: self.lease,
                poll: self.poll,
                clock: Clock::new(),
                driving: Mutex::new(HashMap::new()),
                round: AtomicU64::new(0),
                renewer: std::sync::Once::new(),
                permits: Arc::new(Semaphore::new(self.max_running)),
                wake: Arc::new(Notify::new()),
                stats: Stats::default(),
            }),
        })
    }
}

impl<S: EventStore, I: SagaIndex> Orchestrator<S, I> {
    /// The orchestrator's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// This process's owner name in leases.
    pub fn owner(&self) -> &str {
        &self.inner.owner
    }

    /// Starts saga `id` of type `saga_type` with `input`, and returns once its start is in the
    /// log (durable); it then runs in the background. Starting an id that exists changes
    /// nothing (a client's retry is safe): await [`outcome`](Self::outcome) either way.
    /// `deadline` overrides the definition's.
    ///
    /// # Errors
    ///
    /// [`SagaError::UnknownType`], or the log or the index failing.
    pub async fn start(
        &self,
        saga_type: &str,
        id: SagaId,
        input: Value,
        deadline: Option<Duration>,
    ) -> Result<(), SagaError> {
        claim::start(&self.inner, saga_type, id, input, deadline).await
    }

    /// Starts saga `id` (as [`start`](Self::start)) and waits for its outcome.
    ///
    /// # Errors
    ///
    /// As [`start`](Self::start) and [`outcome`](Self::outcome).
    pub async fn run(
        &self,
        saga_type: &str,
        id: SagaId,
        input: Value,
    ) -> Result<Outcome, SagaError> {
        self.start(saga_type, id.clone(), input, None).await?;
        self.outcome(&id).await
    }

    /// Waits until saga `id` has ended or is stuck, and returns how. A saga this process
    /// drives is awaited directly; another's log is read every `poll`.
    ///
    /// # Errors
    ///
    /// [`SagaError::NotFound`] when no saga has this id, or the log failing.
    pub async fn outcome(&self, id: &SagaId) -> Result<Outcome, SagaError> {
        loop {
            let local = self.inner.driving().get(id).map(|d| d.outcome.subscribe());
            let was_local = local.is_some();
            if let Some(mut rx) = local {
                // Ends with an outcome, or with the driver gone (lease lost, log down).
                if let Ok(done) = rx.wait_for(Option::is_some).await
                    && let Some(outcome) = done.clone()
                {
                    return Ok(outcome);
                }
            }
            let state = self
                .state(id)
                .await?
                .ok_or_else(|| SagaError::NotFound(id.clone()))?;
            if state.status.is_terminal() || state.status == SagaStatus::Stuck {
                return Ok(state.outcome());
            }
            if was_local {
                // This process's driver stopped short (the log was down): take the saga
                // back if no one else has, so a caller without a worker is not left waiting.
                claim::take_back(&self.inner, id).await?;
                if self.inner.driving().contains_key(id) {
                    continue;
                }
            }
            tokio::time::sleep(self.inner.poll).await;
        }
    }

    /// Saga `id`'s state as its log tells it now; `None` when it has no log.
    ///
    /// # Errors
    ///
    /// The log failing, or holding an event that is not a saga event.
    pub async fn state(&self, id: &SagaId) -> Result<Option<SagaState>, SagaError> {
        let log = read_log(&*self.inner.store, id).await?;
        Ok(SagaState::replay(id.clone(), log.iter().map(|(e, _)| e)))
    }

    /// Takes every open saga that no live orchestrator holds and drives each in the
    /// background (await [`outcome`](Self::outcome) for one), and returns how many it took: the sagas this owner held before a
    /// restart (at once, when the owner name is stable across restarts: see
    /// [`owner`](OrchestratorBuilder::owner)), and those of a process that died, once their
    /// leases expire. Call it at start-up, before serving; the worker does the same on every
    /// poll (without taking back unexpired leases of its own, which it is driving).
    ///
    /// # Errors
    ///
    /// The index failing.
    pub async fn recover(&self) -> Result<usize, SagaError> {
        let own = claim::claim_and_spawn(&self.inner, true).await?;
        let expired = claim::claim_and_spawn(&self.inner, false).await?;
        Ok(own + expired)
    }

    /// Spawns the worker: renews this process's leases, and every `poll` takes open sagas
    /// that no live orchestrator holds (at most `max_running` at once) and drives them. It
    /// stops when the last clone of the orchestrator is dropped.
    pub fn spawn_worker(&self) -> tokio::task::JoinHandle<()> {
        lease::ensure_renewer(&self.inner);
        let weak: Weak<Inner<S, I>> = Arc::downgrade(&self.inner);
        let wake = self.inner.wake.clone();
        tokio::spawn(async move {
            loop {
                let poll = {
                    let Some(inner) = weak.upgrade() else { return };
                    if let Err(e) = claim::claim_and_spawn(&inner, false).await {
                        tracing::warn!(orchestrator = %inner.name, error = %e, "saga claim failed");
                    }
                    inner.poll
                };
                tokio::select! {
                    () = tokio::time::sleep(poll) => {}
                    () = wake.notified() => {}
                }
            }
        })
    }

    /// The handle: counts, and the operator's view.
    pub fn handle(&self) -> OrchestratorHandle {
        OrchestratorHandle::new(self.inner.clone())
    }
}

/// Reads saga `id`'s whole log, decoded, with each event's recorded time (Unix µs).
pub(crate) async fn read_log<S: EventStore>(
    store: &S,
    id: &SagaId,
) -> Result<Vec<(SagaEvent, u64)>, SagaError> {
    let stream = id.stream();
    let mut out = Vec::new();
    let mut from = 1;
    loop {
        let page = store
            .read_stream(&stream, from, Direction::Forward, 256)
            .await?;
        let Some(last) = page.last() else { break };
        from = last.version + 1;
        let full = page.len() == 256;
        for e in &page {
            out.push((SagaEvent::decode(e)?, e.metadata.recorded_at_micros));
        }
        if !full {
            break;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runtime whose paused clock is behind the process's base still sees time move.
    #[tokio::test(start_paused = true)]
    async fn a_clock_behind_the_base_still_moves() {
        let clock = Clock {
            base_ms: 1_000_000,
            base: tokio::time::Instant::now() + Duration::from_secs(10),
        };
        assert_eq!(clock.now_ms(), 990_000);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(clock.now_ms(), 991_000);
        tokio::time::advance(Duration::from_secs(10)).await;
        assert_eq!(clock.now_ms(), 1_001_000);
        let at = clock.instant(1_002_000);
        assert_eq!(at - tokio::time::Instant::now(), Duration::from_secs(1));
    }
}
