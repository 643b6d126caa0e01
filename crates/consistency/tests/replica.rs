//! Read-replica routing on real servers: the test command's PostgreSQL primary and its two
//! streaming replicas (`scripts/test` starts them; without them the server tests skip, and
//! fail under `TP_REQUIRE_SERVICES=1`).
//!
//! Pausing a replica's replay affects every test that reads from it, so the server tests of
//! this binary run one at a time (`SERVERS`). Each uses a fresh database with one counter row,
//! which the writes increment, so a read that returns a lower value than a write returned
//! earlier is a stale read.

#![cfg(feature = "postgres")]

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::Relaxed},
    },
    time::Duration,
};

use deadpool_postgres::{Config, Pool, PoolConfig, Runtime, Timeouts};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::sync::Mutex;
use tokio_postgres::NoTls;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_patterns_consistency::{
    ConcernOf, Lsn, Mark, MarkKind, MarkResponse, ReadConcern, ReadSide,
    replica::{Node, ReplicaRouterLayer, ReplicaSet, ReplicaSetHandle, ReplicaStatus, Routed},
};
use tower_patterns_core::observe::{Health, StateHandle};
use tower_patterns_cqrs::layer::Side;
use tower_patterns_testkit::{Replica, fresh_postgres, postgres_replicas};

/// One server test at a time: a paused replica would slow or skew the others.
static SERVERS: Mutex<()> = Mutex::const_new(());

const WAIT: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------ requests and responses

/// A write increments the counter; a read returns it.
#[derive(Clone, Copy, Debug)]
enum Req {
    Write,
    Read(ReadConcern),
}

impl Req {
    fn read_at(mark: Option<Mark>) -> Self {
        Self::Read(ReadConcern {
            at_least: mark,
            from_primary: false,
        })
    }
}

impl ConcernOf for Req {
    fn read_concern(&self) -> ReadConcern {
        match self {
            Self::Write => ReadConcern::default(),
            Self::Read(concern) => *concern,
        }
    }
}

#[derive(Debug)]
struct Res {
    value: i64,
    node: Node,
    mark: Option<Mark>,
}

impl MarkResponse for Res {
    fn set_mark(&mut self, mark: Mark) {
        self.mark = Some(mark);
    }
}

fn classify(req: &Req) -> Side {
    match req {
        Req::Write => Side::Command,
        Req::Read(_) => Side::Query,
    }
}

/// The router over `set` in front of a service that runs the SQL on the connection it gets.
fn router(
    set: &ReplicaSet,
) -> impl Service<Req, Response = Res, Error = tower_patterns_core::BoxError, Future: Send> + Clone + use<>
{
    ReplicaRouterLayer::new(set.clone())
        .classify(classify)
        .layer(service_fn(|routed: Routed<Req>| async move {
            let sql = match routed.request {
                Req::Write => FILLED_WRITE,
                Req::Read(_) => "SELECT n FROM counter WHERE id = 1",
            };
            let row = routed.client.query_one(sql, &[]).await?;
            Ok::<_, tokio_postgres::Error>(Res {
                value: row.get(0),
                node: routed.node,
                mark: None,
            })
        }))
}

/// A write: the counter's increment, and with it some 32 kB of WAL (16 rows of 1,900 bytes
/// of random text) for the replicas to stream and replay before they show the increment, so
/// a read that does not wait for the write's mark often comes too early.
const FILLED_WRITE: &str = "WITH filled AS (
        INSERT INTO filler
        SELECT string_agg(md5(random()::text || i || j), '')
        FROM generate_series(1, 16) AS i, generate_series(1, 60) AS j GROUP BY i
    )
    UPDATE counter SET n = n + 1 WHERE id = 1 RETURNING n";

/// Calls `svc`, failing the test after 30 s (a read stuck on a paused replica would
/// otherwise hang it: the panic drops the pause's guard, which resumes the replay).
async fn call<S>(svc: &mut S, req: Req) -> Res
where
    S: Service<Req, Response = Res, Error = tower_patterns_core::BoxError>,
{
    let answer = async { svc.ready().await?.call(req).await };
    tokio::time::timeout(WAIT, answer)
        .await
        .unwrap_or_else(|_| panic!("{req:?} answered within {WAIT:?}"))
        .unwrap()
}

// ------------------------------------------------------------------ servers

fn pool(url: &str) -> Pool {
    pool_with(url, PoolConfig::new(8))
}

fn pool_with(url: &str, pool: PoolConfig) -> Pool {
    let mut config = Config::new();
    config.url = Some(url.to_owned());
    config.pool = Some(pool);
    config
        .create_pool(Some(Runtime::Tokio1), NoTls)
        .expect("a pool")
}

/// A fresh database with the counter on the primary, once both replicas show it.
struct Servers {
    primary: String,
    replicas: Vec<Replica>,
    db: String,
}

impl Servers {
    async fn new(tag: &str) -> Option<Self> {
        let replicas = postgres_replicas()?;
        let primary = fresh_postgres(tag).await?;
        assert!(replicas.len() >= 2, "the test command starts two replicas");
        let db = primary.rsplit('/').next().unwrap().to_owned();
        let (client, conn) = tokio_postgres::connect(&primary, NoTls).await.unwrap();
        tokio::spawn(conn);
        client
            .batch_execute(
                "CREATE TABLE counter (id int PRIMARY KEY, n bigint NOT NULL);
                 INSERT INTO counter VALUES (1, 0);
                 CREATE TABLE filler (line text NOT NULL);",
            )
            .await
            .unwrap();
        let servers = Self {
            primary,
            replicas,
            db,
        };
        for replica in &servers.replicas {
            servers.wait_for_counter(replica).await;
        }
        Some(servers)
    }

    /// The primary's pool, committing synchronously as production does (the test server runs
    /// with `synchronous_commit = off`, where a commit reaches the replicas only after the WAL
    /// writer's next flush, up to 200 ms later).
    fn primary_pool(&self) -> Pool {
        pool(&format!(
            "{}?options=-c%20synchronous_commit%3Don",
            self.primary
        ))
    }

    fn replica_url(&self, i: usize) -> String {
        self.replicas[i].database(&self.db)
    }

    /// Waits until `replica` has the database and its counter row.
    async fn wait_for_counter(&self, replica: &Replica) {
        let url = replica.database(&self.db);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok((client, conn)) = tokio_postgres::connect(&url, NoTls).await {
                tokio::spawn(conn);
                if client
                    .query_opt("SELECT n FROM counter WHERE id = 1", &[])
                    .await
                    .is_ok_and(|row| row.is_some())
                {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "replica {url} shows the counter"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The primary and both replicas as "a" and "b".
    fn set(&self, name: &str) -> ReplicaSetBuilderWithReplicas {
        ReplicaSet::builder(name)
            .primary(self.primary_pool())
            .replica("a", pool(&self.replica_url(0)))
            .replica("b", pool(&self.replica_url(1)))
    }
}

type ReplicaSetBuilderWithReplicas = tower_patterns_consistency::replica::ReplicaSetBuilder<Pool>;

fn status(handle: &ReplicaSetHandle, name: &str) -> ReplicaStatus {
    handle
        .replicas()
        .into_iter()
        .find(|r| &*r.name == name)
        .unwrap()
}

/// Refreshes until every replica named in `names` is healthy.
async fn until_healthy(handle: &ReplicaSetHandle, names: &[&str]) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        handle.refresh().await;
        if names.iter().all(|n| status(handle, n).healthy) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replicas {names:?} healthy: {:?}",
            handle.replicas()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// What the consistency layer does before a read that carries `mark`: wait (up to 5 s) for
/// the set to reach it, and read from the primary if it has not.
async fn concern_for(set: &ReplicaSet, mark: Option<Mark>) -> Req {
    let reached = match mark {
        None => true,
        Some(m) => set.reached(m) || set.wait(m, Duration::from_secs(5)).await,
    };
    Req::Read(ReadConcern {
        at_least: mark,
        from_primary: !reached,
    })
}

fn is_replica(node: &Node, name: &str) -> bool {
    matches!(node, Node::Replica(n) if &**n == name)
}

// ------------------------------------------------------------------ tests without a server

#[test]
fn the_builder_refuses_bad_settings_by_name() {
    let p = || pool("postgres://postgres@127.0.0.1:1/none");
    let field = |b: ReplicaSetBuilderWithReplicas| b.build().map(drop).unwrap_err().field();
    assert_eq!(field(ReplicaSet::builder("").primary(p())), "name");
    assert_eq!(
        field(
            ReplicaSet::builder("s")
                .primary(p())
                .replica("a", p())
                .replica("a", p())
        ),
        "replica"
    );
    assert_eq!(
        field(ReplicaSet::builder("s").primary(p()).replica("", p())),
        "replica"
    );
    for (name, b) in [
        (
            "probe_every",
            ReplicaSet::builder("s").probe_every(Duration::ZERO),
        ),
        (
            "probe_fast",
            ReplicaSet::builder("s").probe_fast(Duration::ZERO),
        ),
        (
            "probe_timeout",
            ReplicaSet::builder("s").probe_timeout(Duration::ZERO),
        ),
        (
            "probe_every",
            ReplicaSet::builder("s").probe_every(Duration::MAX),
        ),
        (
            "probe_timeout",
            ReplicaSet::builder("s").probe_timeout(Duration::from_secs(3601)),
        ),
    ] {
        assert_eq!(field(b.primary(p())), name);
    }
    // Settings before or after the primary, no replica at all: fine.
    let set = ReplicaSet::builder("s")
        .max_lag_bytes(0)
        .primary(p())
        .max_lag(Duration::ZERO)
        .probe_fast(Duration::from_secs(9)) // more than probe_every: clamped
        .observe_reads(false)
        .build()
        .unwrap();
    assert_eq!(set.name(), "s");
    assert_eq!(set.kind(), MarkKind::Lsn);
    assert!(set.routes());
    // Before any probe nothing is reached, and a position mark never is.
    assert!(!set.reached(Mark::Lsn(Lsn(0))));
    assert!(!set.reached(Mark::Position(Default::default())));
    assert_eq!(set.handle().health(), Health::Ready); // no replica is unhealthy
}

#[test]
fn metrics_are_registered_at_build_and_counters_published_by_reports() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let set = ReplicaSet::builder("metered")
            .primary(pool("postgres://postgres@127.0.0.1:1/none"))
            .replica("r1", pool("postgres://postgres@127.0.0.1:1/none"))
            .build()
            .unwrap();
        for name in [
            "tower_patterns_consistency_replica_lag_bytes",
            "tower_patterns_consistency_replica_lag_seconds",
            "tower_patterns_consistency_replica_up",
        ] {
            assert_eq!(
                metric(&snapshotter, name, Some("r1")),
                Some(DebugValue::Gauge(0.0.into())),
                "{name}"
            );
        }
        let report = set.handle().report();
        assert_eq!(report.pattern, "consistency");
        assert_eq!(report.health, Health::Degraded); // r1 not probed yet
        assert_eq!(report.value("replicas"), Some(1.0));
        for name in [
            "tower_patterns_consistency_replica_reads_total",
            "tower_patterns_consistency_replica_fallbacks_total",
        ] {
            assert_eq!(
                metric(&snapshotter, name, Some("r1")),
                Some(DebugValue::Counter(0)),
                "{name}"
            );
        }
        for name in [
            "tower_patterns_consistency_router_primary_reads_total",
            "tower_patterns_consistency_router_writes_total",
            "tower_patterns_consistency_router_mark_errors_total",
            "tower_patterns_consistency_wal_flushes_total",
        ] {
            assert_eq!(
                metric(&snapshotter, name, None),
                Some(DebugValue::Counter(0)),
                "{name}"
            );
        }
    });
}

#[tokio::test]
async fn the_monitor_ends_on_shutdown_or_once_the_set_and_its_routers_are_dropped() {
    let p = || pool("postgres://postgres@127.0.0.1:1/none");
    let build = |name: &str| {
        ReplicaSet::builder(name)
            .primary(p())
            .replica("r", p())
            .probe_every(Duration::from_millis(5))
            .build()
            .unwrap()
    };
    let ends = |monitor: tokio::task::JoinHandle<()>| async move {
        tokio::time::timeout(WAIT, monitor)
            .await
            .expect("the monitor ends")
            .unwrap();
    };

    let set = build("dropped");
    let monitor = set.spawn();
    let svc = router(&set);
    drop(set);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !monitor.is_finished(),
        "a router keeps the set, and its monitor, alive"
    );
    drop(svc);
    ends(monitor).await;

    let set = build("shut");
    let handle = set.handle();
    let monitor = set.spawn();
    ends(set.spawn()).await; // a second spawn starts nothing
    assert!(!monitor.is_finished());
    handle.shutdown();
    ends(monitor).await;
    assert!(!status(&handle, "r").up, "the replica never answered");
}

/// The value of metric `name` (for `replica`, when given) in a recorder of one set.
fn metric(snapshotter: &Snapshotter, name: &str, replica: Option<&str>) -> Option<DebugValue> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .find(|(k, ..)| {
            let label = |l: &str| {
                k.key()
                    .labels()
                    .find(|x| x.key() == l)
                    .map(|x| x.value().to_owned())
            };
            k.key().name() == name && replica.is_none_or(|r| label("replica").as_deref() == Some(r))
        })
        .map(|(.., v)| v)
}

// ------------------------------------------------------------------ tests on the servers

/// Read-your-writes: a write's mark sent with the next read (after waiting, as the
/// consistency layer does) always shows the write, and most such reads are served by
/// replicas; without marks the same run reads stale values (counted and printed).
///
/// Whether a replica is still replaying when the read arrives depends on the machine's load,
/// so every tenth pair makes sure one is behind: replica a's replay is paused (once it has
/// caught up, so its replay holds no lock) from before the write until after the read. A
/// mark that stopped short of the write would then let the read reach a.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_carrying_a_writes_mark_sees_the_write() {
    let _one = SERVERS.lock().await;
    let Some(servers) = Servers::new("ryw").await else {
        return;
    };
    let set = servers.set("ryw").build().unwrap();
    let handle = set.handle();
    let _monitor = set.spawn();
    until_healthy(&handle, &["a", "b"]).await;
    let mut svc = router(&set);

    let mut replica_reads = 0;
    for i in 0..1_000 {
        let paused = if i % 10 == 9 {
            until_caught_up(&handle, "a").await;
            Some(servers.replicas[0].pause_replay())
        } else {
            None
        };
        let written = call(&mut svc, Req::Write).await;
        assert_eq!(written.node, Node::Primary);
        let mark = written.mark.expect("a write's response carries a mark");
        assert_eq!(mark.kind(), MarkKind::Lsn);
        let req = concern_for(&set, Some(mark)).await;
        let read = call(&mut svc, req).await;
        assert!(
            read.value >= written.value,
            "read {} on {} after writing {} (mark {mark})",
            read.value,
            read.node,
            written.value
        );
        replica_reads += usize::from(!read.node.is_primary());
        drop(paused);
    }
    assert!(
        replica_reads >= 900,
        "{replica_reads} of 1000 reads on replicas"
    );

    let mut stale = 0;
    for _ in 0..1_000 {
        let written = call(&mut svc, Req::Write).await;
        let read = call(&mut svc, Req::read_at(None)).await;
        stale += usize::from(read.value < written.value);
    }
    eprintln!("without marks: {stale} of 1000 reads right after a write were stale");
    assert!(stale <= 1_000);
    assert_eq!(handle.writes(), 2_000);
    let served: u64 = handle.replicas().iter().map(|r| r.reads).sum();
    assert_eq!(served + handle.primary_reads(), 2_000);
    handle.shutdown();
}

/// A paused replica: reads whose mark it has not replayed go elsewhere, reads without a mark
/// still reach it (it stays healthy under a large bound), its lag in bytes grows, and once
/// the replay resumes it catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_replica_serves_only_reads_it_can() {
    let _one = SERVERS.lock().await;
    let Some(servers) = Servers::new("paused").await else {
        return;
    };
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let set = metrics::with_local_recorder(&recorder, || {
        servers
            .set("paused")
            .max_lag(Duration::from_secs(3_600))
            .max_lag_bytes(1 << 30)
            .probe_every(Duration::from_millis(20))
            .build()
            .unwrap()
    });
    let handle = set.handle();
    let _monitor = set.spawn();
    until_healthy(&handle, &["a", "b"]).await;
    let mut svc = router(&set);
    let before = call(&mut svc, Req::Write).await.value;
    until_caught_up(&handle, "a").await;

    let paused = servers.replicas[0].pause_replay();
    let (mut on_b, mut on_primary) = (0, 0);
    let mut lag = Vec::new();
    for round in 0..100 {
        let written = call(&mut svc, Req::Write).await;
        let mark = written.mark.unwrap();
        let read = call(&mut svc, concern_for(&set, Some(mark)).await).await;
        assert!(
            !is_replica(&read.node, "a"),
            "round {round}: read on the paused replica"
        );
        assert!(read.value >= written.value);
        if is_replica(&read.node, "b") {
            on_b += 1;
        } else {
            on_primary += 1;
        }
        if round % 25 == 24 {
            handle.refresh().await;
            lag.push(status(&handle, "a").lag_bytes);
        }
    }
    assert!(on_b > 50, "{on_b} reads on b, {on_primary} on the primary");
    assert!(
        lag.windows(2).all(|w| w[0] < w[1]) && lag[0] > 0,
        "a's lag grows while paused: {lag:?}"
    );
    let a = status(&handle, "a");
    assert!(a.up && a.healthy, "{a:?}");
    let gauge = metric(
        &snapshotter,
        "tower_patterns_consistency_replica_lag_bytes",
        Some("a"),
    );
    assert!(
        matches!(gauge, Some(DebugValue::Gauge(g)) if g.into_inner() > 0.0),
        "{gauge:?}"
    );

    // Without a mark the paused replica still serves, and shows the counter as it was.
    let mut on_a = 0;
    for _ in 0..100 {
        let read = call(&mut svc, Req::read_at(None)).await;
        if is_replica(&read.node, "a") {
            on_a += 1;
            assert_eq!(
                read.value, before,
                "the paused replica shows the counter as it was"
            );
        }
    }
    assert!(
        on_a > 10,
        "{on_a} of 100 reads without a mark on the paused replica"
    );

    let primary = handle.primary_lsn().unwrap();
    drop(paused);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        handle.refresh().await;
        let a = status(&handle, "a");
        if a.replay >= primary && a.lag_bytes < 1 << 20 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "a catches up: {a:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    handle.shutdown();
}

/// Refreshes until replica `name` has replayed all the primary had (as one probe reads them).
async fn until_caught_up(handle: &ReplicaSetHandle, name: &str) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        handle.refresh().await;
        if handle
            .primary_lsn()
            .is_some_and(|p| status(handle, name).replay >= p)
        {
            return;
        }
        assert!(tokio::time::Instant::now() < deadline, "{name} catches up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Monotonic reads: with replay paused on one replica and writes going on, a session that
/// carries each response's mark into its next read never sees the counter go back, over 200
/// reads; the same reads without marks do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_carrying_its_marks_never_reads_backwards() {
    let _one = SERVERS.lock().await;
    let Some(servers) = Servers::new("monotonic").await else {
        return;
    };
    let set = servers
        .set("monotonic")
        .max_lag(Duration::from_secs(3_600))
        .max_lag_bytes(1 << 30)
        .probe_every(Duration::from_millis(20))
        .build()
        .unwrap();
    let handle = set.handle();
    let _monitor = set.spawn();
    until_healthy(&handle, &["a", "b"]).await;
    let mut svc = router(&set);
    let frozen = call(&mut svc, Req::Write).await.value;
    until_caught_up(&handle, "a").await;

    let paused = servers.replicas[0].pause_replay();
    let writing = Arc::new(AtomicBool::new(true));
    let writer = tokio::spawn({
        let mut svc = router(&set);
        let writing = writing.clone();
        async move {
            while writing.load(Relaxed) {
                call(&mut svc, Req::Write).await;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    });
    // b shows writes made after the pause before the sessions start.
    let deadline = tokio::time::Instant::now() + WAIT;
    while call(&mut svc, Req::read_at(None)).await.value <= frozen + 1 {
        assert!(tokio::time::Instant::now() < deadline, "writes reach b");
    }

    let (mut seen, mut mark, mut nodes) = (0, None, Vec::new());
    for i in 0..200 {
        let read = call(&mut svc, concern_for(&set, mark).await).await;
        assert!(
            read.value >= seen,
            "read {i} on {} saw {} after {seen}",
            read.node,
            read.value
        );
        seen = read.value;
        mark = read
            .mark
            .map(|m| mark.map_or(m, |old: Mark| old.max_with(m)));
        assert!(mark.is_some(), "an observed read carries its mark");
        nodes.push(read.node);
    }
    let (mut backwards, mut last) = (0, 0);
    for _ in 0..200 {
        let read = call(&mut svc, Req::read_at(None)).await;
        backwards += usize::from(read.value < last);
        last = read.value;
    }
    writing.store(false, Relaxed);
    writer.await.unwrap();
    drop(paused);
    let on = |name| nodes.iter().filter(|n| is_replica(n, name)).count();
    eprintln!(
        "with marks: {} reads on a, {} on b, {} on the primary; without: {backwards} went back",
        on("a"),
        on("b"),
        200 - on("a") - on("b")
    );
    assert!(
        on("b") > 50,
        "most marked reads on the replica that keeps up"
    );
    assert!(backwards > 0, "without marks the session reads backwards");
    handle.shutdown();
}

/// A replica that is down is skipped and shown down; a replica whose pool gives no
/// connection is marked down, its read served by the primary, until the monitor reaches it
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_that_are_down_are_skipped() {
    let _one = SERVERS.lock().await;
    let Some(servers) = Servers::new("down").await else {
        return;
    };
    let busy_pool = pool_with(
        &servers.replica_url(0),
        PoolConfig {
            max_size: 1,
            timeouts: Timeouts {
                wait: Some(Duration::from_millis(100)),
                ..Timeouts::default()
            },
            ..PoolConfig::default()
        },
    );
    let set = ReplicaSet::builder("down")
        .primary(servers.primary_pool())
        .replica("gone", pool("postgres://postgres@127.0.0.1:1/postgres"))
        .replica("b", pool(&servers.replica_url(1)))
        .replica("busy", busy_pool.clone())
        .probe_timeout(Duration::from_millis(500))
        .build()
        .unwrap();
    let handle = set.handle();
    let _monitor = set.spawn();
    until_healthy(&handle, &["b", "busy"]).await;
    let gone = status(&handle, "gone");
    assert!(!gone.up && !gone.healthy, "{gone:?}");
    assert_eq!(handle.health(), Health::Degraded);

    let mut svc = router(&set);
    for _ in 0..100 {
        let read = call(&mut svc, Req::read_at(None)).await;
        assert!(!is_replica(&read.node, "gone"));
    }
    let gone = status(&handle, "gone");
    assert_eq!((gone.reads, gone.fallbacks), (0, 0), "never tried");

    // The monitor took its connection out of the busy pool; the test holds the only other.
    let held = busy_pool.get().await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while status(&handle, "busy").fallbacks == 0 {
        let read = call(&mut svc, Req::read_at(None)).await;
        assert!(!is_replica(&read.node, "busy"));
        assert!(tokio::time::Instant::now() < deadline, "a read tries busy");
    }
    let busy = status(&handle, "busy");
    assert!(!busy.up && !busy.healthy && busy.fallbacks == 1, "{busy:?}");
    assert!(handle.primary_reads() >= 1);
    drop(held);
    until_healthy(&handle, &["busy"]).await; // the monitor's own connection answers
    let report = handle.report();
    assert_eq!(report.value("healthy_replicas"), Some(2.0));
    handle.shutdown();
}

/// Each replica has a report of its own (`each_replica`): `streaming` while it keeps up,
/// `lagging` once it is past the set's bounds, `down` when no probe reaches it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_replica_reports_itself() {
    let _one = SERVERS.lock().await;
    let Some(servers) = Servers::new("each").await else {
        return;
    };
    // Any WAL not yet replayed is too far behind.
    let set = servers
        .set("each")
        .replica("gone", pool("postgres://postgres@127.0.0.1:1/postgres"))
        .max_lag_bytes(0)
        .build()
        .unwrap();
    let handle = set.handle();
    let replicas = handle.each_replica();
    let names: Vec<&str> = replicas.iter().map(|r| r.name()).collect();
    assert_eq!(names, ["each/a", "each/b", "each/gone"]);
    until_healthy(&handle, &["a", "b"]).await;
    let report = replicas[0].report();
    assert_eq!(
        (report.pattern, report.health, report.state),
        ("consistency", Health::Ready, "streaming")
    );
    assert_eq!(report.value("lag_bytes"), Some(0.0));
    let gone = replicas[2].report();
    assert_eq!((gone.health, gone.state), (Health::Degraded, "down"));
    // A streaming replica shows what it received; one never reached, nothing.
    assert!(replicas[0].status().receive.is_some(), "{:?}", replicas[0]);
    assert_eq!(replicas[2].status().receive, None);
    assert_eq!(replicas[2].pattern(), "consistency");
    let debug = format!("{:?}", replicas[2]);
    assert!(
        debug.starts_with("ReplicaHandle") && debug.contains("each/gone"),
        "{debug}"
    );

    let paused = servers.replicas[0].pause_replay();
    let mut svc = router(&set);
    call(&mut svc, Req::Write).await;
    handle.refresh().await;
    let a = replicas[0].report();
    assert_eq!((a.health, a.state), (Health::Degraded, "lagging"), "{a:?}");
    assert!(a.value("lag_bytes").unwrap() > 0.0, "{a:?}");
    assert_eq!(replicas[0].status(), status(&handle, "a"));
    drop(paused);
    until_healthy(&handle, &["a"]).await;
    assert_eq!(replicas[0].report().state, "streaming");
    handle.shutdown();
}

/// A replica that hangs (a listener that accepts and never answers, as a stopped host does)
/// delays only its own probes: the healthy replica's progress still reaches waiting reads
/// within milliseconds, although each probe of the hung one takes the whole probe timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_replica_does_not_slow_the_others() {
    let _one = SERVERS.lock().await;
    let Some(servers) = Servers::new("hung").await else {
        return;
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_at = listener.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            open.push(socket); // accepted, never answered
        }
    });
    let set = ReplicaSet::builder("hung")
        .primary(servers.primary_pool())
        .replica(
            "hung",
            pool(&format!("postgres://postgres@{hung_at}/postgres")),
        )
        .replica("b", pool(&servers.replica_url(1)))
        .probe_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let handle = set.handle();
    let _monitor = set.spawn();
    until_healthy(&handle, &["b"]).await;
    let mut svc = router(&set);
    for i in 0..20 {
        let write = call(&mut svc, Req::Write).await;
        let mark = write.mark.expect("a write's mark");
        let started = tokio::time::Instant::now();
        assert!(
            set.wait(mark, Duration::from_millis(400)).await,
            "write {i}: b reached it within 400 ms ({:?})",
            handle.replicas()
        );
        assert!(started.elapsed() < Duration::from_millis(400));
    }
    assert!(!status(&handle, "hung").up);
    handle.shutdown();
    held.abort();
}

/// Lag in seconds counts from when the primary passed the replica, not from the replica's
/// last replayed transaction: after a quiet spell longer than `max_lag`, a replica a write
/// ago behind is still healthy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quiet_spell_is_not_lag() {
    let _one = SERVERS.lock().await;
    let Some(servers) = Servers::new("quiet").await else {
        return;
    };
    let set = servers
        .set("quiet")
        .max_lag(Duration::from_secs(1))
        .build()
        .unwrap();
    let handle = set.handle();
    let _monitor = set.spawn();
    let mut svc = router(&set);
    call(&mut svc, Req::Write).await;
    until_healthy(&handle, &["a", "b"]).await;
    // No writes for 1.5 s (a server-side quiet spell: real time).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let paused = servers.replicas[0].pause_replay();
    call(&mut svc, Req::Write).await;
    handle.refresh().await;
    let a = status(&handle, "a");
    assert!(a.lag_bytes > 0, "{a:?}");
    assert!(a.lag < Duration::from_millis(900), "{a:?}");
    assert!(a.healthy, "{a:?}");
    drop(paused);
    handle.shutdown();
}

/// A replica whose pool has no connection to give (all in use, and no wait timeout of its
/// own) delays a read by the probe timeout at most: the primary serves it, and the replica
/// is busy, not down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_replica_pool_costs_a_read_the_probe_timeout_at_most() {
    let _one = SERVERS.lock().await;
    let Some(servers) = Servers::new("fullpool").await else {
        return;
    };
    let small = pool_with(&servers.replica_url(0), PoolConfig::new(1));
    let set = ReplicaSet::builder("fullpool")
        .primary(servers.primary_pool())
        .replica("a", small.clone())
        .probe_timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let handle = set.handle();
    let _monitor = set.spawn();
    until_healthy(&handle, &["a"]).await;
    let mut svc = router(&set);
    // The monitor holds one connection out of the pool; the test takes the pool's only one.
    let held = small.get().await.unwrap();
    let started = tokio::time::Instant::now();
    let read = call(&mut svc, Req::read_at(None)).await;
    assert_eq!(read.node, Node::Primary);
    assert!(started.elapsed() < Duration::from_secs(5));
    let a = status(&handle, "a");
    assert_eq!(a.fallbacks, 1, "{a:?}");
    assert!(a.up, "busy, not down: {a:?}");
    drop(held);
    handle.shutdown();
}

/// A token written by another instance (read from the primary on a connection of its own)
/// after an asynchronous commit: this set's monitor has not seen that position, and the WAL
/// writer would flush it only at its next round (200 ms); the monitor flushes it for the
/// waiting read within milliseconds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_asynchronous_commit_of_another_instance_is_flushed_for_a_waiting_read() {
    let _one = SERVERS.lock().await;
    let Some(servers) = Servers::new("asyncflush").await else {
        return;
    };
    let set = servers.set("asyncflush").build().unwrap();
    let handle = set.handle();
    let _monitor = set.spawn();
    until_healthy(&handle, &["a", "b"]).await;
    let (other, conn) = tokio_postgres::connect(&servers.primary, NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    other
        .batch_execute("SET synchronous_commit = off")
        .await
        .unwrap();
    for i in 0..5 {
        other
            .batch_execute("UPDATE counter SET n = n + 1 WHERE id = 1")
            .await
            .unwrap();
        let text: String = other
            .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
            .await
            .unwrap()
            .get(0);
        let mark = Mark::Lsn(Lsn::parse(&text).unwrap());
        assert!(
            set.wait(mark, Duration::from_millis(150)).await,
            "commit {i}: a replica replayed {text} within 150 ms ({:?})",
            handle.replicas()
        );
    }
    assert!(handle.wal_flushes() >= 1);
    handle.shutdown();
}

/// A node that refuses (a listener that closes every connection at once) is reconnected at
/// most every `probe_every`, even while a waiting read makes the monitor probe every 2 ms:
/// no reconnect storm.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_node_is_retried_at_most_every_probe_interval() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counting = accepted.clone();
    let refuser = tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            counting.fetch_add(1, Relaxed);
            drop(socket);
        }
    });
    let set = ReplicaSet::builder("refused")
        .primary(pool(&format!("postgres://postgres@{at}/postgres")))
        .replica("r", pool(&format!("postgres://postgres@{at}/postgres")))
        .probe_every(Duration::from_millis(250))
        .build()
        .unwrap();
    let _monitor = set.spawn();
    // A read waits for a mark for a second: the monitor probes every 2 ms meanwhile.
    assert!(!set.wait(Mark::Lsn(Lsn(1)), Duration::from_secs(1)).await);
    let attempts = accepted.load(Relaxed);
    // Two nodes, one attempt each per 250 ms at most (and the first at once): about 10.
    assert!(attempts <= 14, "{attempts} connections in a second");
    assert!(attempts >= 2, "{attempts}: the nodes were tried");
    set.handle().shutdown();
    refuser.abort();
}

/// A proxy in front of two replicas: its first connection goes to `first`, every later one
/// to `later`. Returns its address and the count of connections it took.
async fn two_faced_proxy(
    first: std::net::SocketAddr,
    later: std::net::SocketAddr,
) -> (std::net::SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    let count = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counting = count.clone();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let n = counting.fetch_add(1, Relaxed);
            let target = if n == 0 { first } else { later };
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(target).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    (at, count)
}

fn addr_of(url: &str) -> std::net::SocketAddr {
    let rest = url.split_once("://").unwrap().1;
    let host_port = rest.split('/').next().unwrap();
    let host_port = host_port.rsplit_once('@').map_or(host_port, |(_, hp)| hp);
    host_port.parse().unwrap()
}

/// A replica that the monitor saw caught up, but whose new connections reach a server that is
/// behind (it restarted and replays from an earlier point; here, a proxy sends them to the
/// other replica, paused): a read carrying a mark checks the new connection first and goes
/// to the primary. The monitor keeps its one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_connection_behind_the_mark_sends_the_read_to_the_primary() {
    let _one = SERVERS.lock().await;
    let Some(servers) = Servers::new("newconn").await else {
        return;
    };
    let (proxy, connections) = two_faced_proxy(
        addr_of(&servers.replicas[0].url),
        addr_of(&servers.replicas[1].url),
    )
    .await;
    let paused = servers.replicas[1].pause_replay();
    let set = ReplicaSet::builder("newconn")
        .primary(servers.primary_pool())
        .replica(
            "a",
            pool(&format!("postgres://postgres@{proxy}/{}", servers.db)),
        )
        .build()
        .unwrap();
    let handle = set.handle();
    let _monitor = set.spawn();
    until_healthy(&handle, &["a"]).await;
    let mut svc = router(&set);
    let write = call(&mut svc, Req::Write).await;
    let mark = write.mark.expect("a write's mark");
    let deadline = tokio::time::Instant::now() + WAIT;
    while !set.reached(mark) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "a replays the write"
        );
        handle.refresh().await;
    }
    let read = call(&mut svc, Req::read_at(Some(mark))).await;
    assert!(
        read.value >= write.value,
        "read {} after writing {} on {:?}",
        read.value,
        write.value,
        read.node
    );
    assert_eq!(read.node, Node::Primary);
    assert_eq!(status(&handle, "a").fallbacks, 1);
    // The monitor probed many times on its one connection; the router made one more.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        connections.load(Relaxed) <= 3,
        "{connections:?} connections"
    );
    drop(paused);
    handle.shutdown();
}

/// Without `observe_reads`, a read's response carries no mark (and costs no query).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_are_not_marked_without_observe_reads() {
    let _one = SERVERS.lock().await;
    let Some(servers) = Servers::new("noobserve").await else {
        return;
    };
    let set = servers
        .set("noobserve")
        .observe_reads(false)
        .build()
        .unwrap();
    let handle = set.handle();
    let _monitor = set.spawn();
    until_healthy(&handle, &["a", "b"]).await;
    let mut svc = router(&set);
    assert!(call(&mut svc, Req::Write).await.mark.is_some());
    assert!(call(&mut svc, Req::read_at(None)).await.mark.is_none());
    handle.shutdown();
}
