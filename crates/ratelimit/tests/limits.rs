//! Rate limits and quotas behind the HTTP mapping, on paused time.

use std::{
    convert::Infallible,
    time::{Duration, UNIX_EPOCH},
};

use http::{Request, Response, StatusCode};
use tower::{Service, ServiceBuilder, ServiceExt, service_fn, util::BoxCloneService};
use tower_patterns_core::{
    http::ErrorResponseLayer,
    key::{ExtensionKey, HeaderKey},
    keyed::KeyBounds,
    tenant::TenantId,
};
use tower_patterns_ratelimit::{
    GcraLimiter, KeyedRateLimitLayer, Limiter, Period, Quota, QuotaLimiter, Rate,
};

type Svc = BoxCloneService<Request<()>, Response<String>, Infallible>;

fn ok() -> impl tower::Service<
    Request<()>,
    Response = Response<String>,
    Error = Infallible,
    Future = std::future::Ready<Result<Response<String>, Infallible>>,
> + Clone {
    service_fn(|_: Request<()>| std::future::ready(Ok(Response::new("ok".to_owned()))))
}

fn serve<L>(limiter: L) -> Svc
where
    L: Limiter<Request<()>> + Send + Sync + 'static,
    L::Future: Send + 'static,
{
    BoxCloneService::new(
        ServiceBuilder::new()
            .layer(ErrorResponseLayer::new())
            .layer(KeyedRateLimitLayer::new(limiter))
            .service(ok()),
    )
}

fn tenant_req(tenant: &str) -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut().insert(TenantId::new(tenant).unwrap());
    req
}

async fn status(svc: &Svc, tenant: &str) -> StatusCode {
    svc.clone()
        .oneshot(tenant_req(tenant))
        .await
        .unwrap()
        .status()
}

fn plans(req: &Request<()>) -> Option<Rate> {
    match TenantId::of(req)?.as_str() {
        t if t.starts_with("gold") => Some(Rate::per_second(50)),
        _ => None,
    }
}

#[tokio::test(start_paused = true)]
async fn a_gold_tenant_gets_its_rate_while_a_free_tenant_is_limited() {
    let limiter = GcraLimiter::builder("api")
        .key(ExtensionKey::<TenantId>::new())
        .rate(Rate::per_second(5))
        .rate_for(plans, Duration::from_secs(1))
        .build()
        .unwrap();
    let svc = serve(limiter);
    let (mut gold, mut free) = (0, 0);
    // One simulated second, a request from each every 10 ms.
    for _ in 0..100 {
        gold += u32::from(status(&svc, "gold-co").await == StatusCode::OK);
        free += u32::from(status(&svc, "free-co").await == StatusCode::OK);
        tokio::time::advance(Duration::from_millis(10)).await;
    }
    // Burst + refill over the second: gold 50 + ~50, free 5 + ~5.
    assert!((99..=101).contains(&gold), "gold admitted {gold}");
    assert!((9..=11).contains(&free), "free admitted {free}");
}

#[tokio::test(start_paused = true)]
async fn refusals_carry_retry_after_and_the_ratelimit_headers() {
    let limiter = GcraLimiter::builder("api")
        .key(HeaderKey::new(http::HeaderName::from_static("x-api-key")))
        .rate(Rate::per_minute(3))
        .build()
        .unwrap();
    let svc = serve(limiter);
    let req = || {
        Request::builder()
            .header("x-api-key", "key-1")
            .body(())
            .unwrap()
    };
    let mut remaining = Vec::new();
    for _ in 0..3 {
        let res = svc.clone().oneshot(req()).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["ratelimit-limit"], "3");
        remaining.push(
            res.headers()["ratelimit-remaining"]
                .to_str()
                .unwrap()
                .to_owned(),
        );
    }
    assert_eq!(remaining, ["2", "1", "0"]);
    let refused = svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.headers()["retry-after"], "20");
    assert_eq!(refused.headers()["ratelimit-remaining"], "0");
    assert_eq!(refused.headers()["ratelimit-reset"], "60");
    assert_eq!(refused.body(), "rate limited");

    // The wait it gave is exact: 1 ms early is still refused, on time is served.
    tokio::time::advance(Duration::from_millis(19_999)).await;
    assert_eq!(svc.clone().oneshot(req()).await.unwrap().status(), 429);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(svc.clone().oneshot(req()).await.unwrap().status(), 200);

    // A missing key is the client's fault, not a limit.
    let no_key = svc.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(no_key.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test(start_paused = true)]
async fn a_plan_change_takes_effect_at_once() {
    let upgraded = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = upgraded.clone();
    let limiter = GcraLimiter::builder("api")
        .key(ExtensionKey::<TenantId>::new())
        .rate(Rate::per_hour(2))
        .rate_for(
            move |_: &Request<()>| {
                flag.load(std::sync::atomic::Ordering::Relaxed)
                    .then_some(Rate::per_hour(10))
            },
            Duration::from_secs(3600),
        )
        .build()
        .unwrap();
    let svc = serve(limiter);
    assert_eq!(status(&svc, "t").await, 200);
    assert_eq!(status(&svc, "t").await, 200);
    assert_eq!(status(&svc, "t").await, 429);
    upgraded.store(true, std::sync::atomic::Ordering::Relaxed);
    for _ in 0..10 {
        assert_eq!(status(&svc, "t").await, 200);
    }
    assert_eq!(status(&svc, "t").await, 429);
}

#[tokio::test(start_paused = true)]
async fn stacked_limits_report_the_nearer_one_and_a_quota_resets_at_the_month_end() {
    // 2028-02-29 23:59:00 UTC: a minute before the month ends.
    let start = UNIX_EPOCH + Duration::from_secs(1_835_481_540);
    let quota = QuotaLimiter::builder("monthly")
        .key(ExtensionKey::<TenantId>::new())
        .quota(Quota::new(3, Period::Month))
        .starting_at(start)
        .build()
        .unwrap();
    let burst = GcraLimiter::builder("burst")
        .key(ExtensionKey::<TenantId>::new())
        .rate(Rate::per_second(10))
        .build()
        .unwrap();
    let svc: Svc = BoxCloneService::new(
        ServiceBuilder::new()
            .layer(ErrorResponseLayer::new())
            .layer(KeyedRateLimitLayer::new(burst))
            .layer(KeyedRateLimitLayer::new(quota))
            .service(ok()),
    );
    let first = svc.clone().oneshot(tenant_req("acme")).await.unwrap();
    // The quota (2 left) is nearer to refusing than the burst (9 left).
    assert_eq!(first.headers()["ratelimit-limit"], "3");
    assert_eq!(first.headers()["ratelimit-remaining"], "2");
    assert_eq!(first.headers()["ratelimit-reset"], "60");
    assert_eq!(status(&svc, "acme").await, 200);
    assert_eq!(status(&svc, "acme").await, 200);
    let refused = svc.clone().oneshot(tenant_req("acme")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.body(), "quota exceeded");
    assert_eq!(refused.headers()["retry-after"], "60");
    // Another tenant has its own quota.
    assert_eq!(status(&svc, "other").await, 200);

    tokio::time::advance(Duration::from_secs(59)).await;
    assert_eq!(status(&svc, "acme").await, 429, "still February");
    tokio::time::advance(Duration::from_secs(1)).await;
    let march = svc.clone().oneshot(tenant_req("acme")).await.unwrap();
    assert_eq!(march.status(), 200, "March 1st: a new month");
    assert_eq!(march.headers()["ratelimit-remaining"], "2");
    // 31 days of March.
    assert_eq!(
        march.headers()["ratelimit-reset"],
        (31 * 86_400).to_string()
    );
}

#[tokio::test(start_paused = true)]
async fn concurrent_quota_checks_never_overspend() {
    let quota = std::sync::Arc::new(
        QuotaLimiter::builder("q")
            .key(ExtensionKey::<TenantId>::new())
            .quota(Quota::new(1000, Period::Day))
            .build()
            .unwrap(),
    );
    let tenant = TenantId::new("acme").unwrap();
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let quota = quota.clone();
            let tenant = tenant.clone();
            std::thread::spawn(move || {
                (0..1000)
                    .filter(|_| {
                        quota
                            .check_key(tenant.clone(), Quota::new(1000, Period::Day))
                            .is_ok()
                    })
                    .count()
            })
        })
        .collect();
    let admitted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(admitted, 1000);
    assert_eq!(quota.used("acme", Period::Day), 1000);
}

#[tokio::test(start_paused = true)]
async fn a_hundred_thousand_keys_leave_memory_bounded() {
    let limiter = GcraLimiter::builder("ip")
        .key(HeaderKey::new(http::HeaderName::from_static("x-client")))
        .rate(Rate::per_second(1))
        .key_bounds(KeyBounds {
            max_keys: 1000,
            idle: None,
        })
        .build()
        .unwrap();
    // Ten keys in steady use survive a flood of one-off keys.
    for round in 0..100_000u32 {
        let key = if round % 10 == 0 {
            format!("steady-{}", round / 10 % 10)
        } else {
            format!("flood-{round}")
        };
        let req = Request::builder().header("x-client", key).body(()).unwrap();
        let _ = Limiter::check(&limiter, &req);
    }
    let held = limiter.keys();
    assert!(held <= 1000, "{held} keys held");
    // The steady keys kept their state: each is refused (1 per second, no time passed).
    let req = Request::builder()
        .header("x-client", "steady-3")
        .body(())
        .unwrap();
    let refused = match Limiter::check(&limiter, &req) {
        tower_patterns_ratelimit::Decision::Now(res) => res.is_err(),
        tower_patterns_ratelimit::Decision::Later(_) => unreachable!(),
    };
    assert!(refused, "a steady key was evicted by the flood");
}

#[test]
fn racing_first_requests_share_one_limit() {
    // Four threads meet every key for the first time together: each key's burst of 3 is
    // spent once, not once per thread that created a limiter for it.
    let limiter = std::sync::Arc::new(
        GcraLimiter::builder("race")
            .key(())
            .rate(Rate::per_hour(3))
            .build()
            .unwrap(),
    );
    let start = std::sync::Arc::new(std::sync::Barrier::new(4));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let limiter = limiter.clone();
            let start = start.clone();
            std::thread::spawn(move || {
                start.wait();
                (0..2_000u32)
                    .flat_map(|key| [key; 2])
                    .filter(|&key| limiter.check_key(key, Rate::per_hour(3)).is_ok())
                    .count()
            })
        })
        .collect();
    let admitted: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
    assert_eq!(admitted, 2_000 * 3);
}

#[tokio::test(start_paused = true)]
async fn an_outer_limit_nearer_to_refusing_reports_itself_and_a_tie_keeps_the_inner() {
    let gcra = |name: &str, rate: Rate| {
        KeyedRateLimitLayer::new(
            GcraLimiter::builder(name.to_owned())
                .key(ExtensionKey::<TenantId>::new())
                .rate(rate)
                .build()
                .unwrap(),
        )
    };
    // Outer 2 per second (1 left) over inner 10 per second (9 left): the outer one speaks.
    let svc = ServiceBuilder::new()
        .layer(gcra("outer", Rate::per_second(2)))
        .layer(gcra("inner", Rate::per_second(10)))
        .service(ok());
    let res = svc.oneshot(tenant_req("acme")).await.unwrap();
    assert_eq!(res.headers()["ratelimit-limit"], "2");
    assert_eq!(res.headers()["ratelimit-remaining"], "1");
    // Both 3 (2 left), the outer one refilling in 20 s, the inner one in 1 s: the inner stays.
    let svc = ServiceBuilder::new()
        .layer(gcra("outer", Rate::per_minute(3)))
        .layer(gcra("inner", Rate::per_second(3)))
        .service(ok());
    let res = svc.oneshot(tenant_req("acme")).await.unwrap();
    assert_eq!(res.headers()["ratelimit-remaining"], "2");
    assert_eq!(res.headers()["ratelimit-reset"], "1");
}

/// A service that is never ready.
#[derive(Clone, Debug)]
struct Busy;

impl tower::Service<Request<()>> for Busy {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Response<String>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Pending
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        std::future::ready(Ok(Response::new(String::new())))
    }
}

#[tokio::test(start_paused = true)]
async fn the_layer_is_ready_when_its_inner_service_is_and_says_what_it_is() {
    let layer = KeyedRateLimitLayer::new(
        GcraLimiter::builder("api")
            .key(ExtensionKey::<TenantId>::new())
            .build()
            .unwrap(),
    )
    .headers(false);
    assert!(
        format!("{layer:?}").starts_with("KeyedRateLimitLayer { headers: false"),
        "{layer:?}"
    );
    let mut svc = tower::Layer::layer(&layer, Busy);
    assert!(
        format!("{svc:?}").starts_with("KeyedRateLimit { inner: Busy, headers: false"),
        "{svc:?}"
    );
    let ready = tokio::time::timeout(Duration::from_secs(1), svc.ready()).await;
    assert!(ready.is_err(), "pending while the inner service is");
    let mut svc = tower::Layer::layer(&layer, ok());
    let res = svc
        .ready()
        .await
        .unwrap()
        .call(tenant_req("acme"))
        .await
        .unwrap();
    assert!(
        !res.headers().contains_key("ratelimit-limit"),
        "headers off"
    );
}
