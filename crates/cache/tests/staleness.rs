//! Property: whatever the settings and the sequence of requests, failures and waits, no value
//! is served older than its TTL plus the allowed staleness.

use std::{
    convert::Infallible,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use proptest::prelude::*;
use tokio::time::Instant;
use tower::{Layer, ServiceExt, service_fn};
use tower_patterns_cache::{
    CacheLayer,
    store::{MokaStore, QuickCacheStore, Store},
};
use tower_patterns_core::{BoxError, KeyError, key::key_fn};

#[derive(Debug, Clone)]
enum Op {
    Wait(u64),
    Get(u64),
    Fail(bool),
    Invalidate(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u64..3_000).prop_map(Op::Wait),
        6 => (0u64..4).prop_map(Op::Get),
        1 => any::<bool>().prop_map(Op::Fail),
        1 => (0u64..4).prop_map(Op::Invalidate),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn nothing_is_served_past_ttl_plus_staleness(
        ttl_ms in 100u64..2_000,
        swr_ms in prop_oneof![Just(0u64), 0u64..2_000],
        sie_ms in prop_oneof![Just(0u64), 0u64..5_000],
        jitter in 0.0f64..0.9,
        beta in prop_oneof![Just(0.0f64), 0.0f64..3.0],
        load_ms in 0u64..300,
        seed in any::<u64>(),
        quick in any::<bool>(),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let case = Case { ttl_ms, swr_ms, sie_ms, jitter, beta, load_ms, seed };
        rt.block_on(async move {
            // Both in-process stores, the same rules.
            if quick {
                case.run(QuickCacheStore::<u64, u64>::builder().build(), ops).await
            } else {
                case.run(MokaStore::<u64, u64>::builder().build(), ops).await
            }
        })?;
    }
}

/// One generated case's settings.
#[derive(Clone, Copy)]
struct Case {
    ttl_ms: u64,
    swr_ms: u64,
    sie_ms: u64,
    jitter: f64,
    beta: f64,
    load_ms: u64,
    seed: u64,
}

impl Case {
    async fn run(self, store: impl Store<u64, u64>, ops: Vec<Op>) -> Result<(), TestCaseError> {
        let Case {
            ttl_ms,
            swr_ms,
            sie_ms,
            jitter,
            beta,
            load_ms,
            seed,
        } = self;
        let start = Instant::now();
        let failing = Arc::new(AtomicBool::new(false));
        let f = failing.clone();
        // The value is the moment the source produced it, in ms since start.
        let source = service_fn(move |_k: u64| {
            let f = f.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(load_ms)).await;
                if f.load(Ordering::SeqCst) {
                    return Err::<u64, BoxError>("down".into());
                }
                Ok(start.elapsed().as_millis() as u64)
            }
        });
        let layer = CacheLayer::builder("prop")
            .store(store)
            .key(key_fn(|k: &u64| Ok::<_, KeyError>(*k)))
            .unscoped()
            .ttl(Duration::from_millis(ttl_ms))
            .jitter(jitter)
            .stale_while_revalidate(Duration::from_millis(swr_ms))
            .stale_if_error(Duration::from_millis(sie_ms))
            .early_refresh(beta)
            .seed(seed)
            .build()
            .unwrap();
        let svc = layer.layer(source);
        let allowed = ttl_ms + swr_ms.max(sie_ms);
        for op in ops {
            match op {
                Op::Wait(ms) => tokio::time::sleep(Duration::from_millis(ms)).await,
                Op::Fail(on) => failing.store(on, Ordering::SeqCst),
                Op::Invalidate(k) => layer.handle().invalidate(None, k).await.unwrap(),
                Op::Get(k) => {
                    let asked = start.elapsed().as_millis() as u64;
                    if let Ok(born) = svc.clone().oneshot(k).await {
                        // Served at `asked` (a hit) or after a load that began then.
                        prop_assert!(
                            asked <= born + allowed,
                            "served a value born at {born} ms at {asked} ms (allowed {allowed} ms)"
                        );
                    }
                }
            }
        }
        Ok(())
    }
}

#[test]
fn infallible_sources_compile_too() {
    let _ = CacheLayer::builder("x")
        .store(MokaStore::<u64, u64>::builder().build())
        .key(key_fn(|k: &u64| Ok::<_, KeyError>(*k)))
        .unscoped()
        .build()
        .unwrap()
        .layer(service_fn(|k: u64| async move { Ok::<_, Infallible>(k) }));
}
