//! Every handle kind of the workspace, through the facade as a user reaches it: each reports
//! its pattern, its name, a health that matches its report and its state, a JSON report of
//! the documented shape, and publishes metrics named `tower_patterns_<pattern>_...` labelled
//! with its name (read from a `metrics-util` debugging recorder). All of them fit in one
//! `Vec<Box<dyn StateHandle>>`, as a health endpoint would list them.

use std::{
    collections::BTreeSet,
    convert::Infallible,
    future::Future,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU32, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderName, Request, Response};
use http_body_util::Full;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::{Layer, ServiceExt, service_fn};
use tower_patterns::{
    BoxError, KeyError, Rejected, RejectionKind,
    breaker::{CircuitBreakerLayer, KeyedCircuitBreakerLayer},
    bulkhead::{BulkheadLayer, KeyedBulkheadLayer},
    cache::{CacheLayer, ScopedKey, WriteBehind, http::HttpCacheLayer, store::MokaStore},
    chaos::{ChaosLayer, Fault},
    key::{ExtensionKey, HeaderKey, key_fn},
    observe::{Health, StateHandle},
    ratelimit::{GcraLimiter, KeyedRateLimitLayer, Period, Quota, QuotaLimiter, Rate},
    retry::{Backoff, HedgeDelay, HedgingLayer, RetryBudget, RetryPolicy},
    shard::{Jump, ShardRouter},
    tenant::{
        ApiKeyHash, StoreError, TenancyLayer, TenantId, TenantRecord, TenantStatus, TenantStore,
    },
};

/// What one case expects of its handle and its recorder.
struct Expect {
    pattern: &'static str,
    name: &'static str,
    health: Health,
    state: &'static str,
    /// A metric the case's calls moved, labelled `name = <name>`, and its value then.
    metric: &'static str,
    value: f64,
}

type Built = Pin<Box<dyn Future<Output = Box<dyn StateHandle>>>>;

/// Builds a layer and makes its calls under a fresh recorder (set as this thread's default,
/// so tasks on this current-thread runtime record there too), reports once under it (the
/// cache publishes its counts when it reports), reads the recorder once (a reading takes the
/// counts), and checks the handle and the metrics against `expect`.
async fn check(expect: Expect, build: impl FnOnce() -> Built) -> Box<dyn StateHandle> {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (handle, report) = {
        let _guard = metrics::set_default_local_recorder(&recorder);
        let handle = build().await;
        let report = handle.report();
        (handle, report)
    };
    let seen = snapshotter.snapshot().into_vec();
    let case = expect.name;

    assert_eq!(handle.pattern(), expect.pattern, "{case}: pattern");
    assert_eq!(handle.name(), expect.name, "{case}: name");
    assert_eq!(handle.health(), expect.health, "{case}: health");
    assert_eq!(
        report.health,
        handle.health(),
        "{case}: health() = report().health"
    );
    assert_eq!(report.pattern, expect.pattern, "{case}: report's pattern");
    assert_eq!(&*report.name, expect.name, "{case}: report's name");
    assert_eq!(report.state, expect.state, "{case}: report's state");
    assert!(!report.values.is_empty(), "{case}: a report with no values");

    let json: serde_json::Value = serde_json::from_str(&report.to_json())
        .unwrap_or_else(|e| panic!("{case}: the report is not JSON: {e}"));
    let object = json.as_object().expect("a JSON object");
    let keys: Vec<&str> = object.keys().map(String::as_str).collect();
    assert_eq!(
        keys.iter().copied().collect::<BTreeSet<_>>(),
        BTreeSet::from(["health", "name", "pattern", "state", "values"]),
        "{case}: {json}"
    );
    assert_eq!(json["pattern"], expect.pattern, "{case}: {json}");
    assert_eq!(json["name"], expect.name, "{case}: {json}");
    assert_eq!(json["health"], expect.health.as_str(), "{case}: {json}");
    assert_eq!(json["state"], expect.state, "{case}: {json}");
    let values = json["values"].as_object().expect("values is an object");
    assert_eq!(
        values.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        report.values.iter().map(|(what, _)| *what).collect(),
        "{case}: {json}"
    );

    // Every metric recorded is a tower-patterns metric and says which instance it is about.
    assert!(!seen.is_empty(), "{case}: no metric recorded");
    for (key, _, _, _) in &seen {
        let k = key.key();
        assert!(
            k.name().starts_with("tower_patterns_"),
            "{case}: {} is not prefixed",
            k.name()
        );
        assert!(
            k.labels().any(|l| l.key() == "name"),
            "{case}: {} has no name label",
            k.name()
        );
    }
    let prefix = format!("tower_patterns_{}_", expect.pattern);
    let mine: Vec<(&str, f64)> = seen
        .iter()
        .filter(|(key, ..)| {
            let k = key.key();
            k.name().starts_with(&prefix)
                && k.labels()
                    .any(|l| l.key() == "name" && l.value() == expect.name)
        })
        .map(|(key, _, _, value)| {
            let value = match value {
                DebugValue::Counter(n) => *n as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(h) => h.len() as f64,
            };
            (key.key().name(), value)
        })
        .collect();
    assert!(
        mine.iter()
            .any(|(metric, value)| *metric == expect.metric && *value == expect.value),
        "{case}: {} = {} not among {mine:?}",
        expect.metric,
        expect.value
    );
    handle
}

fn failing() -> impl tower::Service<(), Response = (), Error = BoxError, Future: Send> + Clone {
    service_fn(|()| async { Err::<(), BoxError>("down".into()) })
}

fn kind(err: &BoxError) -> RejectionKind {
    Rejected::find(&**err)
        .unwrap_or_else(|| panic!("not a rejection: {err}"))
        .kind()
}

fn for_tenant(tenant: &str) -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut().insert(TenantId::new(tenant).unwrap());
    req
}

fn with_header(header: &'static str, value: &str) -> Request<()> {
    Request::get("/").header(header, value).body(()).unwrap()
}

type Hung = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

/// Answers at once, except for `x-key: slow`, which never answers.
fn hangs_for_slow()
-> impl tower::Service<Request<()>, Response = (), Error = BoxError, Future = Hung> + Clone {
    service_fn(|req: Request<()>| -> Hung {
        if req.headers().get("x-key").is_some_and(|v| v == "slow") {
            Box::pin(std::future::pending())
        } else {
            Box::pin(async { Ok(()) })
        }
    })
}

/// Fails its first `failures` calls.
fn flaky(failures: u32) -> impl tower::Service<u32, Response = u32, Error = BoxError> + Clone {
    let calls = Arc::new(AtomicU32::new(0));
    service_fn(move |x: u32| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < failures {
                Err::<u32, BoxError>("flaky".into())
            } else {
                Ok(x)
            }
        }
    })
}

/// `acme` is active; every other tenant is unknown; fails while `down`.
#[derive(Clone, Default)]
struct Tenants {
    down: Arc<AtomicBool>,
}

impl TenantStore for Tenants {
    async fn tenant(&self, id: &TenantId) -> Result<Option<TenantRecord>, StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError("connection refused".into()));
        }
        Ok((id.as_str() == "acme").then(|| TenantRecord {
            id: id.clone(),
            plan: "gold".into(),
            status: TenantStatus::Active,
        }))
    }

    async fn tenant_by_api_key(&self, _: &ApiKeyHash) -> Result<Option<TenantId>, StoreError> {
        Ok(None)
    }
}

#[tokio::test(flavor = "current_thread", start_paused = true)]
async fn every_handle_reports_itself_and_publishes_metrics_under_its_name() {
    let mut handles: Vec<Box<dyn StateHandle>> = Vec::new();
    // Hung calls that hold permits until the end of the test.
    let mut stuck = Vec::new();

    // Breaker: two failures open it; the next call is rejected.
    handles.push(
        check(
            Expect {
                pattern: "breaker",
                name: "payments",
                health: Health::Unavailable,
                state: "open",
                metric: "tower_patterns_breaker_rejected_total",
                value: 1.0,
            },
            || {
                Box::pin(async {
                    let layer = CircuitBreakerLayer::builder("payments")
                        .count_window(2)
                        .minimum_calls(2)
                        .open_duration(Duration::from_secs(3600))
                        .build()
                        .unwrap();
                    let svc = layer.layer(failing());
                    for _ in 0..2 {
                        svc.clone().oneshot(()).await.unwrap_err();
                    }
                    let err = svc.clone().oneshot(()).await.unwrap_err();
                    assert_eq!(kind(&err), RejectionKind::CircuitOpen);
                    Box::new(layer.handle()) as Box<dyn StateHandle>
                })
            },
        )
        .await,
    );

    // Keyed breaker: one host of two open.
    handles.push(
        check(
            Expect {
                pattern: "breaker",
                name: "hosts",
                health: Health::Degraded,
                state: "keyed",
                metric: "tower_patterns_breaker_keys_total",
                value: 2.0,
            },
            || {
                Box::pin(async {
                    let layer = KeyedCircuitBreakerLayer::builder("hosts")
                        .key(HeaderKey::new(HeaderName::from_static("x-key")))
                        .consecutive_failures(1)
                        .open_duration(Duration::from_secs(3600))
                        .build()
                        .unwrap();
                    let svc = layer.layer(service_fn(|req: Request<()>| async move {
                        match req.headers()["x-key"].to_str().unwrap() {
                            "bad" => Err::<(), BoxError>("down".into()),
                            _ => Ok(()),
                        }
                    }));
                    svc.clone()
                        .oneshot(with_header("x-key", "bad"))
                        .await
                        .unwrap_err();
                    svc.clone()
                        .oneshot(with_header("x-key", "good"))
                        .await
                        .unwrap();
                    let err = svc
                        .clone()
                        .oneshot(with_header("x-key", "bad"))
                        .await
                        .unwrap_err();
                    assert_eq!(kind(&err), RejectionKind::CircuitOpen);
                    Box::new(layer.handle()) as Box<dyn StateHandle>
                })
            },
        )
        .await,
    );

    // Bulkhead: a pool of one held by a hung call refuses the next.
    let (tx, rx) = std::sync::mpsc::channel();
    handles.push(
        check(
            Expect {
                pattern: "bulkhead",
                name: "db",
                health: Health::Degraded,
                state: "full",
                metric: "tower_patterns_bulkhead_rejected_total",
                value: 1.0,
            },
            || {
                Box::pin(async move {
                    let layer = BulkheadLayer::builder("db")
                        .max_concurrent(1)
                        .build()
                        .unwrap();
                    let svc = layer.layer(hangs_for_slow());
                    tx.send(tokio::spawn(
                        svc.clone().oneshot(with_header("x-key", "slow")),
                    ))
                    .unwrap();
                    tokio::task::yield_now().await;
                    let err = svc
                        .clone()
                        .oneshot(with_header("x-key", "quick"))
                        .await
                        .unwrap_err();
                    assert_eq!(kind(&err), RejectionKind::BulkheadFull);
                    Box::new(layer.handle()) as Box<dyn StateHandle>
                })
            },
        )
        .await,
    );
    stuck.extend(rx.try_iter());

    // Keyed bulkhead: one pool of two full.
    let (tx, rx) = std::sync::mpsc::channel();
    handles.push(
        check(
            Expect {
                pattern: "bulkhead",
                name: "tenants",
                health: Health::Degraded,
                state: "keyed",
                metric: "tower_patterns_bulkhead_rejected_total",
                value: 1.0,
            },
            || {
                Box::pin(async move {
                    let layer = KeyedBulkheadLayer::builder("tenants")
                        .key(HeaderKey::new(HeaderName::from_static("x-key")))
                        .default_size(1)
                        .build()
                        .unwrap();
                    let svc = layer.layer(hangs_for_slow());
                    tx.send(tokio::spawn(
                        svc.clone().oneshot(with_header("x-key", "slow")),
                    ))
                    .unwrap();
                    tokio::task::yield_now().await;
                    let err = svc
                        .clone()
                        .oneshot(with_header("x-key", "slow"))
                        .await
                        .unwrap_err();
                    assert_eq!(kind(&err), RejectionKind::BulkheadFull);
                    svc.clone()
                        .oneshot(with_header("x-key", "quick"))
                        .await
                        .unwrap();
                    Box::new(layer.handle()) as Box<dyn StateHandle>
                })
            },
        )
        .await,
    );
    stuck.extend(rx.try_iter());

    // Cache-aside: a miss then a hit, published when the handle reports.
    handles.push(
        check(
            Expect {
                pattern: "cache",
                name: "users",
                health: Health::Ready,
                state: "ok",
                metric: "tower_patterns_cache_hits_total",
                value: 1.0,
            },
            || {
                Box::pin(async {
                    let layer = CacheLayer::builder("users")
                        .store(MokaStore::<u64, String>::builder().build())
                        .key(key_fn(|id: &u64| Ok::<_, KeyError>(*id)))
                        .unscoped()
                        .build()
                        .unwrap();
                    let users = layer.layer(service_fn(|id: u64| async move {
                        Ok::<_, Infallible>(format!("user {id}"))
                    }));
                    users.clone().oneshot(7).await.unwrap();
                    users.clone().oneshot(7).await.unwrap();
                    Box::new(users.handle()) as Box<dyn StateHandle>
                })
            },
        )
        .await,
    );

    // HTTP cache: one miss, two hits.
    handles.push(
        check(
            Expect {
                pattern: "cache",
                name: "pages",
                health: Health::Ready,
                state: "ok",
                metric: "tower_patterns_cache_hits_total",
                value: 2.0,
            },
            || {
                Box::pin(async {
                    let layer = HttpCacheLayer::builder("pages").build().unwrap();
                    let svc = layer.layer(service_fn(|_req: Request<()>| async {
                        Ok::<_, Infallible>(
                            Response::builder()
                                .header("cache-control", "max-age=60")
                                .body(Full::new(Bytes::from_static(b"catalog")))
                                .unwrap(),
                        )
                    }));
                    for _ in 0..3 {
                        let get = Request::get("http://shop.example/catalog")
                            .body(())
                            .unwrap();
                        svc.clone().oneshot(get).await.unwrap();
                    }
                    Box::new(layer.handle()) as Box<dyn StateHandle>
                })
            },
        )
        .await,
    );

    // Write-behind: a queue of two, full.
    handles.push(
        check(
            Expect {
                pattern: "cache",
                name: "prices-wb",
                health: Health::Degraded,
                state: "full",
                metric: "tower_patterns_cache_write_queue",
                value: 2.0,
            },
            || {
                Box::pin(async {
                    let cache = CacheLayer::builder("prices")
                        .store(MokaStore::<u64, String>::builder().build())
                        .key(key_fn(|id: &u64| Ok::<_, KeyError>(*id)))
                        .unscoped()
                        .build()
                        .unwrap();
                    let writer = service_fn(|_: Vec<(ScopedKey<u64>, String)>| async {
                        Ok::<_, Infallible>(())
                    });
                    let (wb, handle) = WriteBehind::builder("prices-wb")
                        .cache(cache.handle())
                        .writer(writer)
                        .max_pending(2)
                        .max_delay(Duration::from_secs(3600))
                        .build()
                        .unwrap();
                    wb.clone().oneshot((None, 1, "a".to_owned())).await.unwrap();
                    wb.clone().oneshot((None, 2, "b".to_owned())).await.unwrap();
                    Box::new(handle) as Box<dyn StateHandle>
                })
            },
        )
        .await,
    );

    // GCRA rate limit: a burst of one, a second request refused.
    handles.push(
        check(
            Expect {
                pattern: "ratelimit",
                name: "api",
                health: Health::Ready,
                state: "limiting",
                metric: "tower_patterns_ratelimit_rejected_total",
                value: 1.0,
            },
            || {
                Box::pin(async {
                    let limiter = GcraLimiter::builder("api")
                        .key(ExtensionKey::<TenantId>::new())
                        .rate(Rate::per_second(1))
                        .build()
                        .unwrap();
                    let layer = KeyedRateLimitLayer::new(limiter);
                    let svc = layer.layer(service_fn(|_: Request<()>| async {
                        Ok::<_, BoxError>(Response::new(String::new()))
                    }));
                    svc.clone().oneshot(for_tenant("a")).await.unwrap();
                    let err = svc.clone().oneshot(for_tenant("a")).await.unwrap_err();
                    assert_eq!(kind(&err), RejectionKind::RateLimited);
                    Box::new(layer.handle()) as Box<dyn StateHandle>
                })
            },
        )
        .await,
    );

    // Quota: one request a month, the second refused.
    handles.push(
        check(
            Expect {
                pattern: "ratelimit",
                name: "monthly",
                health: Health::Ready,
                state: "counting",
                metric: "tower_patterns_ratelimit_rejected_total",
                value: 1.0,
            },
            || {
                Box::pin(async {
                    let limiter = QuotaLimiter::builder("monthly")
                        .key(ExtensionKey::<TenantId>::new())
                        .quota(Quota::new(1, Period::Month))
                        .build()
                        .unwrap();
                    let layer = KeyedRateLimitLayer::new(limiter);
                    let svc = layer.layer(service_fn(|_: Request<()>| async {
                        Ok::<_, BoxError>(Response::new(String::new()))
                    }));
                    svc.clone().oneshot(for_tenant("a")).await.unwrap();
                    let err = svc.clone().oneshot(for_tenant("a")).await.unwrap_err();
                    assert_eq!(kind(&err), RejectionKind::QuotaExceeded);
                    Box::new(layer.handle()) as Box<dyn StateHandle>
                })
            },
        )
        .await,
    );

    // Retry: one retry, then a spent budget throttles it.
    handles.push(
        check(
            Expect {
                pattern: "retry",
                name: "inventory",
                health: Health::Degraded,
                state: "throttled",
                metric: "tower_patterns_retry_retries_total",
                value: 1.0,
            },
            || {
                Box::pin(async {
                    let policy = RetryPolicy::builder("inventory")
                        .max_attempts(3)
                        .backoff(Backoff::Constant(Duration::from_millis(1)))
                        .budget(RetryBudget::new(10.0, 0.5).unwrap())
                        .build()
                        .unwrap();
                    let svc = policy.clone().layer().layer(flaky(1));
                    assert_eq!(svc.oneshot(1).await.unwrap(), 1);
                    let budget = policy.budget().unwrap();
                    for _ in 0..10 {
                        budget.failure();
                    }
                    Box::new(policy.handle()) as Box<dyn StateHandle>
                })
            },
        )
        .await,
    );

    // Hedging: a slow first attempt gets a copy.
    handles.push(
        check(
            Expect {
                pattern: "hedging",
                name: "reads",
                health: Health::Ready,
                state: "fixed",
                metric: "tower_patterns_hedging_copies_total",
                value: 1.0,
            },
            || {
                Box::pin(async {
                    let layer = HedgingLayer::builder("reads")
                        .delay(HedgeDelay::Fixed(Duration::from_millis(10)))
                        .copy(|x: &u32| Some(*x))
                        .build()
                        .unwrap();
                    let calls = Arc::new(AtomicU32::new(0));
                    let svc = layer.layer(service_fn(move |x: u32| {
                        let first = calls.fetch_add(1, Ordering::SeqCst) == 0;
                        async move {
                            let took = if first { 1000 } else { 1 };
                            tokio::time::sleep(Duration::from_millis(took)).await;
                            Ok::<_, BoxError>(x)
                        }
                    }));
                    assert_eq!(svc.oneshot(2).await.unwrap(), 2);
                    Box::new(layer.handle()) as Box<dyn StateHandle>
                })
            },
        )
        .await,
    );

    // Shard router: a key that cannot be read is counted.
    handles.push(
        check(
            Expect {
                pattern: "shard",
                name: "users",
                health: Health::Ready,
                state: "jump",
                metric: "tower_patterns_shard_key_errors_total",
                value: 1.0,
            },
            || {
                Box::pin(async {
                    let shards: Vec<_> = (0..4)
                        .map(|i| service_fn(move |_: u64| async move { Ok::<_, BoxError>(i) }))
                        .collect();
                    let router = ShardRouter::builder("users")
                        .shards(shards)
                        .strategy(Jump::new(4))
                        .key(key_fn(|u: &u64| match *u {
                            u64::MAX => Err(KeyError::malformed("user id", "reserved")),
                            u => Ok(u),
                        }))
                        .build()
                        .unwrap();
                    router.clone().oneshot(7).await.unwrap();
                    router.clone().oneshot(u64::MAX).await.unwrap_err();
                    Box::new(router.handle()) as Box<dyn StateHandle>
                })
            },
        )
        .await,
    );

    // Tenant: an unknown tenant refused, then a failing store degrades it.
    handles.push(
        check(
            Expect {
                pattern: "tenant",
                name: "shop",
                health: Health::Degraded,
                state: "store_failing",
                metric: "tower_patterns_tenant_lookups_total",
                value: 2.0,
            },
            || {
                Box::pin(async {
                    let store = Tenants::default();
                    let layer = TenancyLayer::builder("shop")
                        .store(store.clone())
                        .header("x-tenant-id")
                        .allow_unverified()
                        .build()
                        .unwrap();
                    let svc = layer.layer(service_fn(|_: Request<()>| async {
                        Ok::<_, Infallible>(Response::new(String::new()))
                    }));
                    let get = |t: &str| with_header("x-tenant-id", t);
                    svc.clone().oneshot(get("umbrella")).await.unwrap_err();
                    store.down.store(true, Ordering::SeqCst);
                    svc.clone().oneshot(get("acme")).await.unwrap_err();
                    Box::new(layer.handle()) as Box<dyn StateHandle>
                })
            },
        )
        .await,
    );

    // Chaos: a fault injected on every call while it is on.
    handles.push(
        check(
            Expect {
                pattern: "chaos",
                name: "provider",
                health: Health::Degraded,
                state: "on",
                metric: "tower_patterns_chaos_injected_total",
                value: 2.0,
            },
            || {
                Box::pin(async {
                    let layer = ChaosLayer::builder("provider")
                        .fault(Fault::status(http::StatusCode::BAD_GATEWAY))
                        .build()
                        .unwrap();
                    let svc = layer.layer(service_fn(|_: Request<()>| async {
                        Ok::<_, Infallible>(Response::new(String::new()))
                    }));
                    for _ in 0..2 {
                        let res = svc.clone().oneshot(Request::new(())).await.unwrap();
                        assert_eq!(res.status(), 502);
                    }
                    Box::new(layer.handle()) as Box<dyn StateHandle>
                })
            },
        )
        .await,
    );

    // One list for a health endpoint: every kind, each once, the worst health first to see.
    let listed: BTreeSet<(&str, &str)> = handles.iter().map(|h| (h.pattern(), h.name())).collect();
    assert_eq!(listed.len(), 14, "{listed:?}");
    assert_eq!(
        handles.iter().map(|h| h.pattern()).collect::<BTreeSet<_>>(),
        BTreeSet::from([
            "breaker",
            "bulkhead",
            "cache",
            "chaos",
            "hedging",
            "ratelimit",
            "retry",
            "shard",
            "tenant"
        ])
    );
    for h in &handles {
        assert_eq!(h.health(), h.report().health, "{}", h.name());
    }
    // Both caches count the one entry they stored (moka counts lazily; the report settles it).
    for name in ["users", "pages"] {
        let cache = handles
            .iter()
            .find(|h| h.pattern() == "cache" && h.name() == name);
        assert_eq!(
            cache.unwrap().report().value("entries"),
            Some(1.0),
            "{name}"
        );
    }
    let worst = handles.iter().map(|h| h.health()).max();
    assert_eq!(worst, Some(Health::Unavailable), "the open breaker");
    let body: Vec<serde_json::Value> = handles
        .iter()
        .map(|h| serde_json::from_str(&h.report().to_json()).unwrap())
        .collect();
    assert_eq!(body.len(), 14);

    for call in stuck {
        call.abort();
    }
}
