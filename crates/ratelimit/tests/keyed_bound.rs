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

#[tokio::test(start_paused = true)]
async fn a_flood_of_one_off_keys_does_not_reset_a_client_in_use() {
    let limiter = GcraLimiter::builder("clients")
        .key(HeaderKey::new(http::HeaderName::from_static("x-client")))
        .rate(Rate::per_minute(5))
        .key_bounds(KeyBounds {
            max_keys: 1_000,
            idle: None,
        })
        .build()
        .unwrap();
    let req = |client: &str| {
        Request::builder()
            .header("x-client", client)
            .body(())
            .unwrap()
    };
    let check = |client: &str| match Limiter::check(&limiter, &req(client)) {
        tower_patterns_ratelimit::Decision::Now(result) => result.is_ok(),
        tower_patterns_ratelimit::Decision::Later(_) => panic!("in process: decided now"),
    };
    for _ in 0..5 {
        assert!(check("busy"));
    }
    assert!(!check("busy"), "its burst is spent");
    // Ten times the bound in one-off keys, the busy client still calling now and then.
    for flood in 0..10_000u32 {
        assert!(check(&format!("one-off-{flood}")));
        if flood % 100 == 0 {
            assert!(!check("busy"), "reset after {flood} one-off keys");
        }
    }
    assert!(!check("busy"), "the busy client's state outlived the flood");
    assert!(limiter.keys() <= 1_000);
}
