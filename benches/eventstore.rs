//! Event store throughput, side by side in one run: appends (one event, and batches of 100) and
//! global reads on SQLite and PostgreSQL; cqrs-es 0.5 with postgres-es appending the same
//! events to the same PostgreSQL database; an aggregate of 10,000 events loaded with and
//! without a snapshot.
//!
//! PostgreSQL comes from `TP_POSTGRES_URL` (the test command's server, or any you name); without
//! it those rows are skipped with a printed note. A fresh database is made for each run.
//!
//! `TP_POSTGRES_URL=postgres://postgres@127.0.0.1:55432/postgres \
//!  cargo bench --features eventstore-postgres --bench eventstore`

mod support;

use std::sync::Arc;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tower_patterns::eventstore::{
    Aggregate, DomainEvent, EventData, EventStore, ExpectedVersion, GlobalPosition, Metadata,
    Repository,
    postgres::PostgresStore,
    sqlite::{Durability, SqliteStore},
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// The event every store appends: a deposit with a little metadata, as JSON.
fn payload(n: u64) -> serde_json::Value {
    json!({ "Deposited": { "amount": n, "reference": "invoice-2026-11-0042" } })
}

fn batch(start: u64, n: u64) -> Vec<EventData> {
    (start..start + n)
        .map(|i| EventData::json("Deposited", &payload(i)).expect("json"))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// cqrs-es: the minimum its repository needs to append events of an aggregate type.

#[derive(Default, Serialize, Deserialize)]
struct Account;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum AccountEvent {
    Deposited { amount: u64, reference: String },
}

impl cqrs_es::DomainEvent for AccountEvent {
    fn event_type(&self) -> String {
        "Deposited".into()
    }
    fn event_version(&self) -> String {
        "1.0".into()
    }
}

#[derive(Debug)]
struct Never;

impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("never")
    }
}

impl std::error::Error for Never {}

impl cqrs_es::Aggregate for Account {
    const TYPE: &'static str = "account";
    type Command = ();
    type Event = AccountEvent;
    type Error = Never;
    type Services = ();

    async fn handle(
        &mut self,
        _: (),
        _: &(),
        _: &cqrs_es::event_sink::EventSink<Self>,
    ) -> Result<(), Never> {
        Ok(())
    }

    fn apply(&mut self, _: AccountEvent) {}
}

const CQRS_ES_SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    aggregate_type text   NOT NULL,
    aggregate_id   text   NOT NULL,
    sequence       bigint CHECK (sequence >= 0) NOT NULL,
    event_type     text   NOT NULL,
    event_version  text   NOT NULL,
    payload        json   NOT NULL,
    metadata       json   NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
);
CREATE TABLE IF NOT EXISTS snapshots (
    aggregate_type   text   NOT NULL,
    aggregate_id     text   NOT NULL,
    last_sequence    bigint CHECK (last_sequence >= 0) NOT NULL,
    current_snapshot bigint CHECK (current_snapshot >= 0) NOT NULL,
    payload          json   NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, last_sequence)
);";

fn cqrs_es_batch(
    id: &str,
    next: &mut usize,
    n: u64,
    start: u64,
) -> Vec<cqrs_es::persist::SerializedEvent> {
    (start..start + n)
        .map(|i| {
            *next += 1;
            cqrs_es::persist::SerializedEvent::new(
                id.to_owned(),
                *next,
                "account".into(),
                "Deposited".into(),
                "1.0".into(),
                payload(i),
                json!({}),
            )
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------

fn appends(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile_dir();
    let mut group = c.benchmark_group("eventstore_append");
    group.sample_size(10);
    for size in [1u64, 100] {
        group.throughput(Throughput::Elements(size));
        for (name, durability) in [
            ("sqlite_full", Durability::Full),
            ("sqlite_normal", Durability::Normal),
        ] {
            let store =
                SqliteStore::open_with(dir.join(format!("append-{name}-{size}.db")), durability)
                    .expect("open");
            let mut n = 0;
            group.bench_function(BenchmarkId::new(name, size), |b| {
                b.iter(|| {
                    n += size;
                    rt.block_on(store.append("acc", ExpectedVersion::Any, batch(n, size)))
                        .expect("append")
                })
            });
        }
        let Some(url) = postgres_url() else { continue };
        let url = rt.block_on(support::postgres::fresh_database(&url));
        let store = rt
            .block_on(PostgresStore::connect(&url, 4))
            .expect("connect");
        let mut n = 0;
        group.bench_function(BenchmarkId::new("postgres", size), |b| {
            b.iter(|| {
                n += size;
                rt.block_on(store.append("acc", ExpectedVersion::Any, batch(n, size)))
                    .expect("append")
            })
        });
        let pool = rt.block_on(postgres_es::default_postgress_pool(&url));
        rt.block_on(sqlx_exec(&pool, CQRS_ES_SCHEMA));
        let repo = postgres_es::PostgresEventRepository::new(pool);
        let (mut next, mut n) = (0usize, 0u64);
        group.bench_function(BenchmarkId::new("cqrs_es_0_5_postgres_es", size), |b| {
            b.iter(|| {
                n += size;
                let events = cqrs_es_batch("acc", &mut next, size, n);
                rt.block_on(
                    cqrs_es::persist::PersistedEventRepository::persist::<Account>(
                        &repo, &events, None,
                    ),
                )
                .expect("persist")
            })
        });
    }
    group.finish();
}

async fn sqlx_exec(pool: &sqlx::PgPool, sql: &str) {
    sqlx::raw_sql(sql).execute(pool).await.expect("schema");
}

fn reads(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile_dir();
    let mut group = c.benchmark_group("eventstore_read_all");
    group.sample_size(20);
    group.throughput(Throughput::Elements(1_000));
    let sqlite = SqliteStore::open_with(dir.join("read.db"), Durability::Normal).expect("open");
    fill(&rt, &sqlite);
    group.bench_function("sqlite_1000_events", |b| {
        b.iter(|| {
            rt.block_on(sqlite.read_all(GlobalPosition::START, 1_000))
                .expect("read")
        })
    });
    if let Some(url) = postgres_url() {
        let url = rt.block_on(support::postgres::fresh_database(&url));
        let pg = rt
            .block_on(PostgresStore::connect(&url, 4))
            .expect("connect");
        fill(&rt, &pg);
        group.bench_function("postgres_1000_events", |b| {
            b.iter(|| {
                rt.block_on(pg.read_all(GlobalPosition::START, 1_000))
                    .expect("read")
            })
        });
    }
    group.finish();
}

fn fill<S: EventStore>(rt: &tokio::runtime::Runtime, store: &S) {
    for i in 0..100 {
        rt.block_on(store.append(
            &format!("s{}", i % 10),
            ExpectedVersion::Any,
            batch(i * 100, 100),
        ))
        .expect("fill");
    }
}

// The aggregate for loads: a balance folded from deposits.
#[derive(Default, Serialize, Deserialize)]
struct Balance {
    total: u64,
}

#[derive(Serialize, Deserialize)]
enum BalanceEvent {
    Deposited { amount: u64, reference: String },
}

impl DomainEvent for BalanceEvent {
    fn event_type(&self) -> &'static str {
        "Deposited"
    }
}

impl Aggregate for Balance {
    type Command = u64;
    type Event = BalanceEvent;
    type Error = Never;

    fn handle(&self, amount: &u64) -> Result<Vec<BalanceEvent>, Never> {
        Ok(vec![BalanceEvent::Deposited {
            amount: *amount,
            reference: "x".into(),
        }])
    }

    fn apply(&mut self, event: &BalanceEvent) {
        let BalanceEvent::Deposited { amount, .. } = event;
        self.total += amount;
    }
}

fn loads(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile_dir();
    let store =
        Arc::new(SqliteStore::open_with(dir.join("load.db"), Durability::Normal).expect("open"));
    for i in 0..100 {
        rt.block_on(store.append("balance-1", ExpectedVersion::Any, batch(i * 100, 100)))
            .expect("fill");
    }
    let repo = Repository::<Balance, _>::new(store.clone(), "balance-");
    // A snapshot at 10,000, then 100 more events after it (the usual shape: a snapshot every N,
    // and some events since).
    assert_eq!(
        rt.block_on(repo.take_snapshot("1")).expect("snapshot"),
        10_000
    );
    for i in 0..100 {
        rt.block_on(repo.execute("1", &i, Metadata::default()))
            .expect("execute");
    }
    let mut group = c.benchmark_group("eventstore_load_10100_events");
    group.sample_size(10);
    group.bench_function("sqlite_without_snapshot", |b| {
        b.iter(|| rt.block_on(repo.load_from_events("1")).expect("load"))
    });
    group.bench_function("sqlite_with_snapshot", |b| {
        b.iter(|| rt.block_on(repo.load("1")).expect("load"))
    });
    group.finish();
}

fn postgres_url() -> Option<String> {
    let url = std::env::var("TP_POSTGRES_URL").ok();
    if url.is_none() {
        eprintln!("skipping the PostgreSQL rows: TP_POSTGRES_URL is not set");
    }
    url
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tp-bench-{}", uuid::Uuid::now_v7().simple()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}

criterion_group! {
    name = benches;
    config = support::config();
    targets = appends, reads, loads
}
criterion_main!(benches);
