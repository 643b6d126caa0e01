//! What the runner's tests share: the shop's events, a ledger read model that records every
//! event it applies (and how often), and helpers to read it back.

#![allow(dead_code, unreachable_pub)]

use std::{
    collections::HashMap,
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use metrics_util::debugging::{DebugValue, Snapshotter};
use rusqlite::{Connection, params};
use serde::{Deserialize, Serialize};
use tower_patterns_cqrs::{
    ApplyError, ProjectionHandle, SqliteProjection, Status, Tables, projection::ApplyErrorKind,
};
use tower_patterns_eventstore::{
    DomainEvent, EventData, EventStore, ExpectedVersion, GlobalPosition, RecordedEvent,
};

/// The shop's events.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub enum Shop {
    Created { id: u32, name: String },
    Priced { id: u32, price: i64 },
    Poison {},
}

impl DomainEvent for Shop {
    fn event_type(&self) -> &'static str {
        match self {
            Self::Created { .. } => "Created",
            Self::Priced { .. } => "Priced",
            Self::Poison {} => "Poison",
        }
    }
}

pub fn event(e: &Shop) -> EventData {
    EventData::json(e.event_type(), e).unwrap()
}

pub fn created(id: u32) -> EventData {
    event(&Shop::Created {
        id,
        name: format!("product {id}"),
    })
}

/// Appends `n` events (`Created` 1..=n) to stream `stream`, one append each; the last
/// position.
pub async fn append_n<S: EventStore>(store: &S, stream: &str, n: u32) -> GlobalPosition {
    let mut last = GlobalPosition::START;
    for i in 1..=n {
        let r = store
            .append(stream, ExpectedVersion::Any, vec![created(i)])
            .await
            .unwrap();
        last = *r.positions.last().unwrap();
    }
    last
}

/// Appends `events` to `stream` in one append; the last position.
pub async fn append<S: EventStore>(
    store: &S,
    stream: &str,
    events: Vec<EventData>,
) -> GlobalPosition {
    let r = store
        .append(stream, ExpectedVersion::Any, events)
        .await
        .unwrap();
    *r.positions.last().unwrap()
}

/// A read model that records each event it applies in `{name}_v{n}_seen(event_id, idx, n)`
/// (`n` counts applications: exactly once means 1 everywhere) after decoding it as a
/// [`Shop`]. It can fail on `Poison` events, and panic once at a position (a crash).
#[derive(Clone, Default)]
pub struct Ledger {
    /// How `Poison` events fail (`None`: they apply).
    pub poison: Option<ApplyErrorKind>,
    /// Panics once when applying the event at this index.
    pub panic_at: Option<(u64, Arc<AtomicBool>)>,
    /// Calls of `apply` (attempts included).
    pub calls: Arc<AtomicU32>,
    /// Once set, `Poison` events apply (an operator fixed the cause).
    pub cured: Arc<AtomicBool>,
    /// `Poison` fails only in this version of the tables (a rebuild's, say).
    pub only_version: Option<u32>,
    /// Prints `stuck <index>` (flushed) when applying the event at this index, then hangs
    /// inside the transaction: where a crash test kills the process.
    pub stuck_at: Option<u64>,
}

impl Ledger {
    pub fn failing(kind: ApplyErrorKind) -> Self {
        Self {
            poison: Some(kind),
            ..Self::default()
        }
    }
}

impl SqliteProjection for Ledger {
    fn create(&self, tx: &rusqlite::Transaction<'_>, t: &Tables) -> Result<(), ApplyError> {
        tx.execute_batch(&format!(
            "CREATE TABLE {} (event_id TEXT PRIMARY KEY, idx INTEGER NOT NULL, n INTEGER NOT NULL)",
            t.name("seen")
        ))?;
        Ok(())
    }

    fn apply(
        &self,
        tx: &rusqlite::Transaction<'_>,
        t: &Tables,
        e: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let shop: Shop = e.decode_event()?;
        // The write comes first so that a failure after it shows the savepoint rolled it back.
        tx.execute(
            &format!(
                "INSERT INTO {} (event_id, idx, n) VALUES (?1, ?2, 1) \
                 ON CONFLICT (event_id) DO UPDATE SET n = n + 1",
                t.name("seen")
            ),
            params![e.id.to_string(), e.position.index as i64],
        )?;
        if let Some((at, fired)) = &self.panic_at
            && e.position.index == *at
            && !fired.swap(true, Ordering::SeqCst)
        {
            panic!("the ledger crashes at {at}");
        }
        let other_version = self.only_version.is_some_and(|v| v != t.version());
        let poison = if other_version || self.cured.load(Ordering::SeqCst) {
            None
        } else {
            self.poison
        };
        if self.stuck_at == Some(e.position.index) {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            writeln!(out, "stuck {}", e.position.index).unwrap();
            out.flush().unwrap();
            loop {
                std::thread::sleep(Duration::from_secs(60));
            }
        }
        match (shop, poison) {
            (Shop::Poison {}, Some(ApplyErrorKind::Transient)) => {
                Err(ApplyError::transient("poison (transient)"))
            }
            (Shop::Poison {}, Some(ApplyErrorKind::Permanent)) => {
                Err(ApplyError::permanent("poison"))
            }
            _ => Ok(()),
        }
    }
}

/// The ledger's rows `(idx, n)` in log order.
pub fn seen(conn: &Connection, tables: &Tables) -> Vec<(u64, u32)> {
    let mut stmt = conn
        .prepare(&format!(
            "SELECT idx, n FROM {} ORDER BY idx",
            tables.name("seen")
        ))
        .unwrap();
    stmt.query_map([], |r| Ok((r.get::<_, i64>(0)? as u64, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

pub fn seen_at(path: &Path, tables: &Tables) -> Vec<(u64, u32)> {
    seen(&Connection::open(path).unwrap(), tables)
}

/// The stored checkpoint `(commit, idx, version)` of `name`.
pub fn checkpoint_row(path: &Path, name: &str) -> Option<(u64, u64, u32)> {
    let conn = Connection::open(path).unwrap();
    conn.query_row(
        r#"SELECT "commit", idx, version FROM tp_checkpoints WHERE name = ?1"#,
        params![name],
        |r| {
            Ok((
                r.get::<_, i64>(0)? as u64,
                r.get::<_, i64>(1)? as u64,
                r.get(2)?,
            ))
        },
    )
    .ok()
}

/// Waits (bounded) for a status.
pub async fn status_becomes(
    handle: &ProjectionHandle,
    pred: impl FnMut(&Status) -> bool,
) -> Status {
    handle.wait_for_status(Duration::from_secs(30), pred).await
}

/// Every metric of a debugging recorder, `(metric, projection) -> value`. Take one snapshot
/// per test: a snapshot resets the recorder's counters and gauges.
pub fn metrics_now(snap: &Snapshotter) -> HashMap<(String, String), f64> {
    snap.snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let k = key.key();
            let name = k.labels().find(|l| l.key() == "name")?.value().to_owned();
            let v = match value {
                DebugValue::Counter(c) => c as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(_) => f64::NAN,
            };
            Some(((k.name().to_owned(), name), v))
        })
        .collect()
}

/// The value of `metric` for `projection` in [`metrics_now`]'s map.
pub fn metric(
    seen: &HashMap<(String, String), f64>,
    metric: &str,
    projection: &str,
) -> Option<f64> {
    seen.get(&(metric.to_owned(), projection.to_owned()))
        .copied()
}

/// The dead letters `(idx, stream, version, event_type, attempts)` of `name` in a read
/// model's connection.
pub fn dead_letters(conn: &Connection, name: &str) -> Vec<(u64, String, u64, String, u32)> {
    let mut stmt = conn
        .prepare(
            "SELECT idx, stream, version, event_type, attempts FROM tp_dead_letters \
             WHERE name = ?1 ORDER BY idx",
        )
        .unwrap();
    stmt.query_map(params![name], |r| {
        Ok((
            r.get::<_, i64>(0)? as u64,
            r.get(1)?,
            r.get::<_, i64>(2)? as u64,
            r.get(3)?,
            r.get(4)?,
        ))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

/// The names of the tables, views and triggers in a read model's file starting with `prefix`.
pub fn objects(path: &Path, prefix: &str) -> Vec<String> {
    let conn = Connection::open(path).unwrap();
    let mut stmt = conn
        .prepare(
            "SELECT name FROM sqlite_master WHERE substr(name, 1, length(?1)) = ?1 ORDER BY name",
        )
        .unwrap();
    stmt.query_map(params![prefix], |r| r.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}
