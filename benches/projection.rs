//! Projections, side by side in one run, on the same 10,000 events of the product catalog
//! (1,000 products, each created once, then nine price changes each, interleaved):
//!
//! - **throughput** (events/s), from position 0 to caught up: ours with a SQLite read model and
//!   with a PostgreSQL read model (batches of 256 events per transaction); cqrs-es 0.5 with
//!   postgres-es's `PostgresViewRepository` behind a `GenericQuery`, dispatching each event as
//!   `CqrsFramework::execute` does after each commit (load the view, update it, save it with
//!   its version), and cqrs-es's `QueryReplay::replay_all` reading postgres-es's event table.
//!   cqrs-es has no SQLite view repository: its peer of our SQLite row is a `GenericQuery` over
//!   an in-memory `ViewRepository` written here (a map of serialized views), which flatters it.
//! - **append-to-applied latency** (p50/p99 over 2,000 appends): ours appends one event and
//!   waits for the running projection's handle to report it applied; cqrs-es's peer is
//!   `CqrsFramework::execute` with the query attached (load the aggregate, commit, dispatch).
//!   Criterion reports means, so the bench sorts the samples itself, prints the percentiles and
//!   writes them to `target/perf/projection-latency.json`, where `scripts/perf-doc` reads them.
//!
//! PostgreSQL comes from `TP_POSTGRES_URL`; without it those rows are skipped with a printed
//! note. A fresh database is made for each run.
//!
//! `TP_POSTGRES_URL=postgres://postgres@127.0.0.1:55432/postgres \
//!  cargo bench --features cqrs-postgres --bench projection`

mod support;

use support::latency::{LatencyFile, filter, full_run, selected};

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use cqrs_es::{
    EventEnvelope, Query, View,
    persist::{GenericQuery, PersistenceError, QueryReplay, ViewContext, ViewRepository},
};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};
use tower_patterns::{
    cqrs::{Projection, ProjectionHandle, projection::sqlite_reader},
    eventstore::{
        EventData, EventStore, ExpectedVersion, GlobalPosition,
        postgres::PostgresStore,
        sqlite::{Durability, SqliteStore},
    },
};

/// Events per run: 1,000 products, ten events each.
const EVENTS: u64 = 10_000;
const PRODUCTS: u64 = 1_000;
/// Latency samples per row (after `WARM_UP` unrecorded ones).
const SAMPLES: usize = 2_000;
const WARM_UP: usize = 100;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

// ---------------------------------------------------------------------------------------------
// The product catalog's events (the read model of `examples/catalog`), shared by both sides.

#[path = "../examples/catalog/model.rs"]
mod catalog;

use catalog::ProductEvent;

/// Event `k` of the run: product `k % 1000`, its `k / 1000 + 1`th event (a listing, then
/// price changes).
fn event(k: u64) -> (String, u64, ProductEvent) {
    let product = k % PRODUCTS;
    let id = format!("{product}");
    let event = if k < PRODUCTS {
        ProductEvent::ProductCreated {
            id,
            name: format!("Walnut side table no. {product}"),
            description: "Solid walnut, oiled finish, 45 cm high".into(),
            price_cents: 10_000 + i64::try_from(product).expect("small"),
        }
    } else {
        ProductEvent::PriceUpdated {
            id,
            price_cents: 9_000 + i64::try_from(k % 2_000).expect("small"),
        }
    };
    (
        format!("{}{product}", catalog::PRODUCT_PREFIX),
        k / PRODUCTS + 1,
        event,
    )
}

fn type_name(event: &ProductEvent) -> &'static str {
    tower_patterns::eventstore::DomainEvent::event_type(event)
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

// ---------------------------------------------------------------------------------------------
// Latency samples: percentiles computed here, saved for scripts/perf-doc.

fn samples() -> usize {
    if full_run() { SAMPLES } else { 20 }
}

/// The latency rows, for `scripts/perf-doc`.
static LATENCY: LatencyFile = LatencyFile::new("projection-latency.json");

/// Records one latency row.
fn report_latency(row: &str, samples: Vec<Duration>) {
    LATENCY.report(&format!("projection_latency/{row}"), samples);
}

/// The throughput group's settings: each iteration is a whole catch-up of 10,000 events.
fn throughput_group<'a>(
    c: &'a mut Criterion,
) -> criterion::BenchmarkGroup<'a, criterion::measurement::WallTime> {
    let mut group = c.benchmark_group("projection_throughput");
    group.throughput(Throughput::Elements(EVENTS));
    group.sampling_mode(SamplingMode::Flat);
    group.sample_size(10);
    group.warm_up_time(Duration::from_millis(500));
    group.measurement_time(Duration::from_secs(2));
    group
}

// ---------------------------------------------------------------------------------------------
// Ours: the catalog read model (products + search index) kept by a projection.

fn event_data(e: &ProductEvent) -> EventData {
    EventData::json(type_name(e), e).expect("json")
}

/// Appends the 10,000 events, one append each, in order; the last position.
async fn fill<S: EventStore>(store: &S) -> GlobalPosition {
    let mut last = GlobalPosition::START;
    for k in 0..EVENTS {
        let (stream, _, e) = event(k);
        let appended = store
            .append(&stream, ExpectedVersion::Any, vec![event_data(&e)])
            .await
            .expect("append");
        last = *appended.positions.last().expect("a position");
    }
    last
}

/// Runs `projection` from its start until it has applied `head`; the time it took.
async fn catch_up(projection: Projection, head: GlobalPosition) -> (Duration, ProjectionHandle) {
    let start = Instant::now();
    let (handle, task) = projection.spawn();
    assert!(
        handle.wait_for(head, Duration::from_secs(600)).await,
        "caught up: {:?}",
        handle.status()
    );
    let elapsed = start.elapsed();
    handle.shutdown();
    task.await.expect("join").expect("the projection ran");
    (elapsed, handle)
}

/// Append-to-applied: appends one price change, waits until `handle` has applied it.
async fn append_to_applied<S: EventStore>(store: &S, handle: &ProjectionHandle) -> Vec<Duration> {
    let mut out = Vec::with_capacity(samples());
    for i in 0..WARM_UP + samples() {
        let product = i as u64 % PRODUCTS;
        let e = ProductEvent::PriceUpdated {
            id: product.to_string(),
            price_cents: 20_000 + i as i64,
        };
        let stream = format!("{}{product}", catalog::PRODUCT_PREFIX);
        let start = Instant::now();
        let appended = store
            .append(&stream, ExpectedVersion::Any, vec![event_data(&e)])
            .await
            .expect("append");
        assert!(
            handle
                .wait_for(appended.positions[0], Duration::from_secs(10))
                .await,
            "applied within 10 s: {:?}",
            handle.status()
        );
        if i >= WARM_UP {
            out.push(start.elapsed());
        }
    }
    out
}

/// Every product listed once in the read model at `path`.
fn check_sqlite_model(path: &std::path::Path, handle: &ProjectionHandle) {
    let conn = sqlite_reader(path).expect("open the read model");
    let n: i64 = conn
        .query_row(
            &format!("SELECT count(*) FROM {}", handle.tables().name("products")),
            [],
            |r| r.get(0),
        )
        .expect("count");
    assert_eq!(n, i64::try_from(PRODUCTS).expect("small"));
}

fn ours(c: &mut Criterion) {
    if filter().is_some_and(|f| f.contains("cqrs_es")) {
        return;
    }
    let rt = runtime();
    let dir = tempfile_dir();
    let store_path = dir.join("events.db");
    let store = Arc::new(SqliteStore::open_with(&store_path, Durability::Normal).expect("open"));
    let head = rt.block_on(fill(&*store));
    let mut run = 0u32;
    let mut group = throughput_group(c);
    let mut last = None;
    group.bench_function("tower_patterns_sqlite", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                run += 1;
                let path = dir.join(format!("catalog-{run}.db"));
                let projection = Projection::builder(format!("catalog_{run}"))
                    .source(store.clone())
                    .sqlite(&path, catalog::Catalog)
                    .batch(256)
                    .build()
                    .expect("build");
                let (elapsed, handle) = rt.block_on(catch_up(projection, head));
                total += elapsed;
                last = Some((path, handle));
            }
            total
        })
    });
    if let Some((path, handle)) = last.take() {
        check_sqlite_model(&path, &handle);
    }
    let postgres = postgres_url().map(|url| {
        let url = rt.block_on(support::postgres::fresh_database(&url));
        let store = Arc::new(
            rt.block_on(PostgresStore::connect(&url, 8))
                .expect("connect"),
        );
        let head = rt.block_on(fill(&*store));
        (store, head)
    });
    if let Some((store, head)) = &postgres {
        group.bench_function("tower_patterns_postgres", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    run += 1;
                    let projection = Projection::builder(format!("catalog_{run}"))
                        .source(store.clone())
                        .postgres(store.pool().clone(), catalog::Catalog)
                        .batch(256)
                        .build()
                        .expect("build");
                    total += rt.block_on(catch_up(projection, *head)).0;
                }
                total
            })
        });
    }
    group.finish();

    // Latency: a live projection over the same log, one append at a time.
    for (row, durability) in [
        ("tower_patterns_sqlite_full", Durability::Full),
        ("tower_patterns_sqlite_normal", Durability::Normal),
    ] {
        if !selected(&format!("projection_latency/{row}")) {
            continue;
        }
        run += 1;
        // The filled file, reopened with this row's durability (a connection setting).
        let store = Arc::new(SqliteStore::open_with(&store_path, durability).expect("open"));
        let head = rt.block_on(async { store.head().await.expect("head") });
        let path = dir.join(format!("catalog-{run}.db"));
        let projection = Projection::builder(format!("catalog_{run}"))
            .source(store.clone())
            .sqlite(&path, catalog::Catalog)
            .build()
            .expect("build");
        let samples = rt.block_on(live_latency(&*store, projection, head.map(|h| h.position)));
        report_latency(row, samples);
    }
    if let Some((store, head)) = postgres
        && selected("projection_latency/tower_patterns_postgres")
    {
        run += 1;
        let projection = Projection::builder(format!("catalog_{run}"))
            .source(store.clone())
            .postgres(store.pool().clone(), catalog::Catalog)
            .build()
            .expect("build");
        let samples = rt.block_on(live_latency(&*store, projection, Some(head)));
        report_latency("tower_patterns_postgres", samples);
    }
}

/// Starts `projection`, lets it catch up with `head`, then measures append-to-applied.
async fn live_latency<S: EventStore>(
    store: &S,
    projection: Projection,
    head: Option<GlobalPosition>,
) -> Vec<Duration> {
    let (handle, task) = projection.spawn();
    if let Some(head) = head {
        assert!(
            handle.wait_for(head, Duration::from_secs(600)).await,
            "caught up"
        );
    }
    let samples = append_to_applied(store, &handle).await;
    handle.shutdown();
    task.await.expect("join").expect("the projection ran");
    samples
}

// ---------------------------------------------------------------------------------------------
// cqrs-es: the product aggregate, its view, and an in-memory view repository.

#[derive(Default, Serialize, Deserialize)]
struct Product {
    price_cents: i64,
}

#[derive(Debug)]
struct Never;

impl std::fmt::Display for Never {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("never")
    }
}

impl std::error::Error for Never {}

impl cqrs_es::DomainEvent for ProductEvent {
    fn event_type(&self) -> String {
        type_name(self).into()
    }
    fn event_version(&self) -> String {
        "1.0".into()
    }
}

impl cqrs_es::Aggregate for Product {
    const TYPE: &'static str = "product";
    type Command = i64;
    type Event = ProductEvent;
    type Error = Never;
    type Services = ();

    async fn handle(
        &mut self,
        price_cents: i64,
        _: &(),
        sink: &cqrs_es::event_sink::EventSink<Self>,
    ) -> Result<(), Never> {
        let id = String::new(); // the stream names the product; the event repeats it
        sink.write(ProductEvent::PriceUpdated { id, price_cents }, self)
            .await;
        Ok(())
    }

    fn apply(&mut self, event: ProductEvent) {
        if let ProductEvent::ProductCreated { price_cents, .. }
        | ProductEvent::PriceUpdated { price_cents, .. } = event
        {
            self.price_cents = price_cents;
        }
    }
}

/// The cached product, as the catalog's read side shows it (cqrs-es keeps no search index:
/// ours does more per event).
#[derive(Debug, Default, Serialize, Deserialize)]
struct ProductView {
    id: String,
    name: String,
    description: String,
    price_cents: i64,
    price_changes: u32,
}

impl View<Product> for ProductView {
    fn update(&mut self, event: &EventEnvelope<Product>) {
        match &event.payload {
            ProductEvent::ProductCreated {
                id,
                name,
                description,
                price_cents,
            } => {
                self.id.clone_from(id);
                self.name.clone_from(name);
                self.description.clone_from(description);
                self.price_cents = *price_cents;
            }
            ProductEvent::PriceUpdated { price_cents, .. } => {
                self.price_cents = *price_cents;
                self.price_changes += 1;
            }
            ProductEvent::Renamed {
                name, description, ..
            } => {
                self.name.clone_from(name);
                self.description.clone_from(description);
            }
            ProductEvent::Deleted { .. } => {}
        }
    }
}

/// cqrs-es's peer of a SQLite read model: views kept serialized in a map, with their
/// versions checked on update as a database repository does.
#[derive(Default)]
struct MemoryViews(Mutex<HashMap<String, (String, i64)>>);

impl ViewRepository<ProductView, Product> for MemoryViews {
    async fn load(&self, view_id: &str) -> Result<Option<ProductView>, PersistenceError> {
        Ok(self.load_with_context(view_id).await?.map(|(v, _)| v))
    }

    async fn load_with_context(
        &self,
        view_id: &str,
    ) -> Result<Option<(ProductView, ViewContext)>, PersistenceError> {
        let views = self.0.lock().expect("views");
        match views.get(view_id) {
            None => Ok(None),
            Some((json, version)) => Ok(Some((
                serde_json::from_str(json)?,
                ViewContext::new(view_id.to_owned(), *version),
            ))),
        }
    }

    async fn update_view(
        &self,
        view: ProductView,
        context: ViewContext,
    ) -> Result<(), PersistenceError> {
        let json = serde_json::to_string(&view)?;
        let mut views = self.0.lock().expect("views");
        let current = views.get(&context.view_instance_id).map_or(0, |v| v.1);
        if current != context.version {
            return Err(PersistenceError::OptimisticLockError);
        }
        views.insert(context.view_instance_id, (json, context.version + 1));
        Ok(())
    }
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
);
CREATE TABLE IF NOT EXISTS product_view (
    view_id text                        NOT NULL,
    version bigint CHECK (version >= 0) NOT NULL,
    payload json                        NOT NULL,
    PRIMARY KEY (view_id)
);";

/// The 10,000 events as cqrs-es hands them to its queries.
fn envelopes() -> Vec<EventEnvelope<Product>> {
    (0..EVENTS)
        .map(|k| {
            let (stream, sequence, payload) = event(k);
            EventEnvelope {
                aggregate_id: stream,
                sequence: usize::try_from(sequence).expect("small"),
                payload,
                metadata: HashMap::new(),
            }
        })
        .collect()
}

/// A PostgreSQL database with cqrs-es's tables, its event table holding the 10,000 events.
async fn cqrs_es_database(url: &str) -> sqlx::PgPool {
    let url = support::postgres::fresh_database(url).await;
    let pool = postgres_es::default_postgress_pool(&url).await;
    sqlx::raw_sql(CQRS_ES_SCHEMA)
        .execute(&pool)
        .await
        .expect("cqrs-es schema");
    let repo = postgres_es::PostgresEventRepository::new(pool.clone());
    // One persist per aggregate and round (as commits would have written them).
    for k in 0..EVENTS {
        let (stream, sequence, payload) = event(k);
        let serialized = cqrs_es::persist::SerializedEvent::new(
            stream,
            usize::try_from(sequence).expect("small"),
            "product".into(),
            type_name(&payload).into(),
            "1.0".into(),
            serde_json::to_value(&payload).expect("json"),
            serde_json::json!({}),
        );
        cqrs_es::persist::PersistedEventRepository::persist::<Product>(&repo, &[serialized], None)
            .await
            .expect("persist");
    }
    pool
}

async fn truncate_views(pool: &sqlx::PgPool) {
    sqlx::raw_sql("TRUNCATE product_view")
        .execute(pool)
        .await
        .expect("truncate");
}

fn cqrs_es_throughput(c: &mut Criterion) {
    if !selected("projection_throughput/cqrs_es") {
        return;
    }
    let rt = runtime();
    let envelopes = envelopes();
    let mut group = throughput_group(c);
    group.bench_function("cqrs_es_0_5_memory_views", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let query =
                    GenericQuery::<_, ProductView, Product>::new(Arc::new(MemoryViews::default()));
                total += rt.block_on(async {
                    let start = Instant::now();
                    for e in &envelopes {
                        query
                            .dispatch(&e.aggregate_id, std::slice::from_ref(e))
                            .await;
                    }
                    start.elapsed()
                });
            }
            total
        })
    });
    if let Some(url) = postgres_url() {
        let pool = rt.block_on(cqrs_es_database(&url));
        let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let query = || {
            let mut q = GenericQuery::<_, ProductView, Product>::new(Arc::new(
                postgres_es::PostgresViewRepository::new("product_view", pool.clone()),
            ));
            let errors = errors.clone();
            q.use_error_handler(Box::new(move |_| {
                errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }));
            q
        };
        group.bench_function("cqrs_es_0_5_postgres_es_dispatch", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    rt.block_on(truncate_views(&pool));
                    let query = query();
                    total += rt.block_on(async {
                        let start = Instant::now();
                        for e in &envelopes {
                            query
                                .dispatch(&e.aggregate_id, std::slice::from_ref(e))
                                .await;
                        }
                        start.elapsed()
                    });
                }
                total
            })
        });
        group.bench_function("cqrs_es_0_5_postgres_es_replay_all", |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    rt.block_on(truncate_views(&pool));
                    let replay = QueryReplay::<_, _, Product>::new(
                        postgres_es::PostgresEventRepository::new(pool.clone()),
                        query(),
                    );
                    total += rt.block_on(async {
                        let start = Instant::now();
                        replay.replay_all().await.expect("replay");
                        start.elapsed()
                    });
                }
                total
            })
        });
        assert_eq!(
            errors.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "cqrs-es's query reported errors"
        );
        rt.block_on(check_cqrs_es_views(&pool));
    }
    group.finish();
}

/// The last run left every product with its nine price changes.
async fn check_cqrs_es_views(pool: &sqlx::PgPool) {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM product_view WHERE (payload->>'price_changes')::int = 9",
    )
    .fetch_one(pool)
    .await
    .expect("count");
    assert_eq!(n, i64::try_from(PRODUCTS).expect("small"));
}

fn cqrs_es_latency(_: &mut Criterion) {
    let rt = runtime();
    if !selected("projection_latency/cqrs_es_0_5_postgres_es") {
        return;
    }
    let Some(url) = postgres_url() else { return };
    let pool = rt.block_on(cqrs_es_database(&url));
    let query = GenericQuery::<_, ProductView, Product>::new(Arc::new(
        postgres_es::PostgresViewRepository::new("product_view", pool.clone()),
    ));
    let cqrs = postgres_es::postgres_cqrs(pool, vec![Box::new(query)], ());
    let samples = rt.block_on(async {
        let mut out = Vec::with_capacity(samples());
        for i in 0..WARM_UP + samples() {
            let id = format!("product-{}", i as u64 % PRODUCTS);
            let start = Instant::now();
            cqrs.execute(&id, i as i64).await.expect("execute");
            if i >= WARM_UP {
                out.push(start.elapsed());
            }
        }
        out
    });
    report_latency("cqrs_es_0_5_postgres_es", samples);
}

criterion_group! {
    name = benches;
    config = support::config();
    targets = ours, cqrs_es_throughput, cqrs_es_latency
}
criterion_main!(benches);
