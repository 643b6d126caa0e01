//! Shard routing: the cost of placing a key per strategy (ns per key), the router's cost per
//! request beside tower's `Steer` with a picker (one task, and 1, 2 and 64 tasks on 2 workers), and
//! scatter-gather over 16 shards.
//!
//! `cargo bench --features shard --bench shard`

mod support;

use std::{convert::Infallible, hint::black_box};

use criterion::{Criterion, criterion_group, criterion_main};
use support::{Bare, one_call};
use tower::{Service, ServiceExt, steer::Steer};
use tower_patterns::{
    KeyError,
    key::key_fn,
    shard::{
        Concat, Directory, Geo, GeoKey, Jump, Modulo, Range, Rendezvous, Ring, ScatterGather,
        ShardRouter, Strategy,
    },
};

fn placement(c: &mut Criterion) {
    let mut group = c.benchmark_group("shard_placement_16");
    let keys: Vec<String> = (0..1_024).map(|i| format!("user-{i}")).collect();
    macro_rules! strategy {
        ($name:literal, $s:expr) => {{
            let s = $s;
            let mut i = 0;
            group.bench_function($name, |b| {
                b.iter(|| {
                    i = (i + 1) % keys.len();
                    black_box(s.route(black_box(keys[i].as_str())))
                })
            });
        }};
    }
    strategy!("modulo", Modulo::new(16));
    strategy!("jump", Jump::new(16));
    strategy!("rendezvous", Rendezvous::new(16));
    strategy!("ring_160_vnodes", Ring::new(16, 160).unwrap());
    strategy!(
        "range",
        Range::new((1..16).map(|i| i << 60).collect()).unwrap()
    );
    strategy!("directory", Directory::new(16).unwrap());
    let geo = Geo::new(vec![("eu", 0..8), ("us", 8..16)], "us").unwrap();
    let geo_keys: Vec<GeoKey<u64>> = (0..1_024)
        .map(|i| GeoKey {
            region: if i % 2 == 0 { "eu" } else { "us" }.into(),
            key: i,
        })
        .collect();
    let mut i = 0;
    group.bench_function("geo", |b| {
        b.iter(|| {
            i = (i + 1) % geo_keys.len();
            black_box(geo.route(black_box(&geo_keys[i])))
        })
    });
    group.finish();
}

fn routing(c: &mut Criterion) {
    let mut group = c.benchmark_group("shard_route_request_16");
    let shards = vec![Bare; 16];
    let mut bare = Bare;
    let mut i = 0u64;
    group.bench_function("bare", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            one_call(&mut bare, i)
        })
    });
    let mut steer = Steer::new(shards.clone(), |req: &u64, svcs: &[Bare]| {
        Jump::new(svcs.len()).route(req).shard()
    });
    group.bench_function("tower_steer_jump", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            one_call(&mut steer, i)
        })
    });
    let mut router = ShardRouter::builder("bench")
        .shards(shards)
        .strategy(Jump::new(16))
        .key(key_fn(|u: &u64| Ok::<_, KeyError>(*u)))
        .build()
        .unwrap();
    group.bench_function("tower_patterns_router_jump", |b| {
        b.iter(|| {
            i = i.wrapping_add(1);
            one_call(&mut router, i)
        })
    });
    group.finish();
}

/// Routing under contention: 1, 2 and 64 tasks on a 2-worker runtime, beside `Steer`.
fn routing_contended(c: &mut Criterion) {
    let rt = support::two_workers();
    let mut group = c.benchmark_group("shard_contended");
    group.throughput(criterion::Throughput::Elements(1));
    group.sample_size(20);
    let steer = Steer::new(vec![Bare; 16], |req: &u64, svcs: &[Bare]| {
        Jump::new(svcs.len()).route(req).shard()
    });
    let router = ShardRouter::builder("bench")
        .shards(vec![Bare; 16])
        .strategy(Jump::new(16))
        .key(key_fn(|u: &u64| Ok::<_, KeyError>(*u)))
        .build()
        .unwrap();
    for tasks in [1u64, 2, 64] {
        let id = |name| criterion::BenchmarkId::new(name, format!("{tasks}_tasks_2_workers"));
        group.bench_function(id("bare"), |b| {
            b.iter_custom(|iters| support::contended_run_with(&rt, &Bare, iters, tasks))
        });
        group.bench_function(id("tower_steer_jump"), |b| {
            b.iter_custom(|iters| support::contended_run_with(&rt, &steer, iters, tasks))
        });
        group.bench_function(id("tower_patterns_router_jump"), |b| {
            b.iter_custom(|iters| support::contended_run_with(&rt, &router, iters, tasks))
        });
    }
    group.finish();
}

/// A shard answering a list, for the scatter-gather overhead.
#[derive(Clone, Copy)]
struct ListShard;

impl Service<u64> for ListShard {
    type Response = Vec<u64>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Vec<u64>, Infallible>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Infallible>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, q: u64) -> Self::Future {
        std::future::ready(Ok(vec![q]))
    }
}

fn scatter(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut group = c.benchmark_group("shard_scatter_gather_16");
    group.bench_function("sequential_16_calls", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut all = Vec::new();
                for _ in 0..16 {
                    all.extend(ListShard.oneshot(black_box(1)).await.unwrap());
                }
                black_box(all)
            })
        })
    });
    let sg = ScatterGather::new(vec![ListShard; 16], Concat);
    group.bench_function("tower_patterns_scatter_gather", |b| {
        b.iter(|| rt.block_on(async { black_box(sg.clone().oneshot(black_box(1)).await.unwrap()) }))
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = support::config();
    targets = placement, routing, routing_contended, scatter
}
criterion_main!(benches);
