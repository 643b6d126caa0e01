//! Fake services that honour idempotency keys and count what took effect, in a SQLite ledger
//! (in memory, or a file that a killed child process leaves for its parent to read).
#![allow(
    dead_code,
    unreachable_pub,
    reason = "each test binary uses part of the support"
)]

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use rusqlite::{Connection, OptionalExtension, params};
use serde_json::{Value, json};
use tower_patterns_core::BoxError;
use tower_patterns_saga::{Phase, SagaDefinition, Step, StepError, StepRequest};

/// What a fake does when called.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Act {
    /// Succeeds.
    Ok,
    /// Refuses (a [`StepError`]): no effect.
    Refuse,
    /// Fails (outcome unknown, no effect) on the first `n` calls of each saga, then succeeds.
    FailFirst(usize),
    /// Never answers.
    Hang,
    /// Always fails (outcome unknown, no effect).
    AlwaysFail,
}

/// (saga, step, phase).
type CallKey = (String, String, Phase);

/// The ledger: every effect applied, once per idempotency key.
#[derive(Clone)]
pub struct Ledger {
    conn: Arc<Mutex<Connection>>,
    /// Calls per (saga, step, phase), to fail the first few.
    calls: Arc<Mutex<HashMap<CallKey, usize>>>,
    in_flight: Arc<AtomicUsize>,
    max_in_flight: Arc<AtomicUsize>,
}

impl Ledger {
    pub fn in_memory() -> Self {
        Self::with(Connection::open_in_memory().unwrap())
    }

    pub fn open(path: &Path) -> Self {
        let conn = Connection::open(path).unwrap();
        conn.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL; PRAGMA busy_timeout = 5000;",
        )
        .unwrap();
        Self::with(conn)
    }

    fn with(conn: Connection) -> Self {
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS effects (
                 key TEXT PRIMARY KEY, saga TEXT NOT NULL, step TEXT NOT NULL,
                 phase TEXT NOT NULL, output TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS calls (
                 id INTEGER PRIMARY KEY, saga TEXT NOT NULL, step TEXT NOT NULL, phase TEXT NOT NULL,
                 pid INTEGER NOT NULL, began INTEGER NOT NULL, ended INTEGER);",
        )
        .unwrap();
        Self {
            conn: Arc::new(Mutex::new(conn)),
            calls: Arc::default(),
            in_flight: Arc::default(),
            max_in_flight: Arc::default(),
        }
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Applies the call's effect once per key; answers the stored output on a repeat.
    fn apply(&self, req: &StepRequest, output: &Value) -> Value {
        let conn = self.conn();
        let key = req.key.as_str();
        let stored: Option<String> = conn
            .query_row("SELECT output FROM effects WHERE key = ?1", [key], |r| {
                r.get(0)
            })
            .optional()
            .unwrap();
        if let Some(stored) = stored {
            return serde_json::from_str(&stored).unwrap();
        }
        conn.execute(
            "INSERT INTO effects (key, saga, step, phase, output) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                key,
                req.saga.as_str(),
                &*req.step,
                req.phase.as_str(),
                output.to_string()
            ],
        )
        .unwrap();
        output.clone()
    }

    /// Whether the action of `step` took effect in `saga` (under any key).
    fn took_effect(&self, saga: &str, step: &str) -> bool {
        self.count(saga, step, Phase::Action) > 0
    }

    /// Every key a call of (saga, step) was answered under, sorted.
    pub fn keys(&self, saga: &str, step: &str) -> Vec<String> {
        let conn = self.conn();
        let mut q = conn
            .prepare("SELECT key FROM effects WHERE saga = ?1 AND step = ?2 ORDER BY key")
            .unwrap();
        q.query_map(params![saga, step], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// Effects applied for (saga, step, phase), over every key.
    pub fn count(&self, saga: &str, step: &str, phase: Phase) -> usize {
        let n: i64 = self
            .conn()
            .query_row(
                "SELECT COUNT(*) FROM effects WHERE saga = ?1 AND step = ?2 AND phase = ?3",
                params![saga, step, phase.as_str()],
                |r| r.get(0),
            )
            .unwrap();
        usize::try_from(n).unwrap()
    }

    /// The steps of `saga` whose compensation took effect, sorted.
    pub fn undone(&self, saga: &str) -> Vec<String> {
        self.steps(saga, Phase::Compensation)
    }

    /// The steps of `saga` whose action took effect, sorted.
    pub fn done(&self, saga: &str) -> Vec<String> {
        self.steps(saga, Phase::Action)
    }

    /// Compensations that found nothing to undo are not effects.
    fn steps(&self, saga: &str, phase: Phase) -> Vec<String> {
        let conn = self.conn();
        let mut q = conn
            .prepare(
                "SELECT step FROM effects WHERE saga = ?1 AND phase = ?2 \
                 AND output NOT LIKE '%\"undone\":false%' ORDER BY step",
            )
            .unwrap();
        q.query_map(params![saga, phase.as_str()], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap()
    }

    /// The most effects of one (saga, step, phase) over the whole ledger: 1 when every
    /// effect happened once.
    pub fn most_per_step(&self) -> usize {
        let n: Option<i64> = self
            .conn()
            .query_row(
                "SELECT MAX(n) FROM (SELECT COUNT(*) AS n FROM effects \
                 WHERE output NOT LIKE '%\"undone\":false%' GROUP BY saga, step, phase)",
                [],
                |r| r.get(0),
            )
            .unwrap();
        n.map_or(0, |n| usize::try_from(n).unwrap())
    }

    pub fn max_in_flight(&self) -> usize {
        self.max_in_flight.load(Ordering::SeqCst)
    }

    fn nth_call(&self, req: &StepRequest) -> usize {
        let mut calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        let n = calls
            .entry((req.saga.to_string(), req.step.to_string(), req.phase))
            .or_default();
        *n += 1;
        *n
    }

    /// A fake service for one phase of a step.
    pub fn service(&self, act: Act) -> tower_patterns_saga::StepService {
        let ledger = self.clone();
        tower::util::BoxCloneSyncService::new(tower::service_fn(move |req: StepRequest| {
            let ledger = ledger.clone();
            async move {
                let now = ledger.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                ledger.max_in_flight.fetch_max(now, Ordering::SeqCst);
                let _guard = Decrement(ledger.in_flight.clone());
                let call = ledger.began(&req);
                let _ended = Ended(ledger.clone(), call);
                // Let parallel calls overlap.
                tokio::task::yield_now().await;
                let n = ledger.nth_call(&req);
                match act {
                    Act::Refuse => {
                        return Err(StepError::refused(format!("{} refused", req.step)).into());
                    }
                    Act::FailFirst(k) if n <= k => {
                        return Err(format!("{} unavailable", req.step).into());
                    }
                    Act::AlwaysFail => return Err(format!("{} unavailable", req.step).into()),
                    Act::Hang => std::future::pending::<()>().await,
                    Act::Ok | Act::FailFirst(_) => {}
                }
                let output = match req.phase {
                    Phase::Action => {
                        json!({ "id": format!("{}-{}", req.step, req.saga), "key": req.key.as_str() })
                    }
                    // Nothing to undo when the action never took effect; the answer is kept
                    // under the key all the same, as an idempotent service keeps every answer.
                    Phase::Compensation => {
                        json!({ "undone": ledger.took_effect(req.saga.as_str(), &req.step) })
                    }
                };
                Ok::<_, BoxError>(ledger.apply(&req, &output))
            }
        }))
    }

    /// A step named `name` whose action does `action` and compensation does `undo`.
    pub fn step(&self, name: &str, action: Act, undo: Act) -> Step {
        Step::new(name.to_owned(), self.service(action)).compensate_with(self.service(undo))
    }
}

/// Records the call's end when dropped (answered, failed or cancelled).
struct Ended(Ledger, i64);

impl Drop for Ended {
    fn drop(&mut self) {
        self.0
            .conn()
            .execute(
                "UPDATE calls SET ended = ?2 WHERE id = ?1",
                params![self.1, micros()],
            )
            .unwrap();
    }
}

pub fn micros() -> i64 {
    i64::try_from(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_micros(),
    )
    .unwrap()
}

impl Ledger {
    fn began(&self, req: &StepRequest) -> i64 {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO calls (saga, step, phase, pid, began) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                req.saga.as_str(),
                &*req.step,
                req.phase.as_str(),
                std::process::id(),
                micros()
            ],
        )
        .unwrap();
        conn.last_insert_rowid()
    }

    /// Calls of one saga that overlapped in time: a saga driven by two at once. A call
    /// without an end (its process was killed at `killed` µs, by `killed_pid`) ends then.
    pub fn overlapping_calls(&self, killed_pid: u32, killed: i64) -> Vec<String> {
        let conn = self.conn();
        let mut q = conn
            .prepare(
                "SELECT saga, step, phase, pid, began, ended FROM calls ORDER BY saga, began, id",
            )
            .unwrap();
        let rows: Vec<(String, String, String, u32, i64, Option<i64>)> = q
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let mut bad = Vec::new();
        for w in rows.windows(2) {
            let (a, b) = (&w[0], &w[1]);
            if a.0 != b.0 {
                continue;
            }
            let end = match a.5 {
                Some(end) => end,
                None if a.3 == killed_pid => killed,
                None => i64::MAX,
            };
            if end > b.4 {
                bad.push(format!(
                    "{} {}/{} (pid {}) overlaps {}/{} (pid {})",
                    a.0, a.1, a.2, a.3, b.1, b.2, b.3
                ));
            }
        }
        bad
    }

    /// Calls made, in all.
    pub fn calls(&self) -> usize {
        let n: i64 = self
            .conn()
            .query_row("SELECT COUNT(*) FROM calls", [], |r| r.get(0))
            .unwrap();
        usize::try_from(n).unwrap()
    }
}

struct Decrement(Arc<AtomicUsize>);

impl Drop for Decrement {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The order saga: create the order, charge the payment, reserve the inventory, create the
/// shipment, mark the order complete; `fail` names the step that refuses.
pub fn order_saga(ledger: &Ledger, fail: Option<&str>) -> SagaDefinition {
    let act = |step: &str| {
        if fail == Some(step) {
            Act::Refuse
        } else {
            Act::Ok
        }
    };
    SagaDefinition::builder("order")
        .step(
            ledger
                .step("order", act("order"), Act::Ok)
                .failure_reason("order creation failed"),
        )
        .step(
            ledger
                .step("payment", act("payment"), Act::Ok)
                .failure_reason("payment failed"),
        )
        .step(
            ledger
                .step("inventory", act("inventory"), Act::Ok)
                .failure_reason("inventory unavailable"),
        )
        .step(
            ledger
                .step("shipping", act("shipping"), Act::Ok)
                .failure_reason("shipment creation failed"),
        )
        .step(Step::new("complete", ledger.service(Act::Ok)))
        .build()
        .unwrap()
}

/// The trip booking: flight, hotel, payment; `acts` overrides a step's action.
pub fn trip(ledger: &Ledger, acts: &[(&str, Act)]) -> SagaDefinition {
    let act = |step: &str| {
        acts.iter()
            .find(|(s, _)| *s == step)
            .map_or(Act::Ok, |(_, a)| *a)
    };
    SagaDefinition::builder("trip")
        .step(ledger.step("flight", act("flight"), Act::Ok))
        .step(ledger.step("hotel", act("hotel"), Act::Ok))
        .step(ledger.step("payment", act("payment"), Act::Ok))
        .build()
        .unwrap()
}

pub const SECOND: Duration = Duration::from_secs(1);

/// An event store that, once it has appended an event of type `kill_after`, prints
/// `appended <type>` and never answers again (nor appends anything more): the process is
/// frozen right after that event is durable, for its parent to kill.
pub struct Tap<S> {
    pub inner: S,
    /// The event type, and how many of it to see first (`StepSucceeded:20`; 1 by default).
    pub kill_after: Option<(String, usize)>,
    seen: AtomicUsize,
    frozen: std::sync::atomic::AtomicBool,
    /// Appends to fail (a backend error, nothing stored) before the next one goes through.
    pub fail_appends: AtomicUsize,
    /// While set, appends wait (for `release`).
    pub hold: std::sync::atomic::AtomicBool,
    pub release: tokio::sync::Notify,
    /// Appends that went through.
    pub appended: AtomicUsize,
    /// Stream reads to fail (a backend error) before the next one goes through.
    pub fail_reads: AtomicUsize,
}

impl<S> Tap<S> {
    pub fn new(inner: S, kill_after: Option<String>) -> Self {
        let kill_after = kill_after.map(|k| match k.split_once(':') {
            Some((t, n)) => (t.to_owned(), n.parse().unwrap()),
            None => (k, 1),
        });
        Self {
            inner,
            kill_after,
            seen: AtomicUsize::new(0),
            frozen: std::sync::atomic::AtomicBool::new(false),
            fail_appends: AtomicUsize::new(0),
            hold: std::sync::atomic::AtomicBool::new(false),
            release: tokio::sync::Notify::new(),
            appended: AtomicUsize::new(0),
            fail_reads: AtomicUsize::new(0),
        }
    }
}

mod tap {
    use std::io::Write as _;

    use tower_patterns_eventstore::{
        AppendResult, Direction, Error, EventData, EventStore, ExpectedVersion, GlobalPosition,
        RecordedEvent, Snapshot,
    };

    use super::Tap;

    impl<S: EventStore> EventStore for Tap<S> {
        async fn append(
            &self,
            stream: &str,
            expected: ExpectedVersion,
            events: Vec<EventData>,
        ) -> Result<AppendResult, Error> {
            use std::sync::atomic::Ordering;
            if self.frozen.load(Ordering::SeqCst) {
                std::future::pending::<()>().await;
            }
            while self.hold.load(Ordering::SeqCst) {
                let released = self.release.notified();
                tokio::pin!(released);
                released.as_mut().enable();
                if !self.hold.load(Ordering::SeqCst) {
                    break;
                }
                released.await;
            }
            if self
                .fail_appends
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(Error::Backend("injected: the log is down".into()));
            }
            let types: Vec<String> = events.iter().map(|e| e.event_type.clone()).collect();
            let done = self.inner.append(stream, expected, events).await?;
            self.appended.fetch_add(1, Ordering::SeqCst);
            if let Some((kill, nth)) = &self.kill_after
                && types.iter().any(|t| t == kill)
                && self.seen.fetch_add(1, Ordering::SeqCst) + 1 >= *nth
                && !self.frozen.swap(true, Ordering::SeqCst)
            {
                {
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "appended {kill}").unwrap();
                    out.flush().unwrap();
                }
                std::future::pending::<()>().await;
            }
            Ok(done)
        }

        async fn read_stream(
            &self,
            stream: &str,
            from: u64,
            direction: Direction,
            max: usize,
        ) -> Result<Vec<RecordedEvent>, Error> {
            use std::sync::atomic::Ordering;
            if self
                .fail_reads
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                return Err(Error::Backend("injected: the log is down".into()));
            }
            self.inner.read_stream(stream, from, direction, max).await
        }

        fn read_all(
            &self,
            after: GlobalPosition,
            max: usize,
        ) -> impl Future<Output = Result<Vec<RecordedEvent>, Error>> + Send {
            self.inner.read_all(after, max)
        }

        fn find_event(
            &self,
            id: uuid::Uuid,
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

        fn wait_for_events(&self, after: GlobalPosition) -> impl Future<Output = ()> + Send {
            self.inner.wait_for_events(after)
        }
    }
}

/// An index that can fail its renewals and lose the updates that end a saga (a crash between
/// the log's end and the index's), and hold a removal until the test lets it go.
#[derive(Clone, Default)]
pub struct FlakyIndex {
    pub inner: tower_patterns_saga::index::MemoryIndex,
    pub fail_renew: Arc<std::sync::atomic::AtomicBool>,
    pub drop_ended: Arc<std::sync::atomic::AtomicBool>,
    /// Run (once) by the next removal before it removes: what lands meanwhile.
    #[allow(clippy::type_complexity)]
    pub before_remove: Arc<std::sync::Mutex<Option<futures_util::future::BoxFuture<'static, ()>>>>,
}

mod flaky {
    use std::sync::atomic::Ordering;

    use tower_patterns_core::BoxError;
    use tower_patterns_saga::{
        SagaId, SagaStatus,
        index::{Claim, IndexEntry, SagaIndex},
    };

    use super::FlakyIndex;

    impl SagaIndex for FlakyIndex {
        fn register(
            &self,
            id: &SagaId,
            saga_type: &str,
            owner: &str,
            now: u64,
            lease_until: u64,
        ) -> impl Future<Output = Result<bool, BoxError>> + Send {
            self.inner.register(id, saga_type, owner, now, lease_until)
        }

        fn claim(
            &self,
            owner: &str,
            now: u64,
            lease_until: u64,
            max: usize,
            reclaim_own: bool,
        ) -> impl Future<Output = Result<Vec<Claim>, BoxError>> + Send {
            self.inner.claim(owner, now, lease_until, max, reclaim_own)
        }

        fn claim_one(
            &self,
            id: &SagaId,
            owner: &str,
            now: u64,
            lease_until: u64,
        ) -> impl Future<Output = Result<Option<Claim>, BoxError>> + Send {
            self.inner.claim_one(id, owner, now, lease_until)
        }

        async fn renew(
            &self,
            owner: &str,
            ids: &[SagaId],
            now: u64,
            lease_until: u64,
        ) -> Result<Vec<SagaId>, BoxError> {
            if self.fail_renew.load(Ordering::SeqCst) {
                return Err("injected: the index is down".into());
            }
            self.inner.renew(owner, ids, now, lease_until).await
        }

        async fn set_status(
            &self,
            id: &SagaId,
            status: SagaStatus,
            now: u64,
        ) -> Result<(), BoxError> {
            if status.is_terminal() && self.drop_ended.load(Ordering::SeqCst) {
                return Ok(());
            }
            self.inner.set_status(id, status, now).await
        }

        async fn remove(&self, id: &SagaId) -> Result<(), BoxError> {
            let meanwhile = self
                .before_remove
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .take();
            if let Some(meanwhile) = meanwhile {
                meanwhile.await;
            }
            self.inner.remove(id).await
        }

        fn release(
            &self,
            id: &SagaId,
            owner: &str,
        ) -> impl Future<Output = Result<(), BoxError>> + Send {
            self.inner.release(id, owner)
        }

        fn list(
            &self,
            status: &str,
            max: usize,
        ) -> impl Future<Output = Result<Vec<IndexEntry>, BoxError>> + Send {
            self.inner.list(status, max)
        }
    }
}

/// A step whose action waits until the test opens its gate, then succeeds.
pub fn gated(name: &str, gate: Arc<tokio::sync::Semaphore>) -> Step {
    Step::new(
        name.to_owned(),
        tower::service_fn(move |_req: StepRequest| {
            let gate = gate.clone();
            async move {
                gate.acquire().await.unwrap().forget();
                Ok::<_, BoxError>(json!("done"))
            }
        }),
    )
    .compensate_with(tower::service_fn(|_req: StepRequest| async {
        Ok::<_, BoxError>(json!(null))
    }))
}
