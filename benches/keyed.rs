//! Per-key lookups on the hot path of keyed layers: `tower_patterns::keyed::KeyedMap` (a thin
//! layer over moka) beside moka's cache used directly and a `Mutex<HashMap>`, and the cost of
//! taking a key from a header.
//!
//! `cargo bench --bench keyed`

use std::{
    collections::HashMap,
    hint::black_box,
    sync::{Arc, Mutex},
};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderName, Request};
use tower_patterns::{
    key::{AsciiKey, HeaderKey, KeyExtractor},
    keyed::KeyedMap,
};

fn keys() -> Vec<AsciiKey> {
    (0..64)
        .map(|i| AsciiKey::try_from(format!("tenant-{i}").as_str()).unwrap())
        .collect()
}

fn lookup(c: &mut Criterion) {
    let keys = keys();
    let mut group = c.benchmark_group("keyed_lookup_hit");

    let ours: KeyedMap<AsciiKey, Arc<u64>> = KeyedMap::builder().build().unwrap();
    let moka: moka::sync::Cache<AsciiKey, Arc<u64>> =
        moka::sync::Cache::builder().max_capacity(10_000).build();
    let mutex: Mutex<HashMap<AsciiKey, Arc<u64>>> = Mutex::new(HashMap::new());
    for (i, k) in keys.iter().enumerate() {
        ours.insert(k.clone(), Arc::new(i as u64));
        moka.insert(k.clone(), Arc::new(i as u64));
        mutex.lock().unwrap().insert(k.clone(), Arc::new(i as u64));
    }

    let mut i = 0usize;
    group.bench_function("tower_patterns_keyed_map", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(ours.get_or_insert_with(keys[i].clone(), || Arc::new(0)))
        })
    });
    group.bench_function("moka_sync_cache", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            black_box(moka.get_with(keys[i].clone(), || Arc::new(0)))
        })
    });
    group.bench_function("std_mutex_hashmap", |b| {
        b.iter(|| {
            i = (i + 1) % keys.len();
            let map = mutex.lock().unwrap();
            black_box(map.get(&keys[i]).cloned())
        })
    });
    group.finish();
}

fn extract(c: &mut Criterion) {
    let key = HeaderKey::new(HeaderName::from_static("x-tenant-id"));
    let req = Request::builder()
        .header("x-tenant-id", "tenant-42")
        .body(())
        .unwrap();
    c.bench_function("keyed_header_key_extract", |b| {
        b.iter(|| black_box(key.extract(black_box(&req)).unwrap()))
    });
}

criterion_group!(benches, lookup, extract);
criterion_main!(benches);
