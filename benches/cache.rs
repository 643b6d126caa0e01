//! Cache hit path, side by side in one run: the bare service, the raw concurrent map reads a
//! cache layer cannot beat (moka `get`: the sync cache with no expiry and with per-entry
//! expiry, and the future cache; `quick_cache` `get`; a `DashMap` read, the sharded map), this
//! crate's cache-aside layer on its `quick_cache` store (`tower_patterns`) and on its moka
//! store (`tower_patterns_moka`), and tower-resilience 0.13's cache layer. Keys cycle over 1,024
//! entries loaded before measuring, so every measured call is a hit.
//!
//! - `cache_write`: write-through and write-behind beside the write and a store insert by hand
//!   and a bounded `mpsc` send.
//! - `cache_single`: ns per call, one task, polled directly (no runtime in the loop).
//! - `cache_contended`: calls/s at 1, 2 and 64 tasks on a 2-worker tokio runtime.
//!
//! `cargo bench --features cache --bench cache`

mod support;

use std::{
    convert::Infallible,
    future::{Future, Ready, ready},
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use criterion::{criterion_group, criterion_main};
use support::Bare;
use tower::{Layer, Service};
use tower_patterns::{
    KeyError,
    cache::CacheLayer,
    cache::store::{MokaStore, QuickCacheStore},
    key::key_fn,
};

const KEYS: u64 = 1_024;

/// Raw moka `sync::Cache::get` behind a `Service`, answering at once.
#[derive(Clone)]
struct MokaSync(moka::sync::Cache<u64, u64>);

impl Service<u64> for MokaSync {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, k: u64) -> Self::Future {
        ready(Ok(self.0.get(&(k % KEYS)).unwrap_or(k)))
    }
}

/// Raw moka `future::Cache::get` behind a `Service` (its future boxed, as a service must name
/// its future type; the allocation is part of what using the future cache in a layer costs).
#[derive(Clone)]
struct BoxedGet(moka::future::Cache<u64, u64>);

impl Service<u64> for BoxedGet {
    type Response = u64;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<u64, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, k: u64) -> Self::Future {
        let cache = self.0.clone();
        Box::pin(async move { Ok(cache.get(&(k % KEYS)).await.unwrap_or(k)) })
    }
}

/// Raw `quick_cache::sync::Cache::get` behind a `Service`.
#[derive(Clone)]
struct QuickGet(std::sync::Arc<quick_cache::sync::Cache<u64, u64>>);

impl Service<u64> for QuickGet {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, k: u64) -> Self::Future {
        ready(Ok(self.0.get(&(k % KEYS)).unwrap_or(k)))
    }
}

fn quick_get() -> QuickGet {
    let c = quick_cache::sync::Cache::new(10_000);
    for k in 0..KEYS {
        c.insert(k, k);
    }
    QuickGet(std::sync::Arc::new(c))
}

/// A `DashMap` read (a sharded `RwLock<HashMap>`) behind a `Service`: no eviction at all.
#[derive(Clone)]
struct DashGet(std::sync::Arc<dashmap::DashMap<u64, u64>>);

impl Service<u64> for DashGet {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, k: u64) -> Self::Future {
        ready(Ok(self.0.get(&(k % KEYS)).map_or(k, |v| *v)))
    }
}

fn dash_get() -> DashGet {
    let c = dashmap::DashMap::new();
    for k in 0..KEYS {
        c.insert(k, k);
    }
    DashGet(std::sync::Arc::new(c))
}

fn moka_sync() -> MokaSync {
    // No expiry configured: the fastest moka get there is.
    let c = moka::sync::Cache::builder().max_capacity(10_000).build();
    for k in 0..KEYS {
        c.insert(k, k);
    }
    MokaSync(c)
}

/// Per-entry expiry, as a cache with per-entry TTLs needs: the like-for-like baseline.
struct PerEntry;

impl moka::Expiry<u64, u64> for PerEntry {
    fn expire_after_create(&self, _: &u64, _: &u64, _: std::time::Instant) -> Option<Duration> {
        Some(Duration::from_secs(3600))
    }
}

fn moka_sync_expiry() -> MokaSync {
    let c = moka::sync::Cache::builder()
        .max_capacity(10_000)
        .expire_after(PerEntry)
        .build();
    for k in 0..KEYS {
        c.insert(k, k);
    }
    MokaSync(c)
}

fn moka_future() -> BoxedGet {
    let c = moka::future::Cache::builder().max_capacity(10_000).build();
    for k in 0..KEYS {
        support::poll_to_end(c.insert(k, k));
    }
    BoxedGet(c)
}

fn by_key(k: &u64) -> Result<u64, KeyError> {
    Ok(*k % KEYS)
}

/// Loads every key once so that measured calls are hits.
fn warmed<S>(mut svc: S) -> S
where
    S: Service<u64>,
    S::Error: std::fmt::Debug,
{
    for k in 0..KEYS {
        support::one_call(&mut svc, k);
    }
    svc
}

/// Invokes `$case!(name, service)` for every service compared.
macro_rules! each_peer {
    ($case:ident) => {
        $case!("bare", Bare);
        $case!("moka_sync_get", moka_sync());
        $case!("moka_sync_get_expiry", moka_sync_expiry());
        $case!("moka_future_get", moka_future());
        $case!("quick_cache_get", quick_get());
        $case!("dashmap_get", dash_get());
        $case!(
            "tower_patterns",
            warmed(
                CacheLayer::builder("bench")
                    .store(QuickCacheStore::builder().max_entries(10_000).build())
                    .key(key_fn(by_key as fn(&u64) -> Result<u64, KeyError>))
                    .unscoped()
                    .ttl(Duration::from_secs(3600))
                    .build()
                    .unwrap()
                    .layer(Bare)
            )
        );
        $case!(
            "tower_patterns_moka",
            warmed(
                CacheLayer::builder("bench")
                    .store(MokaStore::builder().max_entries(10_000).build())
                    .key(key_fn(by_key as fn(&u64) -> Result<u64, KeyError>))
                    .unscoped()
                    .ttl(Duration::from_secs(3600))
                    .build()
                    .unwrap()
                    .layer(Bare)
            )
        );
        $case!(
            "tower_resilience_0_13",
            warmed(
                tower_resilience::cache::CacheLayer::builder()
                    .max_size(10_000)
                    .ttl(Duration::from_secs(3600))
                    .key_extractor(|k: &u64| *k % KEYS)
                    .build()
                    .unwrap()
                    .layer(Bare)
            )
        );
    };
}

support::bench_groups!("cache", each_peer);

/// A write of `(key, value)` to the source of record (answers the stored value at once).
#[derive(Clone, Copy)]
struct Source;

impl Service<(u64, u64)> for Source {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (_, v): (u64, u64)) -> Self::Future {
        ready(Ok(v))
    }
}

/// The write then the cache insert by hand: what a write-through layer replaces.
#[derive(Clone)]
struct WriteThenInsert(QuickCacheStore<u64, u64>);

impl Service<(u64, u64)> for WriteThenInsert {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, (k, v): (u64, u64)) -> Self::Future {
        let now = tokio::time::Instant::now();
        self.0.insert(
            tower_patterns::cache::ScopedKey::new(None, k),
            tower_patterns::cache::Entry::new(v, now, Duration::from_secs(3600), Duration::ZERO),
        );
        ready(Ok(v))
    }
}

/// The cache the write benchmarks update.
type U64Cache = CacheLayer<
    tower_patterns::key::KeyFn<fn(&u64) -> Result<u64, KeyError>>,
    tower_patterns::cache::Unscoped,
    u64,
    u64,
    QuickCacheStore<u64, u64>,
>;

fn cache_of_u64() -> U64Cache {
    CacheLayer::builder("bench_writes")
        .store(QuickCacheStore::builder().max_entries(10_000).build())
        .key(key_fn(by_key as fn(&u64) -> Result<u64, KeyError>))
        .unscoped()
        .ttl(Duration::from_secs(3600))
        .build()
        .unwrap()
}

fn write_key(w: &(u64, u64)) -> Result<u64, KeyError> {
    Ok(w.0)
}

/// Writes, one task: write-through (the source, then the cache updated) beside the write and
/// a store insert by hand; write-behind (the cache updated, the write queued and coalesced
/// per key, flushed in batches by its worker on the runtime) beside a bounded tokio `mpsc`
/// send drained by a task.
fn writes(c: &mut criterion::Criterion) {
    let rt = support::two_workers();
    let _context = rt.enter();
    let mut group = c.benchmark_group("cache_write");
    let mut i = 0u64;
    let mut bare = Source;
    group.bench_function("bare", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            support::poll_to_end(bare.call((i % KEYS, i)))
        })
    });
    let mut by_hand = WriteThenInsert(QuickCacheStore::builder().max_entries(10_000).build());
    group.bench_function("write_then_quick_cache_insert", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            support::poll_to_end(by_hand.call((i % KEYS, i)))
        })
    });
    let cache = cache_of_u64();
    let mut through = tower_patterns::cache::WriteThroughLayer::builder("bench_through")
        .cache(cache.handle())
        .key(key_fn(
            write_key as fn(&(u64, u64)) -> Result<u64, KeyError>,
        ))
        .mode(tower_patterns::cache::WriteThroughMode::update(
            |v: &u64| Some(*v),
        ))
        .unscoped()
        .build()
        .unwrap()
        .layer(Source);
    group.bench_function("tower_patterns_write_through", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            support::one_call_with(&mut through, (i % KEYS, i))
        })
    });
    let behind_cache = cache_of_u64();
    let writer = tower::service_fn(
        |_batch: Vec<(tower_patterns::cache::ScopedKey<u64>, u64)>| {
            std::future::ready(Ok::<_, Infallible>(()))
        },
    );
    let (mut behind, _handle) = tower_patterns::cache::WriteBehind::builder("bench_behind")
        .cache(behind_cache.handle())
        .writer(writer)
        .build()
        .unwrap();
    group.bench_function("tower_patterns_write_behind", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            support::one_call_with(&mut behind, (None, i % KEYS, i))
        })
    });
    let (tx, mut rx) = tokio::sync::mpsc::channel::<(u64, u64)>(10_000);
    rt.spawn(async move { while rx.recv().await.is_some() {} });
    group.bench_function("tokio_mpsc_send", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            support::poll_to_end(tx.send((i % KEYS, i))).unwrap()
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = support::config();
    targets = single, contended, writes
}
criterion_main!(benches);
