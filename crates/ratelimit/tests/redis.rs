//! The distributed limiter against a real Redis (provided by `scripts/test`).
#![cfg(feature = "redis")]

mod rates;

use std::{convert::Infallible, net::TcpListener, time::Duration};

use http::{Request, Response, StatusCode};
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_patterns_core::{
    Rejected, RejectionKind, http::ErrorResponseLayer, key::ExtensionKey, observe::Health,
    tenant::TenantId,
};
use tower_patterns_ratelimit::{
    KeyedRateLimitLayer, Rate,
    redis::{RedisLimiter, Unavailable},
};
use tower_patterns_testkit::{Server, server_url};

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{name}-{}-{nanos}", std::process::id())
}

fn tenant_req(tenant: &str) -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut().insert(TenantId::new(tenant).unwrap());
    req
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_budget() {
    let Some(url) = server_url(Server::Redis) else {
        return;
    };
    let name = unique("shared");
    // 10 per minute: no allowance comes back while the test runs.
    let instance = || {
        let limiter = RedisLimiter::builder(name.as_str())
            .key(ExtensionKey::<TenantId>::new())
            .rate(Rate::per_minute(10))
            .timeout(Duration::from_secs(2))
            .url(&url)
            .build()
            .unwrap();
        ServiceBuilder::new()
            .layer(ErrorResponseLayer::new())
            .layer(KeyedRateLimitLayer::new(limiter))
            .service(service_fn(|_: Request<()>| async {
                Ok::<_, Infallible>(Response::new(String::new()))
            }))
    };
    let (a, b) = (instance(), instance());
    let mut admitted = 0;
    let mut remaining = Vec::new();
    for i in 0..16 {
        let svc = if i % 2 == 0 { a.clone() } else { b.clone() };
        let res = svc.oneshot(tenant_req("acme")).await.unwrap();
        if res.status() == StatusCode::OK {
            admitted += 1;
            remaining.push(
                res.headers()["ratelimit-remaining"]
                    .to_str()
                    .unwrap()
                    .to_owned(),
            );
        } else {
            assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
            let wait: u64 = res.headers()["retry-after"]
                .to_str()
                .unwrap()
                .parse()
                .unwrap();
            assert!((1..=6).contains(&wait), "retry after {wait}");
        }
    }
    assert_eq!(admitted, 10, "both instances drew on one budget of 10");
    assert_eq!(
        remaining,
        ["9", "8", "7", "6", "5", "4", "3", "2", "1", "0"]
    );
    // Another key has its own budget, on either instance.
    let other = b.clone().oneshot(tenant_req("globex")).await.unwrap();
    assert_eq!(other.status(), StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_redis_fails_open_or_closed_as_configured_and_is_reported() {
    // A loopback port with nothing listening.
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let url = format!("redis://127.0.0.1:{port}");
    let open = RedisLimiter::builder("open")
        .key(ExtensionKey::<TenantId>::new())
        .rate(Rate::per_minute(1))
        .on_unavailable(Unavailable::FailOpen)
        .url(&url)
        .build()
        .unwrap();
    let closed = RedisLimiter::builder("closed")
        .key(ExtensionKey::<TenantId>::new())
        .rate(Rate::per_minute(1))
        .on_unavailable(Unavailable::FailClosed)
        .url(&url)
        .build()
        .unwrap();
    assert_eq!(open.health(), Health::Ready);
    let shown = format!("{open:?}");
    assert!(
        shown.contains("\"open\"") && shown.contains("FailOpen"),
        "{shown}"
    );

    // Fail open: every request passes (the limit of 1 would have refused the second).
    for _ in 0..3 {
        let got = open.check_key("acme", Rate::per_minute(1)).await;
        assert!(matches!(got, Ok(None)), "{got:?}");
    }
    assert_eq!(open.health(), Health::Degraded);
    assert_eq!(open.failures(), 3);

    // Fail closed: refused as unavailable (503), not as rate limited (429).
    let err = closed
        .check_key("acme", Rate::per_minute(1))
        .await
        .unwrap_err();
    let rejected = Rejected::find(&*err).unwrap();
    assert_eq!(rejected.kind(), RejectionKind::LoadShed);
    assert_eq!(closed.health(), Health::Degraded);

    // Through the layer, the failure maps to 503.
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(KeyedRateLimitLayer::new(closed))
        .service(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
    let res = svc.oneshot(tenant_req("acme")).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
}

/// Against the real Redis, over the same rates as the in-process limiter's property test: an
/// invalid rate is refused with its `ConfigError` before Redis is asked (it never fails open
/// either); a valid one admits its whole burst at first, and never more than the burst plus
/// what came back while the checks ran.
#[test]
fn the_redis_limiter_admits_no_more_than_a_valid_rate_allows_and_refuses_invalid_ones() {
    use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};
    use tower_patterns_core::ConfigError;

    let Some(url) = server_url(Server::Redis) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let limiter = RedisLimiter::builder(unique("prop"))
        .key(())
        .timeout(Duration::from_secs(2))
        .on_unavailable(Unavailable::FailOpen)
        .url(&url)
        .build()
        .unwrap();
    let mut runner = TestRunner::new(Config {
        cases: 96,
        rng_seed: RngSeed::Fixed(15),
        failure_persistence: None,
        ..Config::default()
    });
    let case = std::cell::Cell::new(0u32);
    let valid = std::cell::Cell::new(0u32);
    runner
        .run(&rates::any_rate(), |rate| {
            case.set(case.get() + 1);
            let key = format!("case-{}", case.get());
            rt.block_on(async {
                let burst = u64::from(rate.burst_size());
                let tries = burst.min(8) + 2;
                if rate.validate().is_err() {
                    for _ in 0..tries {
                        let err = limiter.check_key(&key, rate).await.unwrap_err();
                        if err.downcast_ref::<ConfigError>().is_none() {
                            return Err(TestCaseError::fail(format!("{rate:?}: {err}")));
                        }
                    }
                    return Ok(());
                }
                valid.set(valid.get() + 1);
                let interval_us = rate.interval().as_nanos().div_ceil(1000) as u64;
                let start = std::time::Instant::now();
                let mut admitted = 0u64;
                for i in 0..tries {
                    match limiter.check_key(&key, rate).await {
                        Ok(Some(info)) => {
                            admitted += 1;
                            proptest::prop_assert_eq!(info.limit, burst);
                        }
                        Ok(None) => {
                            return Err(TestCaseError::fail(format!(
                                "{rate:?}: failed open, Redis refused the check"
                            )));
                        }
                        Err(err) => {
                            proptest::prop_assert!(i >= burst, "refused within the burst: {err}");
                            let rejected = Rejected::find(&*err).unwrap();
                            proptest::prop_assert_eq!(rejected.kind(), RejectionKind::RateLimited);
                            let wait = rejected.retry_after().unwrap();
                            proptest::prop_assert!(
                                !wait.is_zero() && wait <= Duration::from_micros(interval_us),
                                "wait {wait:?} for an interval of {interval_us} µs"
                            );
                        }
                    }
                }
                let came_back = start.elapsed().as_micros() as u64 / interval_us + 1;
                proptest::prop_assert!(
                    admitted <= burst + came_back,
                    "{rate:?}: {admitted} admitted"
                );
                Ok(())
            })
        })
        .unwrap();
    assert_eq!(limiter.failures(), 0, "Redis answered every valid check");
    // Both kinds were drawn.
    assert!(
        (20..=76).contains(&valid.get()),
        "{} valid rates",
        valid.get()
    );
}

/// Not even a Redis to ask: an invalid rate for the request is refused first (500), where it
/// used to reach Redis and, Redis being unreachable, fail open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_rate_for_a_request_is_refused_before_redis_is_asked() {
    let port = {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let limiter = std::sync::Arc::new(
        RedisLimiter::builder("plans")
            .key(ExtensionKey::<TenantId>::new())
            .rate_for(|_: &Request<()>| Some(Rate::new(3, Duration::ZERO)))
            .on_unavailable(Unavailable::FailOpen)
            .url(format!("redis://127.0.0.1:{port}"))
            .build()
            .unwrap(),
    );
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(KeyedRateLimitLayer::from_shared(limiter.clone()))
        .service(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
    for _ in 0..3 {
        let res = svc.clone().oneshot(tenant_req("acme")).await.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(limiter.failures(), 0, "Redis was never asked");
    assert_eq!(limiter.health(), Health::Ready);
}
