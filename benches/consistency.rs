//! Eventual consistency: what a consistency token costs on a read, and how stale a PostgreSQL
//! streaming replica is.
//!
//! **`consistency_check`**, side by side in one run, ns per call, polled directly: a
//! `GET /orders/1` (`http::Request<()>`, built per call) through a `service_fn` that answers an
//! empty `Response<()>` at once.
//!
//! - `bare`: the service alone, given the same request as the token rows (the token header
//!   ignored), so what the layer rows add over it is the layer's own work;
//! - `bare_no_token`: the service alone with the request of `layer_no_token` (no header: no
//!   header map to allocate);
//! - `layer_no_token`: the `ConsistencyLayer` over it, the request without a token;
//! - `layer_token_progress`: with a valid token whose position a `Progress` read side has
//!   reached;
//! - `layer_token_projection`: the same with the `ProjectionHandle` of a running SQLite
//!   projection (in-memory event store and database) that has applied that position, built
//!   and caught up before measuring;
//! - `verify_siphash`: `Tokens::verify` alone on that token (length check, hex decode, one
//!   SipHash-2-4 of the scope and the 17-byte mark);
//! - `verify_hmac_sha256`: the same token format (parsed by a plain loop over the digits, a
//!   few nanoseconds more than the crate's word-at-a-time parse) with the tag computed as
//!   HMAC-SHA-256 over the same bytes (truncated to the same 64 bits, so tokens keep their
//!   length and only the MAC differs), the key's inner and outer pads absorbed once, outside
//!   the loop. HMAC-SHA-256 is what a typical signed token (a JWT's HS256, a signed cookie)
//!   costs, and the alternative the design rejected: the check runs on every read that carries
//!   a token, with a goal under 100 ns over the bare query, and HMAC-SHA-256 compresses two
//!   64-byte blocks of 64 rounds each (the inner and the outer hash) where SipHash-2-4, a keyed
//!   function designed as a MAC for short inputs, runs a few rounds of additions, rotations
//!   and XORs per 8 bytes of the token's 31. For a 64-bit tag on a position (no secret behind
//!   it, every wrong guess answered with a 400), SipHash's strength is enough.
//!
//! **Staleness (write-to-visible) on a streaming replica**: the primary from `TP_POSTGRES_URL`,
//! the replica from the first of `TP_POSTGRES_REPLICA_URLS` (comma-separated, as
//! `scripts/test --with-servers` exports them); without both the rows are skipped with a
//! printed note. Each sample inserts one row into a fresh table on the primary (autocommit),
//! then, from the INSERT's return:
//!
//! - `postgres_replica_lsn`: reads the primary's `pg_current_wal_insert_lsn()` (the token a
//!   replica router would issue) and polls the replica with `pg_last_wal_replay_lsn() >= lsn`
//!   in a tight loop until true;
//! - `postgres_replica_row`: polls the replica for the row itself (`SELECT … WHERE id = $1`),
//!   to show that the replay position and the data agree;
//! - `postgres_replica_lsn_async_commit`: as `postgres_replica_lsn`, the primary's session
//!   with `synchronous_commit = off`.
//!
//! The sample is the time from the INSERT's return to the first true answer; its resolution is
//! one loopback round trip. The test servers run the primary with `fsync=off` and
//! `synchronous_commit=off`. The first two rows set `synchronous_commit = on` (PostgreSQL's
//! default) in their session: with it off, a commit returns before its WAL is flushed, and a
//! walsender sends a replica only flushed WAL, so the write leaves the primary at the WAL
//! writer's next round (every `wal_writer_delay`, 200 ms by default), which the third row
//! shows. `fsync=off` makes the flush itself cheap, as a fast disk would. 2,000 samples per
//! row (200 for the third) after 100 unrecorded ones in a full run (`--bench` without
//! `--test`), 20 after 5 otherwise; percentiles (nearest rank) are printed and, in a full run,
//! written to `target/perf/consistency-latency.json`, where `scripts/perf-doc` reads them.
//!
//! `scripts/test --with-servers -- cargo bench --features full --bench consistency`

mod support;

use support::latency::{LatencyFile, full_run, selected};

use std::{
    convert::Infallible,
    future::{Ready, ready},
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};
use futures::{TryFutureExt, future::MapOk};
use hmac::{Hmac, Mac};
use http::{HeaderValue, Request, Response, StatusCode};
use sha2::Sha256;
use tower::{Layer, Service, service_fn};
use tower_patterns::{
    consistency::{
        Lsn, Mark, Progress, ReadSide, TokenKey, Tokens,
        layer::{ConsistencyLayer, TOKEN_HEADER},
        replica::ReplicaSet,
    },
    cqrs::{
        ProjectionHandle,
        projection::{ApplyError, Projection, SqliteProjection, Tables},
    },
    eventstore::{EventData, EventStore, ExpectedVersion, InMemoryStore, RecordedEvent},
};

const KEY: [u8; 16] = *b"bench token key!";
/// The layer's name, the tokens' scope.
const SCOPE: &str = "orders";
/// Events in the projection's log before measuring; the token is for the last.
const EVENTS: u64 = 100;

// ---------------------------------------------------------------------------------------------
// The token check.

/// Turns the benchmark's counter into a `GET /orders/1`, with the token header when there is
/// one; the response is reduced to its status, which must be a 200.
#[derive(Clone)]
struct Get<S> {
    inner: S,
    token: Option<HeaderValue>,
}

impl<S, B> Service<u64> for Get<S>
where
    S: Service<Request<()>, Response = Response<B>>,
{
    type Response = u16;
    type Error = S::Error;
    type Future = MapOk<S::Future, fn(Response<B>) -> u16>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, _: u64) -> Self::Future {
        let mut req = Request::new(());
        *req.uri_mut() = http::Uri::from_static("/orders/1");
        if let Some(token) = &self.token {
            req.headers_mut().insert(TOKEN_HEADER, token.clone());
        }
        self.inner
            .call(req)
            .map_ok(status as fn(Response<B>) -> u16)
    }
}

/// The response's status, which must be a 200: a refusal or a wait would not be the check
/// measured here. (By value: it maps the response future's output.)
#[allow(clippy::needless_pass_by_value)]
fn status<B>(res: Response<B>) -> u16 {
    assert_eq!(res.status(), StatusCode::OK, "refused in a benchmark");
    res.status().as_u16()
}

/// The inner service: an empty 200 at once.
fn app() -> impl Service<
    Request<()>,
    Response = Response<()>,
    Error = Infallible,
    Future = Ready<Result<Response<()>, Infallible>>,
> + Clone {
    service_fn(|_: Request<()>| ready(Ok::<_, Infallible>(Response::new(()))))
}

/// The catalog's smallest read model: the number of events of each stream.
struct StreamSizes;

impl SqliteProjection for StreamSizes {
    fn create(&self, tx: &rusqlite::Transaction<'_>, t: &Tables) -> Result<(), ApplyError> {
        tx.execute_batch(&format!(
            "CREATE TABLE {} (stream TEXT PRIMARY KEY, events INTEGER NOT NULL)",
            t.name("sizes")
        ))?;
        Ok(())
    }

    fn apply(
        &self,
        tx: &rusqlite::Transaction<'_>,
        t: &Tables,
        e: &RecordedEvent,
    ) -> Result<(), ApplyError> {
        tx.execute(
            &format!(
                "INSERT INTO {} VALUES (?1, 1) \
                 ON CONFLICT (stream) DO UPDATE SET events = events + 1",
                t.name("sizes")
            ),
            [&e.stream_id],
        )?;
        Ok(())
    }
}

/// The layer as an application would set it up, over `read_side`.
fn layer<R: ReadSide>(read_side: R) -> ConsistencyLayer<R> {
    ConsistencyLayer::builder(SCOPE)
        .key(TokenKey::new(KEY))
        .read_side(read_side)
        .build()
        .expect("build")
}

/// A SQLite projection that has applied `EVENTS` events, running on `rt`; the mark of the
/// last.
fn caught_up_projection(rt: &tokio::runtime::Runtime) -> (ProjectionHandle, Mark) {
    rt.block_on(async {
        let store = Arc::new(InMemoryStore::new());
        let mut last = None;
        for i in 0..EVENTS {
            let appended = store
                .append(
                    &format!("order-{}", i % 10),
                    ExpectedVersion::Any,
                    vec![EventData::json("Placed", &i).expect("json")],
                )
                .await
                .expect("append");
            last = appended.positions.last().copied();
        }
        let last = last.expect("a position");
        let db = Arc::new(Mutex::new(
            rusqlite::Connection::open_in_memory().expect("an in-memory database"),
        ));
        let (handle, _task) = Projection::builder("order_sizes")
            .source(store)
            .sqlite_connection(db, StreamSizes)
            .build()
            .expect("build")
            .spawn();
        assert!(
            handle.wait_for(last, Duration::from_secs(60)).await,
            "caught up: {:?}",
            handle.status()
        );
        (handle, Mark::Position(last))
    })
}

/// Tokens of the same format whose tag is HMAC-SHA-256 (truncated to 64 bits) over the bytes
/// SipHash signs: the scope's length and bytes, the kind and the mark.
struct HmacTokens {
    /// The key's pads absorbed and the scope written: cloned per token.
    keyed: Hmac<Sha256>,
}

impl HmacTokens {
    fn new(scope: &str, key: &[u8]) -> Self {
        let mut keyed = Hmac::<Sha256>::new_from_slice(key).expect("any key length");
        keyed.update(&(scope.len() as u64).to_le_bytes());
        keyed.update(scope.as_bytes());
        Self { keyed }
    }

    fn message(commit: u64, index: u64) -> [u8; 17] {
        let mut m = [0u8; 17];
        m[0] = b'e';
        m[1..9].copy_from_slice(&commit.to_be_bytes());
        m[9..].copy_from_slice(&index.to_be_bytes());
        m
    }

    /// A position token: `1e`, the commit and index in hex, the 64-bit tag in hex.
    fn issue(&self, commit: u64, index: u64) -> String {
        let mut mac = self.keyed.clone();
        mac.update(&Self::message(commit, index));
        let tag = mac.finalize().into_bytes();
        let mut token = format!("1e{commit:016x}{index:016x}");
        for b in &tag[..8] {
            token.push_str(&format!("{b:02x}"));
        }
        token
    }

    /// Parses and verifies a position token as `Tokens::verify` does; the mark.
    fn verify(&self, token: &str) -> Option<(u64, u64)> {
        let t = token.as_bytes();
        if t.len() != 50 || t[0] != b'1' || t[1] != b'e' {
            return None;
        }
        let (commit, index) = (unhex16(&t[2..18])?, unhex16(&t[18..34])?);
        let tag = unhex16(&t[34..50])?.to_be_bytes();
        let mut mac = self.keyed.clone();
        mac.update(&Self::message(commit, index));
        // Constant-time, as a MAC check must be.
        mac.verify_truncated_left(&tag).ok()?;
        Some((commit, index))
    }
}

fn unhex16(s: &[u8]) -> Option<u64> {
    s.iter().try_fold(0u64, |v, &c| {
        let n = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        Some((v << 4) | u64::from(n))
    })
}

fn check(c: &mut Criterion) {
    // The projection runs on this runtime while the calls are polled directly.
    let rt = support::two_workers();
    let (projection, mark) = caught_up_projection(&rt);
    let tokens = Tokens::new(SCOPE, TokenKey::new(KEY));
    let token = tokens.header_value(mark);
    let progress = Progress::new(mark);

    let mut group = c.benchmark_group("consistency_check");
    macro_rules! case {
        ($name:literal, $svc:expr) => {{
            let mut svc = $svc;
            let mut i = 0u64;
            group.bench_function($name, |b| {
                b.iter(|| {
                    i = i.wrapping_add(1);
                    support::one_call(&mut svc, i)
                })
            });
        }};
    }
    case!(
        "bare",
        Get {
            inner: app(),
            token: Some(token.clone()),
        }
    );
    case!(
        "bare_no_token",
        Get {
            inner: app(),
            token: None,
        }
    );
    case!(
        "layer_no_token",
        Get {
            inner: layer(progress.clone()).layer(app()),
            token: None,
        }
    );
    case!(
        "layer_token_progress",
        Get {
            inner: layer(progress.clone()).layer(app()),
            token: Some(token.clone()),
        }
    );
    case!(
        "layer_token_projection",
        Get {
            inner: layer(projection.clone()).layer(app()),
            token: Some(token.clone()),
        }
    );

    let text = token.to_str().expect("ASCII").to_owned();
    assert_eq!(tokens.verify(&text), Ok(mark));
    group.bench_function("verify_siphash", |b| {
        b.iter(|| tokens.verify(std::hint::black_box(&text)))
    });
    let Mark::Position(p) = mark else {
        unreachable!("a projection's mark is a position")
    };
    let hmac = HmacTokens::new(SCOPE, &KEY);
    let hmac_token = hmac.issue(p.commit, p.index);
    assert_eq!(hmac_token.len(), text.len());
    assert_eq!(hmac.verify(&hmac_token), Some((p.commit, p.index)));
    let mut forged = hmac_token.clone().into_bytes();
    forged[49] = if forged[49] == b'0' { b'1' } else { b'0' };
    assert_eq!(
        hmac.verify(std::str::from_utf8(&forged).expect("ASCII")),
        None
    );
    group.bench_function("verify_hmac_sha256", |b| {
        b.iter(|| hmac.verify(std::hint::black_box(&hmac_token)))
    });
    group.finish();
    projection.shutdown();
}

// ---------------------------------------------------------------------------------------------
// Staleness on a streaming replica.

/// Latency samples per row (after `warm_up()` unrecorded ones) in a full run.
const SAMPLES: usize = 2_000;
/// How long a sample may take before the replica is taken for broken.
const GIVE_UP: Duration = Duration::from_secs(30);

fn warm_up() -> usize {
    if full_run() { 100 } else { 5 }
}

/// The staleness rows, for `scripts/perf-doc` (the shape of `projection-latency.json`).
static LATENCY: LatencyFile = LatencyFile::new("consistency-latency.json");

/// Records one staleness row.
fn report_latency(row: &str, samples: Vec<Duration>) {
    LATENCY.report(&format!("consistency_staleness/{row}"), samples);
}

/// The primary's and the first replica's URLs, or `None` with a printed note.
fn replica_urls() -> Option<(String, String)> {
    let primary = std::env::var("TP_POSTGRES_URL").ok();
    let replica = std::env::var("TP_POSTGRES_REPLICA_URLS")
        .ok()
        .and_then(|urls| urls.split(',').next().map(str::to_owned))
        .filter(|url| !url.is_empty());
    match (primary, replica) {
        (Some(p), Some(r)) => Some((p, r)),
        _ => {
            eprintln!(
                "skipping the replica staleness rows: TP_POSTGRES_URL and \
                 TP_POSTGRES_REPLICA_URLS are not both set (scripts/test --with-servers sets them)"
            );
            None
        }
    }
}

async fn connect(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} answers: {e}"));
    tokio::spawn(conn);
    client
}

/// The primary's WAL page and segment sizes.
async fn geometry(primary: &tokio_postgres::Client) -> (u64, u64) {
    let row = primary
        .query_one(
            "SELECT current_setting('wal_block_size')::bigint, \
                    pg_size_bytes(current_setting('wal_segment_size'))",
            &[],
        )
        .await
        .expect("the WAL's geometry");
    let (block, segment): (i64, i64) = (row.get(0), row.get(1));
    (
        u64::try_from(block).expect("positive"),
        u64::try_from(segment).expect("positive"),
    )
}

/// The primary's insert position as a replica's replay position can show it: right after a
/// page header (24 bytes, or 40 at a segment's first page) the next record has not started,
/// and a replica that replayed everything before stays at the page's start until it does.
fn normalise(lsn: Lsn, (block, segment): (u64, u64)) -> Lsn {
    if lsn.0 % segment == 40 {
        Lsn(lsn.0 - 40)
    } else if lsn.0 % segment >= block && lsn.0 % block == 24 {
        Lsn(lsn.0 - 24)
    } else {
        lsn
    }
}

/// How a sample waits for the write on the replica.
#[derive(Clone, Copy, PartialEq)]
enum Until {
    /// The replica's replay position reaches the primary's insert position.
    Lsn,
    /// The row can be read on the replica.
    Row,
    /// A `ReplicaSet` over the primary and the replica (its monitor probing every 2 ms while a
    /// request waits, and flushing the primary's WAL for it after 10 ms) says a replica has
    /// reached the insert position: what a read carrying the write's token waits through the
    /// consistency layer.
    ReplicaSet,
}

/// One staleness row: how it waits, the primary session's `synchronous_commit`, and its
/// samples in a full run.
struct Row {
    name: &'static str,
    until: Until,
    synchronous_commit: &'static str,
    samples: usize,
}

const ROWS: [Row; 5] = [
    Row {
        name: "postgres_replica_lsn",
        until: Until::Lsn,
        synchronous_commit: "on",
        samples: SAMPLES,
    },
    Row {
        name: "postgres_replica_row",
        until: Until::Row,
        synchronous_commit: "on",
        samples: SAMPLES,
    },
    // Each sample waits for the WAL writer (about `wal_writer_delay`): fewer of them.
    Row {
        name: "postgres_replica_lsn_async_commit",
        until: Until::Lsn,
        synchronous_commit: "off",
        samples: SAMPLES / 10,
    },
    Row {
        name: "replica_set_wait",
        until: Until::ReplicaSet,
        synchronous_commit: "on",
        samples: SAMPLES,
    },
    // The set's monitor flushes the primary for a waiting read: no WAL writer round.
    Row {
        name: "replica_set_wait_async_commit",
        until: Until::ReplicaSet,
        synchronous_commit: "off",
        samples: SAMPLES / 4,
    },
];

/// A replica set over the primary and one replica, its monitor running, once it sees the
/// replica healthy.
async fn replica_set(primary_url: &str, replica_url: &str) -> ReplicaSet {
    let pool = |url: &str| {
        let mut config = deadpool_postgres::Config::new();
        config.url = Some(url.to_owned());
        config
            .create_pool(
                Some(deadpool_postgres::Runtime::Tokio1),
                tokio_postgres::NoTls,
            )
            .expect("a pool")
    };
    let set = ReplicaSet::builder("bench")
        .primary(pool(primary_url))
        .replica("replica", pool(replica_url))
        .build()
        .expect("a replica set");
    set.spawn();
    let handle = set.handle();
    let start = Instant::now();
    while !handle.replicas().iter().all(|r| r.healthy) {
        assert!(start.elapsed() < GIVE_UP, "the replica never got healthy");
        handle.refresh().await;
    }
    set
}

/// Insert-to-visible samples of one row, in a fresh table of its own.
async fn staleness(primary_url: &str, replica_url: &str, row: &Row) -> Vec<Duration> {
    let primary = connect(primary_url).await;
    let replica = connect(replica_url).await;
    // `on` is PostgreSQL's default, which the test servers turn off (see the module's
    // documentation).
    primary
        .batch_execute(&format!(
            "SET synchronous_commit = {}",
            row.synchronous_commit
        ))
        .await
        .expect("set synchronous_commit");
    let until = row.until;
    let samples = if full_run() { row.samples } else { 20 };
    let table = format!("tp_bench_staleness_{}", uuid::Uuid::now_v7().simple());
    primary
        .batch_execute(&format!("CREATE TABLE {table} (id bigint PRIMARY KEY)"))
        .await
        .expect("create the table");
    // The table reaches the replica before the first sample.
    let start = Instant::now();
    while !replica
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table])
        .await
        .expect("the replica answers")
        .get::<_, bool>(0)
    {
        assert!(
            start.elapsed() < GIVE_UP,
            "the table never reached the replica"
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let geometry = geometry(&primary).await;
    let insert = primary
        .prepare(&format!("INSERT INTO {table} VALUES ($1)"))
        .await
        .expect("prepare");
    let insert_lsn = primary
        .prepare("SELECT pg_current_wal_insert_lsn()::text")
        .await
        .expect("prepare");
    let replayed = replica
        .prepare("SELECT pg_last_wal_replay_lsn() >= $1::text::pg_lsn")
        .await
        .expect("prepare");
    let row = replica
        .prepare(&format!(
            "SELECT EXISTS (SELECT 1 FROM {table} WHERE id = $1)"
        ))
        .await
        .expect("prepare");

    let set = match until {
        Until::ReplicaSet => Some(replica_set(primary_url, replica_url).await),
        _ => None,
    };
    let mut out = Vec::with_capacity(samples);
    for i in 0..warm_up() + samples {
        let id = i64::try_from(i).expect("small");
        primary.execute(&insert, &[&id]).await.expect("insert");
        let start = Instant::now();
        match until {
            Until::Lsn => {
                let text: String = primary
                    .query_one(&insert_lsn, &[])
                    .await
                    .expect("the insert position")
                    .get(0);
                let lsn = normalise(Lsn::parse(&text).expect("a pg_lsn"), geometry).to_string();
                loop {
                    let reached: Option<bool> = replica
                        .query_one(&replayed, &[&lsn])
                        .await
                        .expect("the replay position")
                        .get(0);
                    if reached.expect("a streaming replica (pg_last_wal_replay_lsn() is null)") {
                        break;
                    }
                    assert!(
                        start.elapsed() < GIVE_UP,
                        "the replica never replayed {lsn}"
                    );
                }
            }
            Until::ReplicaSet => {
                let text: String = primary
                    .query_one(&insert_lsn, &[])
                    .await
                    .expect("the insert position")
                    .get(0);
                let lsn = normalise(Lsn::parse(&text).expect("a pg_lsn"), geometry);
                let set = set.as_ref().expect("the set");
                assert!(
                    set.wait(Mark::Lsn(lsn), GIVE_UP).await,
                    "the replica set never reached {lsn}"
                );
            }
            Until::Row => loop {
                let seen: bool = replica
                    .query_one(&row, &[&id])
                    .await
                    .expect("the row")
                    .get(0);
                if seen {
                    break;
                }
                assert!(
                    start.elapsed() < GIVE_UP,
                    "row {id} never reached the replica"
                );
            },
        }
        let elapsed = start.elapsed();
        if i >= warm_up() {
            out.push(elapsed);
        }
    }
    if let Some(set) = set {
        let flushes = set.handle().wal_flushes();
        if flushes > 0 {
            eprintln!(
                "{}: the monitor flushed the primary {flushes} times",
                row_name(until)
            );
        }
        set.handle().shutdown();
    }
    primary
        .batch_execute(&format!("DROP TABLE {table}"))
        .await
        .expect("drop the table");
    out
}

fn row_name(until: Until) -> &'static str {
    match until {
        Until::Lsn => "replica lsn",
        Until::Row => "replica row",
        Until::ReplicaSet => "replica set",
    }
}

fn replica_staleness(_: &mut Criterion) {
    let id = |row: &Row| format!("consistency_staleness/{}", row.name);
    if !ROWS.iter().any(|row| selected(&id(row))) {
        return;
    }
    let Some((primary, replica)) = replica_urls() else {
        return;
    };
    let rt = support::two_workers();
    for row in &ROWS {
        if selected(&id(row)) {
            let samples = rt.block_on(staleness(&primary, &replica, row));
            report_latency(row.name, samples);
        }
    }
}

criterion_group! {
    name = benches;
    config = support::config();
    targets = check, replica_staleness
}
criterion_main!(benches);
