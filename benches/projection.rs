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

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use cqrs_es::{
    EventEnvelope, Query, View,
    persist::{GenericQuery, PersistenceError, QueryReplay, ViewContext, ViewRepository},
};
use criterion::{Criterion, SamplingMode, Throughput, criterion_group, criterion_main};
use serde::{Deserialize, Serialize};

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
// The product catalog's events, shared by both sides.

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum CatalogEvent {
    ProductCreated { name: String, price_cents: i64 },
    PriceChanged { price_cents: i64 },
}

impl CatalogEvent {
    fn type_name(&self) -> &'static str {
        match self {
            Self::ProductCreated { .. } => "ProductCreated",
            Self::PriceChanged { .. } => "PriceChanged",
        }
    }
}

/// Event `k` of the run: product `k % 1000`, its `k / 1000 + 1`th event.
fn event(k: u64) -> (String, u64, CatalogEvent) {
    let product = k % PRODUCTS;
    let stream = format!("product-{product}");
    let event = if k < PRODUCTS {
        CatalogEvent::ProductCreated {
            name: format!("Walnut side table no. {product}"),
            price_cents: 10_000 + i64::try_from(product).expect("small"),
        }
    } else {
        CatalogEvent::PriceChanged {
            price_cents: 9_000 + i64::try_from(k % 2_000).expect("small"),
        }
    };
    (stream, k / PRODUCTS + 1, event)
}

async fn fresh_database(url: &str) -> String {
    let (admin, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("PostgreSQL answers");
    tokio::spawn(conn);
    let db = format!("tp_bench_{}", uuid::Uuid::now_v7().simple());
    admin
        .batch_execute(&format!("CREATE DATABASE {db}"))
        .await
        .expect("create the bench database");
    let base = url.rsplit_once('/').map_or(url, |(b, _)| b);
    format!("{base}/{db}")
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

/// Criterion runs a bench once per benchmark in `cargo test --benches`; a full run passes
/// `--bench`. Outside a full run, latency takes a few samples only.
fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// Whether the command line's filter (criterion's first free argument) selects `id`.
fn selected(id: &str) -> bool {
    std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .is_none_or(|filter| id.contains(&filter))
}

fn samples() -> usize {
    if full_run() { SAMPLES } else { 20 }
}

static LATENCY: Mutex<BTreeMap<String, serde_json::Value>> = Mutex::new(BTreeMap::new());

/// Nearest-rank percentile of sorted samples.
fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Records one latency row: prints it and rewrites `target/perf/projection-latency.json`.
fn report_latency(row: &str, mut samples: Vec<Duration>) {
    samples.sort_unstable();
    let (p50, p99, max) = (
        percentile(&samples, 50.0),
        percentile(&samples, 99.0),
        *samples.last().expect("samples"),
    );
    let id = format!("projection_latency/{row}");
    eprintln!(
        "{id}: p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs ({} samples)",
        p50.as_secs_f64() * 1e6,
        p99.as_secs_f64() * 1e6,
        max.as_secs_f64() * 1e6,
        samples.len()
    );
    if !full_run() {
        return;
    }
    let mut all = LATENCY.lock().expect("latency rows");
    all.insert(
        id,
        serde_json::json!({
            "samples": samples.len(),
            "p50_ns": p50.as_nanos() as f64,
            "p99_ns": p99.as_nanos() as f64,
            "max_ns": max.as_nanos() as f64,
        }),
    );
    let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
        || std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target"),
        std::path::PathBuf::from,
    );
    let dir = target.join("perf");
    std::fs::create_dir_all(&dir).expect("target/perf");
    std::fs::write(
        dir.join("projection-latency.json"),
        serde_json::to_string_pretty(&*all).expect("json"),
    )
    .expect("write the latency rows");
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

impl cqrs_es::DomainEvent for CatalogEvent {
    fn event_type(&self) -> String {
        self.type_name().into()
    }
    fn event_version(&self) -> String {
        "1.0".into()
    }
}

impl cqrs_es::Aggregate for Product {
    const TYPE: &'static str = "product";
    type Command = i64;
    type Event = CatalogEvent;
    type Error = Never;
    type Services = ();

    async fn handle(
        &mut self,
        price_cents: i64,
        _: &(),
        sink: &cqrs_es::event_sink::EventSink<Self>,
    ) -> Result<(), Never> {
        sink.write(CatalogEvent::PriceChanged { price_cents }, self)
            .await;
        Ok(())
    }

    fn apply(&mut self, event: CatalogEvent) {
        match event {
            CatalogEvent::ProductCreated { price_cents, .. }
            | CatalogEvent::PriceChanged { price_cents } => self.price_cents = price_cents,
        }
    }
}

/// The cached product, as the catalog's read side shows it.
#[derive(Debug, Default, Serialize, Deserialize)]
struct ProductView {
    name: String,
    price_cents: i64,
    price_changes: u32,
}

impl View<Product> for ProductView {
    fn update(&mut self, event: &EventEnvelope<Product>) {
        match &event.payload {
            CatalogEvent::ProductCreated { name, price_cents } => {
                self.name.clone_from(name);
                self.price_cents = *price_cents;
            }
            CatalogEvent::PriceChanged { price_cents } => {
                self.price_cents = *price_cents;
                self.price_changes += 1;
            }
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
    let url = fresh_database(url).await;
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
            payload.type_name().into(),
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
    targets = cqrs_es_throughput, cqrs_es_latency
}
criterion_main!(benches);
