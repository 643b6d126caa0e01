//! Every limiter's handle (core's `StateHandle`, pattern `ratelimit`) and its metrics, read
//! from a `metrics-util` debugging recorder: refusals are counted by kind, admitted requests
//! touch no metric.

use std::{convert::Infallible, time::Duration};

use http::{Request, Response, StatusCode};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_patterns_core::{
    ConfigError,
    http::ErrorResponseLayer,
    key::ExtensionKey,
    keyed::KeyBounds,
    observe::{Health, StateHandle},
    tenant::TenantId,
};
use tower_patterns_ratelimit::{
    GcraLimiter, HasHandle, KeyedRateLimitLayer, Limit, Limiter, Period, Quota, QuotaLimiter, Rate,
};

fn tenant_req(tenant: &str) -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut().insert(TenantId::new(tenant).unwrap());
    req
}

/// Statuses of `reqs` through `layer` behind the HTTP mapping.
async fn statuses<L>(layer: &KeyedRateLimitLayer<L>, reqs: Vec<Request<()>>) -> Vec<u16>
where
    L: Limiter<Request<()>> + Send + Sync + 'static,
    L::Future: Send + 'static,
{
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(layer.clone())
        .service(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
    let mut out = Vec::new();
    for req in reqs {
        out.push(svc.clone().oneshot(req).await.unwrap().status().as_u16());
    }
    out
}

/// `(name, kind, value)` of every counter and gauge. A snapshot drains the recorder (counters
/// and gauges start again from 0), so each check reads one snapshot.
fn metrics(snapshotter: &Snapshotter) -> Vec<(String, String, f64)> {
    let mut out: Vec<_> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let k = key.key();
            let kind = k
                .labels()
                .find(|l| l.key() == "kind")
                .map_or(String::new(), |l| l.value().to_owned());
            let value = match value {
                DebugValue::Counter(v) => v as f64,
                DebugValue::Gauge(v) => v.into_inner(),
                DebugValue::Histogram(_) => return None,
            };
            Some((k.name().to_owned(), kind, value))
        })
        .collect();
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    out
}

/// The value of `name` with the label `kind` (empty: none) in `snapshot`.
fn value(snapshot: &[(String, String, f64)], name: &str, kind: &str) -> Option<f64> {
    snapshot
        .iter()
        .find(|(n, k, _)| n == name && k == kind)
        .map(|(_, _, v)| *v)
}

fn rejected(snapshot: &[(String, String, f64)], kind: &str) -> f64 {
    value(snapshot, "tower_patterns_ratelimit_rejected_total", kind).unwrap_or(f64::NAN)
}

#[tokio::test(start_paused = true)]
async fn the_gcra_handle_reports_keys_and_refusals_by_kind() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        let limiter = GcraLimiter::builder("api")
            .key(ExtensionKey::<TenantId>::new())
            .rate(Rate::per_second(2))
            .rate_for(
                |req: &Request<()>| {
                    (TenantId::of(req)?.as_str() == "broken").then(|| Rate::per_second(0))
                },
                Duration::from_secs(1),
            )
            .build()
            .unwrap();
        KeyedRateLimitLayer::new(limiter)
    });
    // Admitted requests: every counter registered, none moved.
    let admitted = statuses(&layer, vec![tenant_req("a"), tenant_req("b")]).await;
    assert_eq!(admitted, [200, 200]);
    let kinds = metrics(&snapshotter);
    assert_eq!(kinds.len(), 5, "{kinds:?}");
    assert!(kinds.iter().all(|(_, _, v)| *v == 0.0), "{kinds:?}");

    let refused = statuses(
        &layer,
        vec![
            tenant_req("a"),
            tenant_req("a"),
            Request::new(()),
            tenant_req("broken"),
        ],
    )
    .await;
    assert_eq!(refused, [200, 429, 400, 500]);
    let snapshot = metrics(&snapshotter);
    assert_eq!(rejected(&snapshot, "rate_limited"), 1.0);
    assert_eq!(rejected(&snapshot, "bad_key"), 1.0);
    assert_eq!(rejected(&snapshot, "invalid_limit"), 1.0);
    assert_eq!(rejected(&snapshot, "quota_exceeded"), 0.0);

    let handle = layer.handle();
    assert_eq!(handle.pattern(), "ratelimit");
    assert_eq!(StateHandle::name(&handle), "api");
    assert_eq!(handle.health(), Health::Ready);
    assert_eq!(
        (handle.keys(), handle.rejected(), handle.rate_limited()),
        (Some(2), 3, 1)
    );
    assert_eq!((handle.quota_exceeded(), handle.unavailable()), (0, 0));
    assert_eq!(handle.limit(), Limit::Rate(Rate::per_second(2)));
    let report = handle.report();
    assert_eq!(report.state, "limiting");
    for (what, value) in [
        ("keys", 2.0),
        ("max_keys", 100_000.0),
        ("burst", 2.0),
        ("interval_seconds", 0.5),
        ("rejected", 3.0),
        ("rejected_rate_limited", 1.0),
        ("rejected_bad_key", 1.0),
        ("rejected_invalid_limit", 1.0),
        ("rejected_quota_exceeded", 0.0),
        ("rejected_load_shed", 0.0),
    ] {
        assert_eq!(report.value(what), Some(value), "{what}");
    }
    assert!(
        report
            .to_json()
            .starts_with(r#"{"pattern":"ratelimit","name":"api","health":"ready","state":"limiting","values":{"keys":2.0,"#),
        "{}",
        report.to_json()
    );
    // The service and the limiter reach the same state; a handle is a `dyn StateHandle`.
    let handles: Vec<Box<dyn StateHandle>> = vec![
        Box::new(layer.limiter().handle()),
        Box::new(HasHandle::handle(layer.limiter())),
    ];
    assert!(
        handles
            .iter()
            .all(|h| h.report().value("rejected") == Some(3.0))
    );
}

#[tokio::test(start_paused = true)]
async fn the_quota_handle_reports_counts_and_exceeded_quotas() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        let limiter = QuotaLimiter::builder("monthly")
            .key(ExtensionKey::<TenantId>::new())
            .quota(Quota::new(1, Period::Month))
            .build()
            .unwrap();
        KeyedRateLimitLayer::new(limiter)
    });
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(layer.clone())
        .service(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
    assert_eq!(
        svc.clone().oneshot(tenant_req("a")).await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(rejected(&metrics(&snapshotter), "quota_exceeded"), 0.0);
    assert_eq!(
        svc.clone().oneshot(tenant_req("a")).await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    let snapshot = metrics(&snapshotter);
    assert_eq!(rejected(&snapshot, "quota_exceeded"), 1.0);
    assert_eq!(rejected(&snapshot, "rate_limited"), 0.0);

    let handle = svc.get_ref().handle();
    assert_eq!(
        (handle.pattern(), StateHandle::name(&handle)),
        ("ratelimit", "monthly")
    );
    assert_eq!(handle.health(), Health::Ready);
    assert_eq!(
        (handle.keys(), handle.rejected(), handle.quota_exceeded()),
        (Some(1), 1, 1)
    );
    assert_eq!(handle.limit(), Limit::Quota(Quota::new(1, Period::Month)));
    assert_eq!((handle.rate_limited(), handle.unavailable()), (0, 0));
    assert!(
        format!("{handle:?}")
            .starts_with(r#"KeyedRateLimitHandle { name: "monthly", limit: Quota("#),
        "{handle:?}"
    );
    let report = handle.report();
    assert_eq!(report.state, "counting");
    assert_eq!(report.value("limit"), Some(1.0));
    assert_eq!(report.value("window_seconds"), Some(31.0 * 86_400.0));
    assert_eq!(report.value("rejected_quota_exceeded"), Some(1.0));
    assert!(
        report
            .to_json()
            .contains(r#""health":"ready","state":"counting""#)
    );
}

#[test]
fn a_quota_refuses_an_idle_time_shorter_than_its_window() {
    let _rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = _rt.enter();
    let build = |idle: Option<Duration>, period: Period| {
        QuotaLimiter::builder("q")
            .key(ExtensionKey::<TenantId>::new())
            .quota(Quota::new(10, period))
            .key_bounds(KeyBounds { max_keys: 10, idle })
            .build()
            .map(|limiter: QuotaLimiter<_, TenantId>| limiter.name().to_owned())
    };
    let err: ConfigError = build(Some(Duration::from_secs(600)), Period::Day).unwrap_err();
    assert!(err.to_string().contains("key_bounds"), "{err}");
    assert!(build(Some(Duration::from_secs(30 * 86_400)), Period::Month).is_err());
    assert!(build(Some(Duration::from_secs(31 * 86_400)), Period::Month).is_ok());
    assert!(build(Some(Duration::from_secs(86_400)), Period::Day).is_ok());
    assert!(build(None, Period::Month).is_ok());

    // Quotas chosen per request may have longer windows than the default's: no idle time
    // then, or a monthly tenant idle for a day would start its month again from zero.
    let per_request = |idle: Option<Duration>| {
        QuotaLimiter::builder("q")
            .key(ExtensionKey::<TenantId>::new())
            .quota(Quota::new(10, Period::Day))
            .quota_for(|_: &()| Some(Quota::new(100, Period::Month)))
            .key_bounds(KeyBounds { max_keys: 10, idle })
            .build()
            .map(|limiter: QuotaLimiter<_, TenantId, _>| limiter.name().to_owned())
    };
    let err = per_request(Some(Duration::from_secs(40 * 86_400))).unwrap_err();
    assert_eq!(err.field(), "key_bounds");
    assert!(per_request(None).is_ok());
}

#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redis_handle_reports_an_unreachable_redis() {
    use tower_patterns_ratelimit::redis::{RedisLimiter, Unavailable};

    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        let limiter = RedisLimiter::builder("shared")
            .key(ExtensionKey::<TenantId>::new())
            .url(format!("redis://127.0.0.1:{port}"))
            .timeout(Duration::from_millis(200))
            .on_unavailable(Unavailable::FailClosed)
            .build()
            .unwrap();
        KeyedRateLimitLayer::new(limiter)
    });
    let handle = layer.handle();
    assert_eq!(
        (handle.health(), handle.report().state),
        (Health::Ready, "connected")
    );
    let degraded = "tower_patterns_ratelimit_degraded";
    assert_eq!(value(&metrics(&snapshotter), degraded, ""), Some(0.0));

    let refused = statuses(&layer, vec![tenant_req("a"), Request::new(())]).await;
    assert_eq!(refused, [503, 400]);
    let snapshot = metrics(&snapshotter);
    assert_eq!(rejected(&snapshot, "load_shed"), 1.0);
    assert_eq!(rejected(&snapshot, "bad_key"), 1.0);
    assert_eq!(value(&snapshot, degraded, ""), Some(1.0));
    assert_eq!(
        value(&snapshot, "tower_patterns_ratelimit_unavailable_total", ""),
        Some(1.0)
    );

    assert_eq!(
        (handle.pattern(), StateHandle::name(&handle)),
        ("ratelimit", "shared")
    );
    assert_eq!(handle.health(), Health::Degraded);
    assert_eq!(
        (handle.unavailable(), handle.rejected(), handle.keys()),
        (1, 2, None)
    );
    let report = handle.report();
    assert_eq!(report.state, "unreachable");
    assert_eq!(report.value("unavailable"), Some(1.0));
    assert_eq!(report.value("rejected_load_shed"), Some(1.0));
    assert!(report.to_json().contains(r#""health":"degraded""#));
}
