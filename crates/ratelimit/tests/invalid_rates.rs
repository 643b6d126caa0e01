//! Rates and quotas chosen per request are checked like the defaults: an invalid one refuses
//! the request with a typed error, it never admits it (nor panics).

mod rates;

use std::{convert::Infallible, time::Duration};

use http::{Request, Response, StatusCode};
use proptest::prelude::*;
use rates::any_rate;
use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_patterns_core::{
    BoxError, ConfigError, Rejected, RejectionKind, http::ErrorResponseLayer, key::ExtensionKey,
    tenant::TenantId,
};
use tower_patterns_ratelimit::{
    GcraLimiter, KeyedRateLimitLayer, Limiter, Period, Quota, QuotaLimiter, Rate,
};

fn tenant_req(tenant: &str) -> Request<()> {
    let mut req = Request::new(());
    req.extensions_mut().insert(TenantId::new(tenant).unwrap());
    req
}

/// The statuses of `n` requests from one tenant through `limiter` behind the HTTP mapping.
async fn statuses<L>(limiter: L, n: usize) -> Vec<StatusCode>
where
    L: Limiter<Request<()>>,
{
    let svc = ServiceBuilder::new()
        .layer(ErrorResponseLayer::new())
        .layer(KeyedRateLimitLayer::new(limiter))
        .service(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(String::new()))
        }));
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(
            svc.clone()
                .oneshot(tenant_req("acme"))
                .await
                .unwrap()
                .status(),
        );
    }
    out
}

fn gcra_with(rate: Rate) -> impl Limiter<Request<()>> {
    GcraLimiter::builder("plans")
        .key(ExtensionKey::<TenantId>::new())
        .rate_for(move |_: &Request<()>| Some(rate), Duration::from_secs(1))
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn an_invalid_rate_for_a_request_is_refused_as_a_server_error() {
    let refused = vec![StatusCode::INTERNAL_SERVER_ERROR; 5];
    // A zero rate used to be unlimited, a zero interval too, and a zero burst panicked on its
    // second request (`attempt to subtract with overflow`).
    for rate in [
        Rate::per_second(0),
        Rate::new(3, Duration::ZERO),
        Rate::per_second(5).burst(0),
        Rate::new(1, Duration::MAX),
    ] {
        assert_eq!(statuses(gcra_with(rate), 5).await, refused, "{rate:?}");
    }
    // A valid one still works beside them.
    let ok = statuses(gcra_with(Rate::per_second(2)), 3).await;
    assert_eq!(ok, [200, 200, 429]);
}

#[tokio::test(start_paused = true)]
async fn an_invalid_quota_for_a_request_is_refused_as_a_server_error() {
    for quota in [
        Quota::new(0, Period::Day),
        Quota::new(5, Period::Every(Duration::ZERO)),
        Quota::new(5, Period::Every(Duration::from_millis(999))),
    ] {
        let limiter = QuotaLimiter::builder("plans")
            .key(ExtensionKey::<TenantId>::new())
            .quota(Quota::new(10, Period::Day))
            .quota_for(move |_: &Request<()>| Some(quota))
            .build()
            .unwrap();
        let got = limiter
            .check_key(TenantId::new("acme").unwrap(), quota)
            .unwrap_err();
        assert!(got.downcast_ref::<ConfigError>().is_some(), "{got}");
        assert_eq!(
            statuses(limiter, 3).await,
            [StatusCode::INTERNAL_SERVER_ERROR; 3],
            "{quota:?}"
        );
    }
}

#[test]
fn rates_report_their_refill_and_saturate_huge_periods() {
    assert_eq!(Rate::per_second(10).refill(), Duration::from_secs(1));
    assert_eq!(
        Rate::per_minute(2).burst(5).refill(),
        Duration::from_secs(150)
    );
    // 2^64 ns and more saturate instead of wrapping to a short interval.
    assert_eq!(
        Rate::new(1, Duration::MAX).interval(),
        Duration::from_nanos(u64::MAX)
    );
    assert_eq!(Rate::MAX_REFILL, Duration::from_secs(3_153_600_000));
    assert!(Rate::new(1, Rate::MAX_REFILL).validate().is_ok());
    assert!(
        Rate::new(1, Rate::MAX_REFILL + Duration::from_nanos(1))
            .validate()
            .is_err()
    );
    assert!(Rate::new(2, Rate::MAX_REFILL).burst(3).validate().is_err());
    assert!(Rate::new(1, Duration::from_nanos(1)).validate().is_ok());
}

fn rejected(err: &BoxError) -> &Rejected {
    let rejected = Rejected::find(&**err).unwrap_or_else(|| panic!("not a refusal: {err}"));
    assert_eq!(rejected.kind(), RejectionKind::RateLimited);
    rejected
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        rng_seed: proptest::test_runner::RngSeed::Fixed(15),
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// On a frozen clock: an invalid rate refuses every request with its `ConfigError` and
    /// holds no state; a valid one admits exactly its burst, counting down, refuses the next
    /// with a wait of one interval, and admits one more when that interval has passed.
    #[test]
    fn the_in_process_limiter_admits_exactly_what_a_valid_rate_allows(rate in any_rate()) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        rt.block_on(async {
            let limiter = GcraLimiter::builder("prop")
.key(())
                .build()
                .unwrap();
            let burst = u64::from(rate.burst_size());
            let tries = burst.min(24) + 2;
            let Ok(()) = rate.validate() else {
                for _ in 0..tries {
                    let err = limiter.check_key(7, rate).unwrap_err();
                    prop_assert!(err.downcast_ref::<ConfigError>().is_some(), "{err}");
                }
                prop_assert_eq!(limiter.keys(), 0);
                return Ok(());
            };
            for i in 0..tries {
                match limiter.check_key(7, rate) {
                    Ok(info) => {
                        prop_assert!(i < burst, "admitted {} of a burst of {}", i + 1, burst);
                        prop_assert_eq!(info.limit, burst);
                        prop_assert_eq!(info.remaining, burst - i - 1);
                        prop_assert_eq!(info.reset, rate.interval() * (i + 1) as u32);
                    }
                    Err(err) => {
                        prop_assert!(i >= burst, "refused {} within a burst of {}", i + 1, burst);
                        let rejected = rejected(&err);
                        prop_assert_eq!(rejected.retry_after(), Some(rate.interval()));
                        let info = rejected.limit().unwrap();
                        prop_assert_eq!(info.remaining, 0);
                        prop_assert_eq!(info.reset, rate.refill());
                    }
                }
            }
            prop_assert_eq!(limiter.keys(), 1);
            if burst < tries {
                // Spent: one interval later exactly one more is admitted.
                tokio::time::advance(rate.interval() - Duration::from_nanos(1)).await;
                prop_assert!(limiter.check_key(7, rate).is_err(), "1 ns early");
                tokio::time::advance(Duration::from_nanos(1)).await;
                let info = limiter.check_key(7, rate).unwrap();
                prop_assert_eq!(info.remaining, 0);
                prop_assert!(limiter.check_key(7, rate).is_err());
                // Forgotten: a full burst again.
                limiter.reset(&7);
                prop_assert_eq!(limiter.keys(), 0);
                let info = limiter.check_key(7, rate).unwrap();
                prop_assert_eq!(info.remaining, burst - 1);
            }
            Ok(())
        })?;
    }
}
