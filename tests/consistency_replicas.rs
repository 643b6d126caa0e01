//! Read-your-writes and monotonic reads over real PostgreSQL streaming replicas, through the
//! profiles service (`examples/replicas.rs`): the consistency layer in front of the replica
//! router, on the primary and the two replicas the test command starts.
//!
//! The tests pause a replica's replay (SIGSTOP of its startup process, by PID), which every
//! test of this binary would notice: they take one lock and run one at a time.

#[allow(dead_code)]
#[path = "../examples/replicas.rs"]
mod replicas;

use std::{sync::OnceLock, time::Duration};

use axum::{Router, body::Body};
use http::{HeaderValue, Request, StatusCode};
use http_body_util::BodyExt as _;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use serde_json::Value;
use tokio::sync::Mutex;
use tower::ServiceExt as _;
use tower_patterns::consistency::{
    TokenKey,
    layer::{Behind, TOKEN_HEADER},
};
use tower_patterns_testkit::{Replica, fresh_postgres, postgres_replicas};

static ONE_AT_A_TIME: Mutex<()> = Mutex::const_new(());

const KEY: TokenKey = TokenKey::new(*b"replica test key");

/// The metrics recorder of this binary (installed once).
fn snapshotter() -> &'static Snapshotter {
    static SNAPSHOTTER: OnceLock<Snapshotter> = OnceLock::new();
    SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this binary");
        snapshotter
    })
}

/// The lag gauges of the set `profiles`, in bytes, by replica: what the monitor set since the
/// last call (the debugging recorder's snapshot drains the values it reads).
fn lag_gauges() -> std::collections::BTreeMap<String, f64> {
    snapshotter()
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let key = key.key();
            let label = |name: &str| {
                key.labels()
                    .find(|l| l.key() == name)
                    .map(|l| l.value().to_owned())
            };
            let ours = key.name() == "tower_patterns_consistency_replica_lag_bytes"
                && label("name").as_deref() == Some("profiles");
            match (ours, value) {
                (true, DebugValue::Gauge(g)) => Some((label("replica")?, g.into_inner())),
                _ => None,
            }
        })
        .collect()
}

struct Setup {
    app: Router,
    handles: replicas::Handles,
    replicas: Vec<Replica>,
}

/// A fresh database with the profiles service over the primary and both replicas.
async fn setup(tag: &str, wait: Duration, behind: Behind) -> Option<Setup> {
    snapshotter();
    let primary = fresh_postgres(tag).await?;
    let replicas = postgres_replicas()?;
    let db = primary.rsplit('/').next().unwrap().to_owned();
    let urls: Vec<String> = replicas.iter().map(|r| r.database(&db)).collect();
    let (app, handles) = replicas::app(&primary, &urls, KEY, wait, behind)
        .await
        .unwrap();
    // Both replicas have the database and the table, and the monitor has seen them.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        handles.replicas.refresh().await;
        if handles.replicas.replicas().iter().all(|r| r.healthy) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "replicas not healthy: {:?}",
            handles.replicas.replicas()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Some(Setup {
        app,
        handles,
        replicas,
    })
}

struct Reply {
    status: StatusCode,
    token: Option<HeaderValue>,
    body: Value,
}

async fn send(
    app: &Router,
    method: &str,
    uri: &str,
    token: Option<&HeaderValue>,
    body: &str,
) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(t) = token {
        req = req.header(TOKEN_HEADER, t.clone());
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).unwrap())
        .await
        .unwrap();
    let status = res.status();
    let token = res.headers().get(TOKEN_HEADER).cloned();
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    Reply {
        status,
        token,
        body,
    }
}

/// Writes profile `id` and returns its new version and the session's token.
async fn write(app: &Router, id: &str, token: Option<&HeaderValue>) -> (i64, HeaderValue) {
    let r = send(app, "PUT", &format!("/profiles/{id}"), token, "bio").await;
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    (
        r.body["version"].as_i64().unwrap(),
        r.token.expect("a write sets the session's token"),
    )
}

/// Reads profile `id`: its version and who served it.
async fn read(
    app: &Router,
    id: &str,
    token: Option<&HeaderValue>,
) -> (i64, String, Option<HeaderValue>) {
    let r = send(app, "GET", &format!("/profiles/{id}"), token, "").await;
    if r.status == StatusCode::NOT_FOUND {
        return (0, "nobody".into(), r.token);
    }
    assert_eq!(r.status, StatusCode::OK, "{:?}", r.body);
    (
        r.body["version"].as_i64().unwrap(),
        r.body["served_by"].as_str().unwrap().to_owned(),
        r.token,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_with_its_writes_token_never_sees_the_state_before_the_write() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(s) = setup("rywreplica", Duration::from_secs(5), Behind::Unavailable).await else {
        return;
    };
    // Replica 1 stops replaying for the middle half of each run: it lags more and more while
    // replica 2 keeps up.
    let mut by_replica = 0;
    let mut paused = None;
    for i in 0..1_000 {
        match i {
            250 => drop(paused.replace(s.replicas[0].pause_replay())),
            750 => drop(paused.take()),
            _ => {}
        }
        let id = format!("u{}", i % 10);
        let (version, token) = write(&s.app, &id, None).await;
        let (seen, served_by, _) = read(&s.app, &id, Some(&token)).await;
        assert!(
            seen >= version,
            "pair {i}: read version {seen} after writing {version} ({served_by})"
        );
        if served_by.starts_with("replica") {
            by_replica += 1;
        }
    }
    assert!(paused.is_none());
    // With Behind::Unavailable nothing falls back: every read was a replica's.
    assert_eq!(by_replica, 1_000);

    // The same run without the token shows what the token is for.
    let mut stale = 0;
    for i in 0..1_000 {
        match i {
            250 => drop(paused.replace(s.replicas[0].pause_replay())),
            750 => drop(paused.take()),
            _ => {}
        }
        let id = format!("u{}", i % 10);
        let (version, _) = write(&s.app, &id, None).await;
        let (seen, _, _) = read(&s.app, &id, None).await;
        if seen < version {
            stale += 1;
        }
    }
    assert!(paused.is_none());
    eprintln!("without tokens, {stale} of 1000 reads right after their write were stale");
    assert!(stale > 0, "the run without tokens should show stale reads");
    let report = s.handles.consistency.clone();
    assert_eq!(report.unavailable(), 0);

    // A write that fails on the server (PostgreSQL refuses a NUL in text) moves no session:
    // no token, and no internals in the answer.
    let writes = s.handles.replicas.writes();
    let r = send(&s.app, "PUT", "/profiles/z", None, "a\0b").await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.body, Value::String("database error".into()));
    assert!(r.token.is_none());
    assert_eq!(s.handles.replicas.writes(), writes + 1);
    s.handles.replicas.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_replica_is_read_around_with_tokens_and_read_from_without() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(s) = setup("pausedreplica", Duration::from_millis(200), Behind::Primary).await else {
        return;
    };
    let names: Vec<String> = s
        .handles
        .replicas
        .replicas()
        .iter()
        .map(|r| r.name.to_string())
        .collect();
    // The profiles exist on both replicas before they stop.
    for id in ["p0", "p1", "p2"] {
        let (_, token) = write(&s.app, id, None).await;
        for _ in 0..4 {
            read(&s.app, id, Some(&token)).await;
        }
    }
    s.handles.replicas.refresh().await;
    {
        // Both replicas stop replaying: a read with a fresh token can only be the primary's.
        let _paused: Vec<_> = s.replicas.iter().map(Replica::pause_replay).collect();
        let mut from_primary = 0;
        let mut without_token_by_replica = 0;
        for i in 0..20 {
            let id = format!("p{}", i % 3);
            let (version, token) = write(&s.app, &id, None).await;
            let (seen, served_by, _) = read(&s.app, &id, Some(&token)).await;
            assert!(
                seen >= version,
                "read {seen} after writing {version} ({served_by})"
            );
            if served_by == "primary" {
                from_primary += 1;
            }
            // Without a token, the paused replicas still serve (they are under the lag bound).
            let (_, served_by, _) = read(&s.app, &id, None).await;
            if served_by.starts_with("replica") {
                without_token_by_replica += 1;
            }
        }
        assert_eq!(from_primary, 20);
        assert_eq!(
            without_token_by_replica,
            20,
            "{:?}",
            s.handles.replicas.replicas()
        );
        assert_eq!(s.handles.consistency.from_primary(), 20);
        // The lag shows, in the handle and in the gauges.
        s.handles.replicas.refresh().await;
        for r in s.handles.replicas.replicas() {
            assert!(r.lag_bytes > 0, "{r:?}");
        }
        s.handles.replicas.refresh().await;
        let gauges = lag_gauges();
        for name in &names {
            assert!(
                gauges.get(name).is_some_and(|g| *g > 0.0),
                "{name}: {gauges:?}"
            );
        }
    }
    // Replay resumed: the lag goes back to zero and tokens are served by replicas again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        s.handles.replicas.refresh().await;
        if s.handles
            .replicas
            .replicas()
            .iter()
            .all(|r| r.lag_bytes == 0)
        {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "lag did not recover: {:?}",
            s.handles.replicas.replicas()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.handles.replicas.refresh().await;
    let gauges = lag_gauges();
    for name in &names {
        assert_eq!(gauges.get(name), Some(&0.0), "{name}: {gauges:?}");
    }
    let (version, token) = write(&s.app, "p0", None).await;
    let (seen, served_by, _) = read(&s.app, "p0", Some(&token)).await;
    assert!(seen >= version);
    assert!(served_by.starts_with("replica"), "{served_by}");
    s.handles.replicas.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_never_reads_backwards_across_replicas_with_different_lag() {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(s) = setup("monotonic", Duration::from_secs(5), Behind::Unavailable).await else {
        return;
    };
    write(&s.app, "m", None).await;
    // Let both replicas have the first version, then hold the first one back.
    let (_, token) = write(&s.app, "m", None).await;
    read(&s.app, "m", Some(&token)).await;
    let paused = s.replicas[0].pause_replay();

    // A writer (another session) keeps writing; the reader carries its own token.
    let mut session: Option<HeaderValue> = None;
    let (mut last, mut backwards_without) = (0, 0);
    let mut last_without = 0;
    let mut served = std::collections::BTreeMap::<String, u32>::new();
    for i in 0..200 {
        if i % 4 == 0 {
            write(&s.app, "m", None).await;
        }
        let (seen, by, token) = read(&s.app, "m", session.as_ref()).await;
        assert!(seen >= last, "read {i}: version {seen} after {last} ({by})");
        last = seen;
        *served.entry(by).or_default() += 1;
        if token.is_some() {
            session = token;
        }
        // A session that drops its token may go back in time.
        let (seen, _, _) = read(&s.app, "m", None).await;
        if seen < last_without {
            backwards_without += 1;
        }
        last_without = seen;
    }
    eprintln!(
        "with a session token: served by {served:?}; without: {backwards_without} reads went back"
    );
    // The run had a lagging replica to go back to.
    assert!(backwards_without > 0);
    drop(paused);
    s.handles.replicas.shutdown();
}
