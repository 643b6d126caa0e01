//! The cache's handles: each reports as a `StateHandle` (pattern, name, health, a JSON report)
//! and publishes its metrics, read here from a `metrics-util` debugging recorder.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use metrics::{SharedString, Unit};
use metrics_util::{
    CompositeKey,
    debugging::{DebugValue, DebuggingRecorder, Snapshotter},
};
use tower::{Layer, ServiceExt, service_fn};
use tower_patterns_cache::{
    CacheLayer, ScopedKey, WriteBehind, WriteBehindClosed, http::HttpCacheLayer, store::MokaStore,
};
use tower_patterns_core::{
    BoxError, KeyError,
    http::classify_error,
    key::key_fn,
    observe::{Health, StateHandle},
};

/// One reading of the recorder (a reading resets its counters).
type Snapshot = Vec<(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)>;

fn snapshot(snap: &Snapshotter) -> Snapshot {
    snap.snapshot().into_vec()
}

/// The value of metric `name` labelled `name = instance` (and `outcome`, when given).
fn metric(seen: &Snapshot, name: &str, instance: &str, outcome: Option<&str>) -> Option<f64> {
    seen.iter().find_map(|(key, _, _, value)| {
        let k = key.key();
        let labelled = |l: &str, v: &str| k.labels().any(|x| x.key() == l && x.value() == v);
        (k.name() == name
            && labelled("name", instance)
            && outcome.is_none_or(|o| labelled("outcome", o)))
        .then(|| match value {
            DebugValue::Counter(c) => *c as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(_) => f64::NAN,
        })
    })
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_http_cache_handle_reports_and_publishes_its_counts() {
    let layer = HttpCacheLayer::builder("pages").build().unwrap();
    let origin = service_fn(|_req: Request<()>| async {
        Ok::<_, Infallible>(
            Response::builder()
                .header("cache-control", "max-age=60")
                .body(Full::new(Bytes::from_static(b"catalog")))
                .unwrap(),
        )
    });
    let svc = layer.layer(origin);
    let get = || {
        Request::get("http://shop.example/catalog")
            .body(())
            .unwrap()
    };
    svc.clone().oneshot(get()).await.unwrap();
    svc.clone().oneshot(get()).await.unwrap();
    svc.clone().oneshot(get()).await.unwrap();

    let handle = svc.handle();
    assert_eq!(
        (handle.pattern(), StateHandle::name(&handle)),
        ("cache", "pages")
    );
    assert_eq!(layer.handle().name(), "pages");
    assert_eq!(handle.health(), Health::Ready);
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    assert_eq!(
        metric(
            &snapshot(&snap),
            "tower_patterns_cache_hits_total",
            "pages",
            None
        ),
        None
    );
    let report = metrics::with_local_recorder(&recorder, || handle.report());
    let seen = snapshot(&snap);
    assert_eq!(
        (report.pattern, &*report.name, report.state),
        ("cache", "pages", "ok")
    );
    assert_eq!(report.value("hits"), Some(2.0));
    assert_eq!(report.value("misses"), Some(1.0));
    assert_eq!(report.value("hit_ratio"), Some(2.0 / 3.0));
    let json = report.to_json();
    assert!(
        json.contains("\"pattern\":\"cache\"") && json.contains("\"pages\""),
        "{json}"
    );
    for (name, want) in [
        ("tower_patterns_cache_hits_total", 2.0),
        ("tower_patterns_cache_misses_total", 1.0),
        ("tower_patterns_cache_stale_total", 0.0),
        ("tower_patterns_cache_coalesced_total", 0.0),
        ("tower_patterns_cache_refreshes_total", 0.0),
        ("tower_patterns_cache_bypassed_total", 0.0),
        ("tower_patterns_cache_evictions_total", 0.0),
        ("tower_patterns_cache_loads_in_flight", 0.0),
    ] {
        assert_eq!(metric(&seen, name, "pages", None), Some(want), "{name}");
    }
    assert!(metric(&seen, "tower_patterns_cache_entries", "pages", None).is_some());
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_http_cache_handle_counts_stale_answers_and_waits_and_purges() {
    // 0: fresh for 1 s, stale-while-revalidate 5 s, stale-if-error 100 s; 1: a server error.
    let mode = Arc::new(AtomicU32::new(0));
    let origin = {
        let mode = mode.clone();
        service_fn(move |req: Request<()>| {
            let mode = mode.load(Ordering::SeqCst);
            async move {
                if req.uri().path() == "/slow" {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                let res = match mode {
                    0 => Response::builder().header(
                        "cache-control",
                        "max-age=1, stale-while-revalidate=5, stale-if-error=100",
                    ),
                    _ => Response::builder().status(500),
                };
                Ok::<_, Infallible>(res.body(Full::new(Bytes::from_static(b"v"))).unwrap())
            }
        })
    };
    let layer = HttpCacheLayer::builder("pages").build().unwrap();
    let svc = layer.layer(origin);
    let get = |path: &str| {
        Request::get(format!("http://shop.example{path}"))
            .body(())
            .unwrap()
    };
    let x_cache = |res: &Response<_>| res.headers()["x-cache"].to_str().unwrap().to_owned();

    assert_eq!(
        x_cache(&svc.clone().oneshot(get("/catalog")).await.unwrap()),
        "MISS"
    );
    tokio::time::advance(Duration::from_secs(2)).await;
    // Stale within stale-while-revalidate: answered, and revalidated in the background.
    assert_eq!(
        x_cache(&svc.clone().oneshot(get("/catalog")).await.unwrap()),
        "STALE"
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
    // Past that window, within stale-if-error, the origin fails: the stale copy answers.
    mode.store(1, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(7)).await;
    assert_eq!(
        x_cache(&svc.clone().oneshot(get("/catalog")).await.unwrap()),
        "STALE"
    );
    // Two requests for one URL share one origin request.
    mode.store(0, Ordering::SeqCst);
    let (a, b) = tokio::join!(
        svc.clone().oneshot(get("/slow")),
        svc.clone().oneshot(get("/slow"))
    );
    assert_eq!(
        (x_cache(&a.unwrap()), x_cache(&b.unwrap())),
        ("MISS".into(), "HIT".into())
    );

    let handle = layer.handle();
    let s = handle.stats();
    assert_eq!(
        (s.hits, s.misses, s.stale, s.coalesced),
        (0, 3, 2, 1),
        "{s:?}"
    );
    let report = handle.report();
    assert_eq!(report.value("stale"), Some(2.0));
    assert_eq!(report.value("stale_if_error"), Some(1.0));
    assert_eq!(report.value("hit_ratio"), Some(2.0 / 6.0));
    assert!(format!("{handle:?}").contains("pages"));
    assert!(format!("{svc:?}").contains("HttpCache") && format!("{svc:?}").contains("pages"));

    // A purge drops the URL's stored variants.
    assert_eq!(
        x_cache(&svc.clone().oneshot(get("/catalog")).await.unwrap()),
        "MISS"
    );
    assert_eq!(
        x_cache(&svc.clone().oneshot(get("/catalog")).await.unwrap()),
        "HIT"
    );
    handle.purge(None, "shop.example", "/catalog");
    assert_eq!(
        x_cache(&svc.clone().oneshot(get("/catalog")).await.unwrap()),
        "MISS"
    );
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_cache_aside_handle_publishes_its_counts_when_it_reports() {
    let layer = CacheLayer::builder("users")
        .store(MokaStore::<u64, String>::builder().build())
        .key(key_fn(|id: &u64| Ok::<_, KeyError>(*id)))
        .unscoped()
        .build()
        .unwrap();
    let db = service_fn(|id: u64| async move { Ok::<_, Infallible>(format!("user {id}")) });
    let users = layer.layer(db);
    users.clone().oneshot(7).await.unwrap();
    users.clone().oneshot(7).await.unwrap();
    let handle = users.handle();
    assert_eq!(
        (handle.pattern(), StateHandle::name(&handle)),
        ("cache", "users")
    );
    assert_eq!(handle.health(), Health::Ready);

    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    // Hits publish nothing by themselves: the counts reach the recorder when the handle reports.
    metrics::with_local_recorder(&recorder, || users.clone().oneshot(7));
    assert_eq!(
        metric(
            &snapshot(&snap),
            "tower_patterns_cache_hits_total",
            "users",
            None
        ),
        None
    );
    let report = metrics::with_local_recorder(&recorder, || handle.report());
    let seen = snapshot(&snap);
    assert_eq!(report.value("hits"), Some(1.0));
    for (name, want) in [
        ("tower_patterns_cache_hits_total", 1.0),
        ("tower_patterns_cache_misses_total", 1.0),
        ("tower_patterns_cache_stale_total", 0.0),
        ("tower_patterns_cache_coalesced_total", 0.0),
        ("tower_patterns_cache_refreshes_total", 0.0),
        ("tower_patterns_cache_load_errors_total", 0.0),
        ("tower_patterns_cache_store_errors_total", 0.0),
        ("tower_patterns_cache_bypassed_total", 0.0),
        ("tower_patterns_cache_evictions_total", 0.0),
        ("tower_patterns_cache_loads_in_flight", 0.0),
    ] {
        assert_eq!(metric(&seen, name, "users", None), Some(want), "{name}");
    }
    assert!(metric(&seen, "tower_patterns_cache_entries", "users", None).is_some());
}

type Batches = Arc<Mutex<Vec<Vec<(ScopedKey<u64>, String)>>>>;

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn the_write_behind_handle_reports_its_queue_and_counts_written_batches() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    // The writer task runs on this thread (current-thread runtime): it sees this recorder.
    let _guard = metrics::set_default_local_recorder(&recorder);
    let cache = CacheLayer::builder("prices")
        .store(MokaStore::<u64, String>::builder().build())
        .key(key_fn(|id: &u64| Ok::<_, KeyError>(*id)))
        .unscoped()
        .build()
        .unwrap();
    let batches = Batches::default();
    let writer = {
        let batches = batches.clone();
        service_fn(move |batch: Vec<(ScopedKey<u64>, String)>| {
            batches.lock().unwrap().push(batch);
            async { Ok::<_, Infallible>(()) }
        })
    };
    let (wb, handle) = WriteBehind::builder("prices-wb")
        .cache(cache.handle())
        .writer(writer)
        .max_pending(2)
        .build()
        .unwrap();
    assert_eq!(
        (handle.pattern(), StateHandle::name(&handle)),
        ("cache", "prices-wb")
    );
    assert_eq!(handle.name(), "prices-wb");
    wb.clone().oneshot((None, 1, "a".to_owned())).await.unwrap();
    wb.clone().oneshot((None, 2, "b".to_owned())).await.unwrap();
    let full = handle.report();
    assert_eq!((full.health, full.state), (Health::Degraded, "full"));
    assert_eq!(full.value("pending"), Some(2.0));
    assert_eq!(
        metric(
            &snapshot(&snap),
            "tower_patterns_cache_write_queue",
            "prices-wb",
            None
        ),
        Some(2.0)
    );

    handle.flush().await;
    assert_eq!(batches.lock().unwrap().len(), 1);
    let report = handle.report();
    assert_eq!((report.health, report.state), (Health::Ready, "ok"));
    assert_eq!(report.value("written"), Some(2.0));
    assert!(report.to_json().contains("\"prices-wb\""));
    let seen = snapshot(&snap);
    assert_eq!(
        metric(
            &seen,
            "tower_patterns_cache_writes_total",
            "prices-wb",
            Some("written")
        ),
        Some(2.0)
    );
    assert_eq!(
        metric(
            &seen,
            "tower_patterns_cache_writes_total",
            "prices-wb",
            Some("dropped")
        ),
        None
    );
    assert_eq!(
        metric(&seen, "tower_patterns_cache_write_queue", "prices-wb", None),
        Some(0.0)
    );

    assert!(!handle.is_closed());
    assert!(format!("{handle:?}").contains("prices-wb"));
    handle.shutdown().await;
    assert!(handle.is_closed());
    let closed = handle.report();
    assert_eq!(
        (closed.health, closed.state),
        (Health::Unavailable, "closed")
    );
}

#[test]
fn a_closed_write_behind_queue_maps_to_503_once_one_is_built() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cache = CacheLayer::builder("c")
            .store(MokaStore::<u64, String>::builder().build())
            .key(key_fn(|id: &u64| Ok::<_, KeyError>(*id)))
            .unscoped()
            .build()
            .unwrap();
        let writer =
            service_fn(|_: Vec<(ScopedKey<u64>, String)>| async { Ok::<_, Infallible>(()) });
        let (mut wb, handle) = WriteBehind::builder("c-wb")
            .cache(cache.handle())
            .writer(writer)
            .build()
            .unwrap();
        handle.shutdown().await;
        let err: BoxError = wb.ready().await.expect_err("a shut-down queue refuses");
        assert!(err.is::<WriteBehindClosed>());
        assert_eq!(err.to_string(), "write-behind queue is shut down");
        let mapping = classify_error(&*err);
        assert_eq!(mapping.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(mapping.message, "service unavailable");
    });
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn a_write_behind_that_dropped_a_batch_reports_degraded_and_counts_it() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let _guard = metrics::set_default_local_recorder(&recorder);
    let cache = CacheLayer::builder("stock")
        .store(MokaStore::<u64, String>::builder().build())
        .key(key_fn(|id: &u64| Ok::<_, KeyError>(*id)))
        .unscoped()
        .build()
        .unwrap();
    let refusing = service_fn(|_: Vec<(ScopedKey<u64>, String)>| async {
        Err::<(), BoxError>("the source refuses".into())
    });
    let (wb, handle) = WriteBehind::builder("stock-wb")
        .cache(cache.handle())
        .writer(refusing)
        .max_delay(Duration::ZERO)
        .attempts(1, Duration::from_millis(1))
        .build()
        .unwrap();
    assert_eq!(handle.report().health, Health::Ready);
    wb.clone().oneshot((None, 1, "a".to_owned())).await.unwrap();
    handle.flush().await;
    assert_eq!(handle.dropped(), 1);
    let report = handle.report();
    assert_eq!(
        (report.health, report.state),
        (Health::Degraded, "dropping")
    );
    assert_eq!(report.value("dropped"), Some(1.0));
    let seen = snapshot(&snap);
    assert_eq!(
        metric(
            &seen,
            "tower_patterns_cache_writes_total",
            "stock-wb",
            Some("dropped")
        ),
        Some(1.0)
    );
    assert_eq!(
        metric(
            &seen,
            "tower_patterns_cache_writes_total",
            "stock-wb",
            Some("written")
        ),
        None
    );
}
