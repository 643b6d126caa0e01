//! Pools made on demand stay within `KeyBounds::max_keys`, whatever number of keys clients send.

use std::time::Duration;

use http::{HeaderName, Request};
use tower::{Layer, ServiceExt, service_fn};
use tower_patterns_bulkhead::KeyedBulkheadLayer;
use tower_patterns_core::{
    BoxError,
    key::{AsciiKey, HeaderKey},
    keyed::KeyBounds,
};

#[tokio::test(start_paused = true)]
async fn a_hundred_thousand_distinct_keys_stay_within_the_bound() {
    let layer = KeyedBulkheadLayer::builder("tenants")
        .key(HeaderKey::new(HeaderName::from_static("x-tenant")))
        .partition(AsciiKey::from_static("fixed"), 4)
        .default_size(2)
        .key_bounds(KeyBounds {
            max_keys: 1_000,
            idle: Some(Duration::from_secs(600)),
        })
        .build()
        .unwrap();
    let pools = layer.handle();
    assert_eq!(pools.len(), 1, "the fixed partition");
    let svc = layer.layer(service_fn(|_: Request<()>| async { Ok::<_, BoxError>(()) }));
    for tenant in 0..100_000u32 {
        let req = Request::builder()
            .header("x-tenant", format!("t{tenant}"))
            .body(())
            .unwrap();
        svc.clone().oneshot(req).await.unwrap();
        // Through the handle too, as a dashboard would read one pool.
        if tenant % 5_000 == 4_999 {
            let held = pools.len();
            assert!(held <= 1_001, "{held} partitions after {tenant} keys");
            let listed = pools.entries().len();
            assert!(
                listed <= 1_001,
                "{listed} partitions listed after {tenant} keys"
            );
            pools
                .get_or_make(&AsciiKey::try_from(format!("t{tenant}").as_str()).unwrap())
                .unwrap();
        }
    }
    let held = pools.len();
    assert!(
        (900..=1_001).contains(&held),
        "{held} partitions: bounded, and the pools are kept"
    );
    assert!(!pools.is_empty());
    let listed = pools.entries();
    assert!(listed.len() <= 1_001, "{} listed", listed.len());
    assert!(
        listed.iter().any(|(key, _)| key.as_str() == "fixed"),
        "the fixed partition is listed"
    );
}

#[test]
fn a_layer_without_partitions_is_empty_until_one_is_made() {
    let layer = KeyedBulkheadLayer::builder("on-demand")
        .key(HeaderKey::new(HeaderName::from_static("x-tenant")))
        .default_size(1)
        .build()
        .unwrap();
    let pools = layer.handle();
    assert!(pools.is_empty());
    assert_eq!(pools.len(), 0);
    pools.get_or_make(&AsciiKey::from_static("a")).unwrap();
    assert!(!pools.is_empty());
    assert_eq!(pools.entries().len(), 1);
}
