//! Cache-aside behaviour: single flight, staleness rules, tenants, invalidation, write-through.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use futures_util::future::BoxFuture;
use tokio::time::{Instant, advance, sleep};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_patterns_cache::{
    CacheLayer, LoadError, WriteThroughLayer, WriteThroughMode, store::MokaStore,
};
use tower_patterns_core::{
    BoxError, KeyError, Rejected, RejectionKind, key::key_fn, tenant::TenantId,
};

/// A source of record: values by key, a call count, a delay per read, and a switch to fail.
#[derive(Clone, Default)]
struct Source {
    values: Arc<Mutex<HashMap<u64, String>>>,
    reads: Arc<AtomicUsize>,
    delay: Duration,
    failing: Arc<AtomicBool>,
    reject: bool,
}

impl Source {
    fn with(delay: Duration) -> Self {
        Self {
            delay,
            ..Self::default()
        }
    }
    fn set(&self, k: u64, v: &str) {
        self.values.lock().unwrap().insert(k, v.to_owned());
    }
    fn reads(&self) -> usize {
        self.reads.load(Ordering::SeqCst)
    }
}

impl Service<u64> for Source {
    type Response = String;
    type Error = BoxError;
    type Future = BoxFuture<'static, Result<String, BoxError>>;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, k: u64) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            this.reads.fetch_add(1, Ordering::SeqCst);
            // Read the value at the start of the load, as a database would.
            let v = this.values.lock().unwrap().get(&k).cloned();
            if !this.delay.is_zero() {
                sleep(this.delay).await;
            }
            if this.failing.load(Ordering::SeqCst) {
                return Err(if this.reject {
                    Rejected::new(RejectionKind::CircuitOpen).into()
                } else {
                    "source down".into()
                });
            }
            Ok(v.unwrap_or_else(|| "none".to_owned()))
        })
    }
}

type Layer_ = CacheLayer<
    tower_patterns_core::key::KeyFn<fn(&u64) -> Result<u64, KeyError>>,
    tower_patterns_cache::Unscoped,
    u64,
    String,
    MokaStore<u64, String>,
>;

fn by_id(k: &u64) -> Result<u64, KeyError> {
    Ok(*k)
}

fn layer(
    configure: impl FnOnce(
        tower_patterns_cache::CacheBuilder<
            tower_patterns_core::key::KeyFn<fn(&u64) -> Result<u64, KeyError>>,
            tower_patterns_cache::Unscoped,
            u64,
            String,
            MokaStore<u64, String>,
        >,
    ) -> tower_patterns_cache::CacheBuilder<
        tower_patterns_core::key::KeyFn<fn(&u64) -> Result<u64, KeyError>>,
        tower_patterns_cache::Unscoped,
        u64,
        String,
        MokaStore<u64, String>,
    >,
) -> Layer_ {
    let b = CacheLayer::builder("test")
        .store(MokaStore::builder().build())
        .key(key_fn(by_id as fn(&u64) -> Result<u64, KeyError>))
        .unscoped()
        .jitter(0.0)
        .ttl(Duration::from_secs(10));
    configure(b).build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_make_one_call() {
    // The source holds its answer until the test opens a gate, so every caller misses while
    // the load is in flight: no timing involved.
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let reads = Arc::new(AtomicUsize::new(0));
    let (g, r) = (gate.clone(), reads.clone());
    let source = service_fn(move |_k: u64| {
        let (g, r) = (g.clone(), r.clone());
        async move {
            r.fetch_add(1, Ordering::SeqCst);
            let _open = g.acquire().await;
            Ok::<_, Infallible>("one".to_owned())
        }
    });
    let layer = layer(|b| b);
    let svc = layer.layer(source);
    let barrier = Arc::new(tokio::sync::Barrier::new(1000));
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let svc = svc.clone();
            let barrier = barrier.clone();
            tokio::spawn(async move {
                barrier.wait().await;
                svc.oneshot(1).await
            })
        })
        .collect();
    // Wait (without sleeping) until all 1,000 are waiting on the one load, then open.
    while {
        let s = layer.handle().stats();
        s.misses + s.coalesced < 1000
    } {
        tokio::task::yield_now().await;
    }
    gate.add_permits(1_000); // enough for every caller, should single flight fail
    for t in tasks {
        assert_eq!(t.await.unwrap().unwrap(), "one");
    }
    assert_eq!(reads.load(Ordering::SeqCst), 1);
    let s = layer.handle().stats();
    assert_eq!((s.misses, s.coalesced, s.hits), (1, 999, 0), "{s:?}");
}

#[tokio::test(start_paused = true)]
async fn dropping_the_leader_fails_no_one() {
    let source = Source::with(Duration::from_secs(1));
    source.set(1, "one");
    let layer = layer(|b| b);
    let svc = layer.layer(source.clone());
    let leader = tokio::spawn(svc.clone().oneshot(1));
    tokio::task::yield_now().await;
    let followers: Vec<_> = (0..10)
        .map(|_| tokio::spawn(svc.clone().oneshot(1)))
        .collect();
    tokio::task::yield_now().await;
    advance(Duration::from_millis(500)).await;
    leader.abort();
    assert!(leader.await.unwrap_err().is_cancelled());
    for f in followers {
        assert_eq!(f.await.unwrap().unwrap(), "one");
    }
    assert_eq!(source.reads(), 1, "the load carried on; no second call");
    assert_eq!(layer.handle().stats().coalesced, 10);
    assert_eq!(
        layer.handle().loads_in_flight(),
        0,
        "a completed load leaves the map"
    );
    // And it was stored.
    assert_eq!(svc.oneshot(1).await.unwrap(), "one");
    assert_eq!(source.reads(), 1);
}

#[tokio::test(start_paused = true)]
async fn loads_abandoned_by_every_caller_leave_no_flight_behind() {
    // A source that never answers: only the callers' going away ends its loads.
    let reads = Arc::new(AtomicUsize::new(0));
    let r = reads.clone();
    let source = service_fn(move |_k: u64| {
        r.fetch_add(1, Ordering::SeqCst);
        std::future::pending::<Result<String, Infallible>>()
    });
    let layer = layer(|b| b);
    let svc = layer.layer(source);
    // 100 keys, each with a leader and two waiters.
    let tasks: Vec<_> = (0..300u64)
        .map(|i| tokio::spawn(svc.clone().oneshot(i % 100)))
        .collect();
    for _ in 0..1_000 {
        let s = layer.handle().stats();
        if s.misses + s.coalesced == 300 {
            break;
        }
        tokio::task::yield_now().await;
    }
    let s = layer.handle().stats();
    assert_eq!((s.misses, s.coalesced), (100, 200), "one load per key");
    assert_eq!(layer.handle().loads_in_flight(), 100);
    // Every caller gives up, as on a timeout above the cache.
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        assert!(t.await.unwrap_err().is_cancelled());
    }
    assert_eq!(
        layer.handle().loads_in_flight(),
        0,
        "no entry outlives the callers that could use it"
    );
    assert_eq!(reads.load(Ordering::SeqCst), 100);
    // A load abandoned before anyone joined it leaves nothing either.
    let lone = tokio::spawn(svc.clone().oneshot(7));
    tokio::task::yield_now().await;
    assert_eq!(
        reads.load(Ordering::SeqCst),
        101,
        "a new load, not a dead one joined"
    );
    assert_eq!(layer.handle().loads_in_flight(), 1);
    lone.abort();
    assert!(lone.await.unwrap_err().is_cancelled());
    assert_eq!(layer.handle().loads_in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn fresh_then_miss_after_ttl() {
    let source = Source::default();
    source.set(1, "a");
    let layer = layer(|b| b);
    let svc = layer.layer(source.clone());
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), "a");
    source.set(1, "b");
    advance(Duration::from_secs(9)).await;
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), "a");
    advance(Duration::from_secs(1)).await;
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), "b");
    assert_eq!(source.reads(), 2);
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_serves_stale_and_refreshes_once() {
    let source = Source::with(Duration::from_millis(100));
    source.set(1, "a");
    let layer = layer(|b| b.stale_while_revalidate(Duration::from_secs(5)));
    let svc = layer.layer(source.clone());
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), "a");
    source.set(1, "b");
    advance(Duration::from_secs(11)).await;
    for _ in 0..5 {
        assert_eq!(svc.clone().oneshot(1).await.unwrap(), "a", "stale, at once");
    }
    assert_eq!(layer.handle().stats().refreshes, 1);
    sleep(Duration::from_millis(200)).await;
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), "b");
    assert_eq!(source.reads(), 2);
    // Beyond the window: a plain miss.
    source.set(1, "c");
    advance(Duration::from_secs(16)).await;
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), "c");
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_covers_failures_and_open_breakers_within_bounds() {
    for reject in [false, true] {
        let source = Source {
            reject,
            ..Source::default()
        };
        source.set(1, "a");
        let layer = layer(|b| b.stale_if_error(Duration::from_secs(60)));
        let svc = layer.layer(source.clone());
        assert_eq!(svc.clone().oneshot(1).await.unwrap(), "a");
        source.failing.store(true, Ordering::SeqCst);
        advance(Duration::from_secs(30)).await;
        assert_eq!(svc.clone().oneshot(1).await.unwrap(), "a");
        assert_eq!(layer.handle().stats().stale_if_error, 1);
        advance(Duration::from_secs(41)).await; // 71 s: past TTL + 60 s
        let err = svc.clone().oneshot(1).await.unwrap_err();
        let load = err.downcast_ref::<LoadError>().expect("a LoadError");
        assert_eq!(Rejected::find(&*err).is_some(), reject, "{load}");
    }
}

#[tokio::test(start_paused = true)]
async fn not_found_is_cached_briefly() {
    let source = Source::default();
    let layer = layer(|b| b.negative(|v: &String| v == "none", Duration::from_secs(1)));
    let svc = layer.layer(source.clone());
    assert_eq!(svc.clone().oneshot(5).await.unwrap(), "none");
    assert_eq!(svc.clone().oneshot(5).await.unwrap(), "none");
    assert_eq!(source.reads(), 1);
    source.set(5, "five");
    advance(Duration::from_secs(1)).await;
    assert_eq!(svc.clone().oneshot(5).await.unwrap(), "five");
    assert!(!layer.handle().peek(None, 5).unwrap().is_negative());
}

#[tokio::test(start_paused = true)]
async fn uncacheable_values_are_not_stored() {
    let source = Source::default();
    let layer = layer(|b| b.cacheable(|v: &String| v != "none"));
    let svc = layer.layer(source.clone());
    svc.clone().oneshot(5).await.unwrap();
    svc.clone().oneshot(5).await.unwrap();
    assert_eq!(source.reads(), 2);
}

#[tokio::test(start_paused = true)]
async fn early_refresh_reloads_before_expiry() {
    let source = Source::with(Duration::from_secs(1));
    source.set(1, "a");
    let layer = layer(|b| b.early_refresh(1.0).seed(7));
    let svc = layer.layer(source.clone());
    svc.clone().oneshot(1).await.unwrap();
    source.set(1, "b");
    // Hits until expiry: XFetch starts a reload before the TTL ends, so no caller misses.
    let mut served_b = false;
    for _ in 0..100 {
        advance(Duration::from_millis(99)).await;
        let v = svc.clone().oneshot(1).await.unwrap();
        served_b |= v == "b";
    }
    assert!(served_b, "refreshed early");
    let s = layer.handle().stats();
    assert_eq!(s.misses, 1, "{s:?}");
    assert!(s.refreshes >= 1);
}

#[tokio::test(start_paused = true)]
async fn jitter_only_shortens_ttls() {
    let source = Source::default();
    let layer = layer(|b| b.jitter(0.5).seed(1));
    let svc = layer.layer(source.clone());
    let mut ttls = Vec::new();
    for k in 0..50u64 {
        svc.clone().oneshot(k).await.unwrap();
        let e = layer.handle().peek(None, k).unwrap();
        ttls.push(e.fresh_until() - e.stored_at());
    }
    assert!(
        ttls.iter()
            .all(|t| *t <= Duration::from_secs(10) && *t >= Duration::from_secs(5))
    );
    let distinct: std::collections::HashSet<_> = ttls.iter().collect();
    assert!(distinct.len() > 40, "spread out");
}

#[tokio::test(start_paused = true)]
async fn tenants_never_read_each_others_entries() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let inner = service_fn(move |req: http::Request<()>| {
        c.fetch_add(1, Ordering::SeqCst);
        let who = TenantId::of(&req)
            .map(|t| t.to_string())
            .unwrap_or_default();
        async move { Ok::<_, Infallible>(format!("{who}'s profile")) }
    });
    let layer = CacheLayer::builder("profiles")
        .store(MokaStore::<String, String>::builder().build())
        .key(key_fn(|r: &http::Request<()>| {
            Ok::<_, KeyError>(r.uri().path().to_owned())
        }))
        .require_tenant()
        .build()
        .unwrap();
    let svc = layer.layer(inner);
    let req = |tenant: Option<&str>| {
        let mut r = http::Request::get("/me").body(()).unwrap();
        if let Some(t) = tenant {
            r.extensions_mut().insert(TenantId::new(t).unwrap());
        }
        r
    };
    assert_eq!(
        svc.clone().oneshot(req(Some("a"))).await.unwrap(),
        "a's profile"
    );
    assert_eq!(
        svc.clone().oneshot(req(Some("b"))).await.unwrap(),
        "b's profile"
    );
    assert_eq!(
        svc.clone().oneshot(req(Some("a"))).await.unwrap(),
        "a's profile"
    );
    assert_eq!(
        svc.clone().oneshot(req(Some("b"))).await.unwrap(),
        "b's profile"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 2);
    // No tenant where one is required: passed through, never cached.
    svc.clone().oneshot(req(None)).await.unwrap();
    svc.clone().oneshot(req(None)).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 4);
    assert_eq!(layer.handle().stats().bypassed, 2);
}

#[tokio::test(start_paused = true)]
async fn invalidation_by_key_prefix_tag_and_all() {
    let source = Source::default();
    let layer = layer(|b| {
        b.tags(|k: &u64, _: &String| vec![if k.is_multiple_of(2) { "even" } else { "odd" }.into()])
    });
    let svc = layer.layer(source.clone());
    let h = layer.handle();
    for k in [1, 2, 3, 4, 10, 11] {
        svc.clone().oneshot(k).await.unwrap();
    }
    h.invalidate(None, 1).await.unwrap();
    assert!(h.peek(None, 1).is_none());
    h.invalidate_prefix(None, "1").await.unwrap();
    assert!(h.peek(None, 10).is_none() && h.peek(None, 11).is_none());
    assert!(h.peek(None, 2).is_some());
    h.invalidate_tag("even").await.unwrap();
    assert!(h.peek(None, 2).is_none() && h.peek(None, 4).is_none());
    assert!(h.peek(None, 3).is_some());
    h.invalidate_all().await.unwrap();
    assert!(h.peek(None, 3).is_none());
}

#[tokio::test(start_paused = true)]
async fn a_load_in_flight_during_a_write_never_stores_the_old_value() {
    // The read starts, reads "old" from the source and is still in flight when the write
    // lands and returns. Afterwards no read sees "old".
    let source = Source::with(Duration::from_secs(1));
    source.set(1, "old");
    let layer = layer(|b| b);
    let reads = layer.layer(source.clone());
    let s2 = source.clone();
    let writes = WriteThroughLayer::builder("writes")
        .cache(layer.handle())
        .key(key_fn(|(k, _): &(u64, String)| Ok::<_, KeyError>(*k)))
        .mode(WriteThroughMode::invalidate())
        .unscoped()
        .build()
        .unwrap()
        .layer(service_fn(move |(k, v): (u64, String)| {
            s2.set(k, &v);
            async move { Ok::<_, Infallible>(()) }
        }));

    let slow_read = tokio::spawn(reads.clone().oneshot(1));
    tokio::task::yield_now().await;
    writes.clone().oneshot((1, "new".to_owned())).await.unwrap();
    // The old load still answers its own caller with what it read...
    advance(Duration::from_secs(1)).await;
    assert_eq!(slow_read.await.unwrap().unwrap(), "old");
    // ...but did not store it, and a read after the write does not join it.
    let after = reads.clone().oneshot(1);
    advance(Duration::from_secs(1)).await;
    assert_eq!(after.await.unwrap(), "new");
    assert_eq!(reads.oneshot(1).await.unwrap(), "new");
}

#[tokio::test(start_paused = true)]
async fn write_through_update_and_failed_writes() {
    let source = Source::default();
    source.set(1, "old");
    let layer = layer(|b| b);
    let reads = layer.layer(source.clone());
    assert_eq!(reads.clone().oneshot(1).await.unwrap(), "old");
    let fail = Arc::new(AtomicBool::new(false));
    let (s2, f2) = (source.clone(), fail.clone());
    let writes = WriteThroughLayer::builder("writes")
        .cache(layer.handle())
        .key(key_fn(|(k, _): &(u64, String)| Ok::<_, KeyError>(*k)))
        .mode(WriteThroughMode::update(|saved: &String| {
            Some(saved.clone())
        }))
        .unscoped()
        .build()
        .unwrap()
        .layer(service_fn(move |(k, v): (u64, String)| {
            let (s2, f2) = (s2.clone(), f2.clone());
            async move {
                if f2.load(Ordering::SeqCst) {
                    return Err::<String, BoxError>("write refused".into());
                }
                s2.set(k, &v);
                Ok(v)
            }
        }));
    writes.clone().oneshot((1, "new".into())).await.unwrap();
    assert_eq!(reads.clone().oneshot(1).await.unwrap(), "new");
    assert_eq!(source.reads(), 1, "served from the updated cache");
    fail.store(true, Ordering::SeqCst);
    assert!(writes.oneshot((1, "newer".into())).await.is_err());
    assert_eq!(
        reads.oneshot(1).await.unwrap(),
        "new",
        "a failed write changes nothing"
    );
}

#[tokio::test]
async fn bad_config_is_refused() {
    let b = || {
        CacheLayer::builder("x")
            .store(MokaStore::<u64, String>::builder().build())
            .unscoped()
    };
    assert!(b().ttl(Duration::ZERO).build().is_err());
    assert!(b().jitter(1.0).build().is_err());
    assert!(b().early_refresh(f64::NAN).build().is_err());
    assert!(b().negative(|_| true, Duration::ZERO).build().is_err());
    assert!(
        CacheLayer::builder("")
            .store(MokaStore::<u64, String>::builder().build())
            .build()
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn the_hit_path_is_immediate() {
    let source = Source::default();
    let layer = layer(|b| b);
    let mut svc = layer.layer(source);
    svc.ready().await.unwrap().call(3).await.unwrap();
    let t = Instant::now();
    let fut = svc.ready().await.unwrap().call(3);
    assert_eq!(format!("{fut:?}"), "ResponseFuture::Hit");
    assert_eq!(fut.await.unwrap(), "none");
    assert_eq!(t.elapsed(), Duration::ZERO);
    assert!((layer.handle().stats().hit_ratio() - 0.5).abs() < 1e-9);
}
