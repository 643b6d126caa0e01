//! Sagas, side by side in one run: a three-step saga (the trip booking: flight, hotel,
//! payment, each a no-op service) run by the orchestrator on its logs (in memory; SQLite with
//! every transition synced; PostgreSQL), against calling the three services directly (the
//! floor: what the saga adds is the log) and against steno 0.4 (Oxide's saga executor) with
//! its in-memory log.
//!
//! - `saga_one`: one saga at a time, start to outcome: the latency of a saga, and per step
//!   the overhead over the direct calls (`(row − direct) / 3`).
//! - `saga_throughput`: 512 sagas, 64 at once: sagas per second.
//!
//! PostgreSQL comes from `TP_POSTGRES_URL` (the test command's server, or any you name);
//! without it those rows are skipped with a printed note. A fresh database is made per run.
//!
//! `TP_POSTGRES_URL=postgres://postgres@127.0.0.1:55432/postgres \
//!  cargo bench --features saga-postgres --bench saga`

mod support;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use tower::{ServiceExt as _, service_fn};
use tower_patterns::{
    BoxError,
    eventstore::{EventStore, InMemoryStore, postgres::PostgresStore, sqlite::SqliteStore},
    saga::{
        Orchestrator, Phase, SagaDefinition, SagaId, Step, StepRequest, StepService,
        index::{MemoryIndex, PostgresIndex, SagaIndex, SqliteIndex},
    },
};

const STEPS: [&str; 3] = ["flight", "hotel", "payment"];
const BATCH: usize = 512;
const CONCURRENCY: usize = 64;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// The no-op service every step calls: answers a small JSON output.
fn service() -> StepService {
    StepService::new(service_fn(|req: StepRequest| async move {
        Ok::<_, BoxError>(json!({ "booking": &*req.step }))
    }))
}

fn trip() -> SagaDefinition {
    STEPS
        .iter()
        .fold(SagaDefinition::builder("trip"), |b, name| {
            b.step(Step::new(*name, service()).compensate_with(service()))
        })
        .build()
        .expect("the trip")
}

fn orchestrator<S: EventStore, I: SagaIndex>(store: S, index: I) -> Orchestrator<S, I> {
    Orchestrator::builder("bench")
        .store(Arc::new(store))
        .index(index)
        .saga(trip())
        .build()
        .expect("an orchestrator")
}

static NEXT: AtomicU64 = AtomicU64::new(0);

fn next_id() -> SagaId {
    SagaId::new(format!("b-{}", NEXT.fetch_add(1, Ordering::Relaxed))).expect("an id")
}

/// The three services called in turn, as a caller without a saga would.
async fn direct(services: &[StepService; 3]) {
    let id = next_id();
    for (svc, name) in services.iter().zip(STEPS) {
        let req = request(&id, name);
        let out: Value = svc.clone().oneshot(req).await.expect("the call");
        std::hint::black_box(out);
    }
}

fn request(id: &SagaId, step: &str) -> StepRequest {
    StepRequest::new(
        id.clone(),
        "trip",
        step,
        Phase::Action,
        json!({ "who": "ada" }),
    )
}

async fn run<S: EventStore, I: SagaIndex>(o: &Orchestrator<S, I>) {
    let out = o
        .run("trip", next_id(), json!({ "who": "ada" }))
        .await
        .expect("the saga");
    assert!(out.is_completed());
}

async fn many<S: EventStore, I: SagaIndex>(o: &Orchestrator<S, I>) {
    let sem = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = Vec::with_capacity(BATCH);
    for _ in 0..BATCH {
        let permit = sem.clone().acquire_owned().await.expect("a permit");
        let o = o.clone();
        tasks.push(tokio::spawn(async move {
            run(&o).await;
            drop(permit);
        }));
    }
    for t in tasks {
        t.await.expect("a saga task");
    }
}

// ---------------------------------------------------------------------------------------------
// steno: the same three steps, its in-memory log.
mod steno_peer {
    use std::sync::{Arc, LazyLock};

    use steno::{
        Action, ActionContext, ActionError, ActionFunc, ActionRegistry, DagBuilder, Node, SagaDag,
        SagaId, SagaName, SagaType, SecClient,
    };

    #[derive(Debug)]
    pub(super) struct Trip;

    impl SagaType for Trip {
        type ExecContextType = ();
    }

    async fn book(_ctx: ActionContext<Trip>) -> Result<String, ActionError> {
        Ok(String::from("booked"))
    }

    async fn cancel(_ctx: ActionContext<Trip>) -> Result<(), anyhow::Error> {
        Ok(())
    }

    static ACTIONS: LazyLock<[Arc<dyn Action<Trip>>; 3]> =
        LazyLock::new(|| super::STEPS.map(|name| ActionFunc::new_action(name, book, cancel)));

    pub(super) fn setup() -> (SecClient, Arc<ActionRegistry<Trip>>, Arc<SagaDag>) {
        let log = slog::Logger::root(slog::Discard, slog::o!());
        let sec = steno::sec(log, Arc::new(steno::InMemorySecStore::new()));
        let mut registry = ActionRegistry::new();
        for a in ACTIONS.iter() {
            registry.register(a.clone());
        }
        let mut builder = DagBuilder::new(SagaName::new("trip"));
        for (a, name) in ACTIONS.iter().zip(super::STEPS) {
            builder.append(Node::action(name, name, a.as_ref()));
        }
        let dag = SagaDag::new(
            builder.build().expect("the steno dag"),
            serde_json::json!({ "who": "ada" }),
        );
        (sec, Arc::new(registry), Arc::new(dag))
    }

    pub(super) async fn run(
        sec: &SecClient,
        registry: &Arc<ActionRegistry<Trip>>,
        dag: &Arc<SagaDag>,
    ) {
        let id = SagaId(uuid::Uuid::now_v7());
        let done = sec
            .saga_create(id, Arc::new(()), dag.clone(), registry.clone())
            .await
            .expect("steno creates the saga");
        sec.saga_start(id).await.expect("steno starts it");
        let result = done.await;
        assert!(result.kind.is_ok());
    }
}

fn bench(c: &mut Criterion) {
    let rt = runtime();
    let dir = tempfile_dir();
    let memory = orchestrator(InMemoryStore::new(), MemoryIndex::new());
    let sqlite = orchestrator(
        SqliteStore::open(dir.join("events.db")).expect("the SQLite log"),
        SqliteIndex::open(dir.join("sagas.db")).expect("the SQLite index"),
    );
    let postgres = std::env::var("TP_POSTGRES_URL").ok().map(|url| {
        rt.block_on(async {
            let url = support::postgres::fresh_database(&url).await;
            let store = PostgresStore::connect(&url, 16)
                .await
                .expect("the PostgreSQL log");
            let index = PostgresIndex::new(store.pool().clone())
                .await
                .expect("the PostgreSQL index");
            orchestrator(store, index)
        })
    });
    if postgres.is_none() {
        eprintln!("skipping the PostgreSQL rows: TP_POSTGRES_URL is not set");
    }
    let services = [service(), service(), service()];
    let (sec, registry, dag) = rt.block_on(async { steno_peer::setup() });
    let sec = Arc::new(sec);

    let mut g = c.benchmark_group("saga_one");
    g.measurement_time(Duration::from_secs(5));
    g.bench_function("direct", |b| b.iter(|| rt.block_on(direct(&services))));
    g.bench_function("tower_patterns_memory", |b| {
        b.iter(|| rt.block_on(run(&memory)))
    });
    g.bench_function("steno_memory", |b| {
        b.iter(|| rt.block_on(steno_peer::run(&sec, &registry, &dag)));
    });
    g.bench_function("tower_patterns_sqlite_full", |b| {
        b.iter(|| rt.block_on(run(&sqlite)))
    });
    if let Some(pg) = &postgres {
        g.bench_function("tower_patterns_postgres", |b| {
            b.iter(|| rt.block_on(run(pg)))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("saga_throughput");
    g.throughput(Throughput::Elements(BATCH as u64));
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    g.bench_function("tower_patterns_memory", |b| {
        b.iter(|| rt.block_on(many(&memory)))
    });
    g.bench_function("steno_memory", |b| {
        b.iter(|| {
            rt.block_on(async {
                let sem = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
                let mut tasks = Vec::with_capacity(BATCH);
                for _ in 0..BATCH {
                    let permit = sem.clone().acquire_owned().await.expect("a permit");
                    let (sec, registry, dag) = (sec.clone(), registry.clone(), dag.clone());
                    tasks.push(tokio::spawn(async move {
                        steno_peer::run(&sec, &registry, &dag).await;
                        drop(permit);
                    }));
                }
                for t in tasks {
                    t.await.expect("a steno task");
                }
            })
        });
    });
    g.bench_function("tower_patterns_sqlite_full", |b| {
        b.iter(|| rt.block_on(many(&sqlite)))
    });
    if let Some(pg) = &postgres {
        g.bench_function("tower_patterns_postgres", |b| {
            b.iter(|| rt.block_on(many(pg)))
        });
    }
    g.finish();
    if let Ok(sec) = Arc::try_unwrap(sec) {
        rt.block_on(sec.shutdown());
    }
    let _ = std::fs::remove_dir_all(dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("tp-bench-saga-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("a directory for the SQLite files");
    dir
}

criterion_group!(benches, bench);
criterion_main!(benches);
