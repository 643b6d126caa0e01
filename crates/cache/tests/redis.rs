//! The Redis tiers against a real Redis: the one `scripts/test` starts, and, for the outage
//! test, a private `redis-server` this test starts and kills. Skipped with a printed reason
//! under plain `cargo test` when no Redis is configured; failing under `scripts/test`.
#![cfg(feature = "redis")]

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use tower::{Layer, ServiceExt, service_fn};
use tower_patterns_cache::{
    CacheLayer,
    store::{
        Store,
        redis::{RedisStore, TieredStore},
    },
};
use tower_patterns_core::{
    KeyError,
    key::key_fn,
    observe::{Health, StateHandle},
    tenant::TenantId,
};
use tower_patterns_testkit::{Server, server_url};

fn unique(name: &str) -> String {
    format!("{name}-{}-{}", std::process::id(), rand_suffix())
}

fn rand_suffix() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(0u8) % 1_000_000
}

/// Two instances' tiered stores over one Redis, both subscribed.
async fn two_instances(
    url: &str,
    name: &str,
) -> (TieredStore<u64, String>, TieredStore<u64, String>) {
    let make = || TieredStore::new(RedisStore::builder(name).url(url).build().unwrap(), 1000);
    let (a, b) = (make(), make());
    tokio::time::timeout(Duration::from_secs(5), async {
        a.wait_until_subscribed().await;
        b.wait_until_subscribed().await;
    })
    .await
    .expect("both instances subscribe");
    (a, b)
}

/// Waits up to 5 s (real time: a real server is on the other end) for `f` to hold.
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    for _ in 0..500 {
        if f().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for: {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_l2_and_invalidate_each_others_l1() {
    let Some(url) = server_url(Server::Redis) else {
        return;
    };
    let (a, b) = two_instances(&url, &unique("two-tier")).await;

    let loads = Arc::new(AtomicUsize::new(0));
    let make = |store: TieredStore<u64, String>, loads: Arc<AtomicUsize>| {
        let layer = CacheLayer::builder("users")
            .store(store)
            .key(key_fn(|k: &u64| Ok::<_, KeyError>(*k)))
            .unscoped()
            .ttl(Duration::from_secs(60))
            .build()
            .unwrap();
        let svc = layer.layer(service_fn(move |k: u64| {
            loads.fetch_add(1, Ordering::SeqCst);
            async move { Ok::<_, std::convert::Infallible>(format!("user {k}")) }
        }));
        (layer, svc)
    };
    let (la, sa) = make(a.clone(), loads.clone());
    let (lb, sb) = make(b.clone(), loads.clone());

    // A loads and stores in L1 and L2; B finds it in L2 (no second load) and keeps it in L1.
    // (B first hears A's store: a Redis hit read while a change of its key arrives is
    // answered but not kept.)
    let seen = b.invalidations_applied();
    assert_eq!(sa.clone().oneshot(1).await.unwrap(), "user 1");
    tokio::time::timeout(Duration::from_secs(5), b.wait_for_invalidations(seen + 1))
        .await
        .expect("B hears A's store");
    assert_eq!(sb.clone().oneshot(1).await.unwrap(), "user 1");
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert!(
        b.l1()
            .peek(&tower_patterns_cache::ScopedKey::new(None, 1))
            .is_some()
    );

    // A writes a new value: B's L1 drops the old one and reads the new one from L2.
    let seen = b.invalidations_applied();
    la.handle()
        .put(None, 1, "user 1 (renamed)".into())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(5), b.wait_for_invalidations(seen + 1))
        .await
        .expect("B hears A's write");
    assert_eq!(sb.clone().oneshot(1).await.unwrap(), "user 1 (renamed)");

    // Invalidation by key, by prefix (within a tenant) and by tag, from B this time.
    let seen = a.invalidations_applied();
    lb.handle().invalidate(None, 1).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), a.wait_for_invalidations(seen + 1))
        .await
        .unwrap();
    assert!(la.handle().peek(None, 1).is_none());
    assert_eq!(sa.clone().oneshot(1).await.unwrap(), "user 1");
    assert_eq!(loads.load(Ordering::SeqCst), 2);

    let t = TenantId::new("acme").unwrap();
    let key = tower_patterns_cache::ScopedKey::new(Some(t.clone()), 77u64);
    let entry = tower_patterns_cache::Entry::new(
        "x".to_owned(),
        tokio::time::Instant::now(),
        Duration::from_secs(60),
        Duration::ZERO,
    )
    .with_tags(vec!["team".into()]);
    a.put(key.clone(), entry.clone()).await.unwrap();
    assert!(b.get(&key).await.unwrap().is_some());
    let seen = b.invalidations_applied();
    a.invalidate_prefix(Some(&t), "7").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), b.wait_for_invalidations(seen + 1))
        .await
        .unwrap();
    assert!(b.l1().peek(&key).is_none());
    assert!(b.get(&key).await.unwrap().is_none(), "gone from L2 too");

    a.put(key.clone(), entry).await.unwrap();
    assert!(b.get(&key).await.unwrap().is_some());
    let seen = b.invalidations_applied();
    a.invalidate_tag("team").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), b.wait_for_invalidations(seen + 1))
        .await
        .unwrap();
    assert!(b.get(&key).await.unwrap().is_none());
    assert_eq!(la.handle().report().health, Health::Ready);
    a.invalidate_all().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_entry_is_a_typed_error_and_the_request_still_succeeds() {
    let Some(url) = server_url(Server::Redis) else {
        return;
    };
    let name = unique("corrupt");
    let store = RedisStore::<u64, String>::builder(name.as_str())
        .url(&url)
        .build()
        .unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut c = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SET")
        .arg(format!("tp:cache:{name}:k:-:5"))
        .arg("{not json")
        .query_async(&mut c)
        .await
        .unwrap();
    let err = store
        .get(&tower_patterns_cache::ScopedKey::new(None, 5))
        .await
        .unwrap_err();
    assert_eq!((err.store(), err.op()), ("redis", "decode"));
    let layer = CacheLayer::builder("c")
        .store(store)
        .key(key_fn(|k: &u64| Ok::<_, KeyError>(*k)))
        .unscoped()
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|k: u64| async move {
        Ok::<_, std::convert::Infallible>(k.to_string())
    }));
    assert_eq!(svc.clone().oneshot(5).await.unwrap(), "5");
    // The load overwrote the corrupt entry.
    assert_eq!(svc.oneshot(5).await.unwrap(), "5");
    assert_eq!(layer.handle().stats().hits, 1);
    layer.handle().invalidate_all().await.unwrap();
}

struct OwnRedis {
    child: Child,
    port: u16,
}

impl OwnRedis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server runs (scripts/test installs it)");
        Self { child, port }
    }
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_redis_goes_away_l1_answers_and_no_request_fails() {
    // Needs a Redis of its own to kill: only where the test command provides Redis.
    let Some(_) = server_url(Server::Redis) else {
        return;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut redis = OwnRedis::start(port);
    let store = TieredStore::new(
        RedisStore::<u64, String>::builder("outage")
            .url(redis.url())
            .timeout(Duration::from_millis(200))
            .pause_after_failure(Duration::from_millis(100))
            .build()
            .unwrap(),
        1000,
    );
    tokio::time::timeout(Duration::from_secs(10), store.wait_until_subscribed())
        .await
        .expect("subscribed to the private Redis");
    let loads = Arc::new(AtomicUsize::new(0));
    let l = loads.clone();
    let layer = CacheLayer::builder("outage")
        .store(store.clone())
        .key(key_fn(|k: &u64| Ok::<_, KeyError>(*k)))
        .unscoped()
        .ttl(Duration::from_secs(60))
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(move |k: u64| {
        l.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, std::convert::Infallible>(format!("v{k}")) }
    }));
    assert_eq!(svc.clone().oneshot(1).await.unwrap(), "v1");
    assert_eq!(layer.handle().report().health, Health::Ready);

    redis.kill();
    // Hits come from L1; misses load from the source; nothing fails.
    for _ in 0..20 {
        assert_eq!(svc.clone().oneshot(1).await.unwrap(), "v1");
        assert_eq!(svc.clone().oneshot(2).await.unwrap(), "v2");
    }
    assert_eq!(
        loads.load(Ordering::SeqCst),
        2,
        "key 2 was kept in L1 though L2 failed"
    );
    let stats = layer.handle().stats();
    assert!(stats.store_errors > 0, "{stats:?}");
    eventually("the outage is reported", async || {
        layer.handle().report().health == Health::Degraded
    })
    .await;

    // Redis comes back: the subscription returns (clearing L1) and the store heals.
    let _redis = OwnRedis::start(port);
    eventually("resubscribed", async || store.is_subscribed()).await;
    let mut key = 100;
    eventually("healthy again", async || {
        key += 1; // a miss each time, so Redis is asked
        let _ = svc.clone().oneshot(key).await.unwrap();
        layer.handle().report().health == Health::Ready
    })
    .await;
    assert!(
        layer.handle().peek(None, 1).is_none(),
        "L1 was cleared on resubscription"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_in_flight_on_one_instance_does_not_undo_another_instances_write() {
    let Some(url) = server_url(Server::Redis) else {
        return;
    };
    let name = unique("race");
    let (a, b) = two_instances(&url, &name).await;
    // A's source reads "old", then waits for the gate before answering.
    let gate = Arc::new(tokio::sync::Notify::new());
    let g = gate.clone();
    let layer_a = CacheLayer::builder("race")
        .store(a.clone())
        .key(key_fn(|k: &u64| Ok::<_, KeyError>(*k)))
        .unscoped()
        .build()
        .unwrap();
    let reads_a = layer_a.layer(service_fn(move |_k: u64| {
        let g = g.clone();
        async move {
            let v = "old".to_owned();
            g.notified().await;
            Ok::<_, std::convert::Infallible>(v)
        }
    }));
    let layer_b = CacheLayer::builder("race")
        .store(b.clone())
        .key(key_fn(|k: &u64| Ok::<_, KeyError>(*k)))
        .unscoped()
        .build()
        .unwrap();

    let slow = tokio::spawn(reads_a.clone().oneshot(9));
    eventually("A's load is in flight", async || {
        layer_a.handle().loads_in_flight() == 1
    })
    .await;
    let seen = a.invalidations_applied();
    layer_b.handle().put(None, 9, "new".into()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), a.wait_for_invalidations(seen + 1))
        .await
        .unwrap();
    gate.notify_one();
    assert_eq!(
        slow.await.unwrap().unwrap(),
        "old",
        "its own caller gets what it read"
    );
    let key = tower_patterns_cache::ScopedKey::new(None, 9u64);
    let l2 = RedisStore::<u64, String>::builder(name.as_str())
        .url(&url)
        .build()
        .unwrap();
    assert_eq!(
        l2.get(&key).await.unwrap().unwrap().value(),
        "new",
        "L2 keeps B's write"
    );
    assert!(a.l1().peek(&key).is_none_or(|e| e.value() == "new"));
    a.invalidate_all().await.unwrap();
}
