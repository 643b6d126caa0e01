//! What the benchmarks share: the bare inner service, direct polling without a runtime, and
//! the contended runner (64 tasks on a 2-worker tokio runtime).

#![allow(dead_code, unreachable_pub, unused_macros, unused_imports)]

use std::{
    convert::Infallible,
    future::{Future, Ready, ready},
    pin::pin,
    task::{Context, Poll, Waker},
    time::{Duration, Instant},
};

use tower::{Service, ServiceExt};

pub mod latency;
pub mod postgres;

/// The inner service: answers at once.
#[derive(Clone, Copy)]
pub struct Bare;

impl Service<u64> for Bare {
    type Response = u64;
    type Error = Infallible;
    type Future = Ready<Result<u64, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: u64) -> Self::Future {
        ready(Ok(req))
    }
}

pub fn poll_to_end<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
            return out;
        }
    }
}

pub fn one_call<S>(svc: &mut S, i: u64)
where
    S: Service<u64>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    while svc.poll_ready(&mut cx).is_pending() {}
    std::hint::black_box(poll_to_end(svc.call(std::hint::black_box(i))).unwrap());
}

/// [`one_call`] with any request.
pub fn one_call_with<S, R>(svc: &mut S, req: R)
where
    S: Service<R>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    while svc.poll_ready(&mut cx).is_pending() {}
    std::hint::black_box(poll_to_end(svc.call(std::hint::black_box(req))).unwrap());
}

pub const TASKS: u64 = 64;

pub fn contended_run<S>(rt: &tokio::runtime::Runtime, svc: &S, iters: u64) -> Duration
where
    S: Service<u64> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
{
    contended_run_with(rt, svc, iters, TASKS)
}

/// `iters` calls spread over `tasks` tasks on `rt`; the elapsed time.
pub fn contended_run_with<S>(
    rt: &tokio::runtime::Runtime,
    svc: &S,
    iters: u64,
    tasks: u64,
) -> Duration
where
    S: Service<u64> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
{
    let per_task = iters.div_ceil(tasks);
    let svc = svc.clone();
    rt.block_on(async move {
        let start = Instant::now();
        let tasks: Vec<_> = (0..tasks)
            .map(|_| {
                let mut svc = svc.clone();
                tokio::spawn(async move {
                    for i in 0..per_task {
                        let ready = svc.ready().await.unwrap();
                        std::hint::black_box(ready.call(i).await.unwrap());
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        start.elapsed()
    })
}

/// The 2-worker runtime of the contended benchmarks.
pub fn two_workers() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Defines the two groups every benchmark runs, `single` (ns per call, one task, polled
/// directly) and `contended` (calls/s with 1, 2 and 64 tasks on a 2-worker runtime), over the
/// services that `$each_peer!(case)` lists.
macro_rules! bench_groups {
    ($prefix:literal, $each_peer:ident) => {
        support::bench_single!($prefix, $each_peer);
        support::bench_contended!($prefix, $each_peer);
    };
}

/// The `single` group of [`bench_groups`] alone (for services that are not `Clone`).
macro_rules! bench_single {
    ($prefix:literal, $each_peer:ident) => {
        fn single(c: &mut criterion::Criterion) {
            // A runtime context for layers that create timers (tower's `Timeout`); the calls
            // are still polled directly, never by the runtime.
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            let _context = rt.enter();
            let mut group = c.benchmark_group(concat!($prefix, "_single"));
            macro_rules! case {
                ($name:literal, $svc:expr) => {{
                    let mut svc = $svc;
                    let mut i = 0u64;
                    group.bench_function($name, |b| {
                        b.iter(|| {
                            i = i.wrapping_add(1);
                            support::one_call(&mut svc, i)
                        })
                    });
                }};
            }
            $each_peer!(case);
            group.finish();
        }
    };
}

/// The `contended` group of [`bench_groups`].
macro_rules! bench_contended {
    ($prefix:literal, $each_peer:ident) => {
        fn contended(c: &mut criterion::Criterion) {
            let rt = support::two_workers();
            let mut group = c.benchmark_group(concat!($prefix, "_contended"));
            group.throughput(criterion::Throughput::Elements(1));
            group.sample_size(20);
            macro_rules! case {
                ($name:literal, $svc:expr) => {{
                    let svc = $svc;
                    for tasks in [1u64, 2, 64] {
                        group.bench_function(
                            criterion::BenchmarkId::new($name, format!("{tasks}_tasks_2_workers")),
                            |b| {
                                b.iter_custom(|iters| {
                                    support::contended_run_with(&rt, &svc, iters, tasks)
                                })
                            },
                        );
                    }
                }};
            }
            $each_peer!(case);
            group.finish();
        }
    };
}

pub(crate) use {bench_contended, bench_groups, bench_single};

/// The criterion settings every benchmark uses (the method in `docs/performance.md`):
/// 1 s warm-up, 3 s measurement.
pub fn config() -> criterion::Criterion {
    criterion::Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}
