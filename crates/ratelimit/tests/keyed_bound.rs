//! The keyed limiter holds at most `key_bounds.max_keys` keys, whatever number of keys clients send.

use http::Request;
use tower_patterns_core::{key::HeaderKey, keyed::KeyBounds};
use tower_patterns_ratelimit::{GcraLimiter, Limiter, Rate};

#[tokio::test(start_paused = true)]
async fn a_hundred_thousand_distinct_keys_stay_within_the_bound() {
    let limiter = GcraLimiter::builder("clients")
        .key(HeaderKey::new(http::HeaderName::from_static("x-client")))
        .rate(Rate::per_second(5))
        .key_bounds(KeyBounds {
            max_keys: 1_000,
            idle: None,
        })
        .build()
        .unwrap();
    for client in 0..100_000u32 {
        let req = Request::builder()
            .header("x-client", client)
            .body(())
            .unwrap();
        let _ = Limiter::check(&limiter, &req);
        if client % 5_000 == 4_999 {
            let held = limiter.keys();
            assert!(held <= 1_000, "{held} keys held after {client} keys");
        }
    }
    let held = limiter.keys();
    assert!(
        (900..=1_000).contains(&held),
        "{held} keys held: bounded, and the map is used"
    );
}
