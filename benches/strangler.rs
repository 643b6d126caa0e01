//! The strangler fig's cost per request, side by side in one run.
//!
//! Every request is a `GET /api/users/{n}` from one of 1,024 users (the user in `x-user`),
//! built per call from prebuilt parts; both sides answer at once.
//!
//! - `bare_route`: the legacy service alone (the request's cost without any choice);
//! - `tower_steer_prefix`: tower's `Steer` choosing a side by the path prefix, the nearest
//!   built-in (no stickiness, no table, no handle);
//! - `tower_patterns_legacy_mode`: our layer, the route in legacy mode (a table lookup and an
//!   atomic count);
//! - `tower_patterns_split_50`: a sticky 50/50 split (the key's XXH3 bucket on top);
//! - `tower_patterns_split_50_ten_routes`: the same behind nine other prefixes;
//! - `tower_patterns_ramped_split`: a split with a ramp (the answer's latency recorded).
//!
//! `strangler_shadow`: a request answered and read to the end on a 2-worker runtime, by
//! legacy alone and in shadow mode (the copy, the tee and the comparison on the other worker).
//!
//! `cargo bench --features full --bench strangler`

mod support;

use std::{
    convert::Infallible,
    future::{Ready, ready},
    task::{Context, Poll},
    time::{Duration, Instant},
};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main};
use http::{HeaderName, HeaderValue, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt, steer::Steer};
use tower_patterns::{
    key::HeaderKey,
    strangler::{Mode, Ramp, Route, Shadow, Share, StranglerLayer, compare::Comparator},
};

type Body = Full<Bytes>;

const USERS: usize = 1024;

/// A side: a small JSON answer at once.
#[derive(Clone, Copy)]
struct Side;

impl Service<Request<Body>> for Side {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Ready<Result<Response<Body>, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Request<Body>) -> Self::Future {
        ready(Ok(Response::new(Full::new(Bytes::from_static(
            br#"{"id":7,"name":"Ada"}"#,
        )))))
    }
}

/// Turns the benchmark's `u64` into a request from one of the users.
#[derive(Clone)]
struct Requests<S> {
    inner: S,
    users: std::sync::Arc<Vec<(HeaderValue, Uri)>>,
}

fn requests<S>(inner: S) -> Requests<S> {
    let users = (0..USERS)
        .map(|u| {
            (
                HeaderValue::from_str(&format!("user-{u}")).unwrap(),
                Uri::try_from(format!("/api/users/{u}")).unwrap(),
            )
        })
        .collect();
    Requests {
        inner,
        users: std::sync::Arc::new(users),
    }
}

static X_USER: HeaderName = HeaderName::from_static("x-user");

impl<S> Service<u64> for Requests<S>
where
    S: Service<Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, i: u64) -> S::Future {
        let (user, uri) = &self.users[i as usize % USERS];
        let mut req = Request::new(Body::default());
        *req.uri_mut() = uri.clone();
        req.headers_mut().insert(X_USER.clone(), user.clone());
        self.inner.call(req)
    }
}

/// Picks a side by the path prefix.
type Picker = fn(&Request<Body>, &[Side]) -> usize;

fn steer() -> Steer<Side, Picker, Request<Body>> {
    Steer::new(vec![Side, Side], |req: &Request<Body>, _: &[Side]| {
        usize::from(req.uri().path().starts_with("/api/users"))
    })
}

fn ours(mode: Mode, others: usize, ramp: bool) -> StranglerLayer<HeaderKey, Side> {
    let mut b = StranglerLayer::builder("bench")
        .key(HeaderKey::new(X_USER.clone()))
        .new_side(Side);
    for r in 0..others {
        b = b.route(Route::prefix(format!("/api/other{r}")).mode(Mode::New));
    }
    let mut users = Route::prefix("/api/users").mode(mode);
    if ramp {
        users = users.ramp(Ramp::new([Share::HALF, Share::ALL]).window(Duration::from_secs(3600)));
    }
    b.route(users).build().expect("a migration")
}

macro_rules! each_peer {
    ($case:ident) => {
        $case!("bare_route", requests(Side));
        $case!("tower_steer_prefix", requests(steer()));
        $case!(
            "tower_patterns_legacy_mode",
            requests(ours(Mode::Legacy, 0, false).layer(Side))
        );
        $case!(
            "tower_patterns_split_50",
            requests(ours(Mode::Split(Share::HALF), 0, false).layer(Side))
        );
        $case!(
            "tower_patterns_split_50_ten_routes",
            requests(ours(Mode::Split(Share::HALF), 9, false).layer(Side))
        );
        $case!(
            "tower_patterns_ramped_split",
            requests(ours(Mode::Legacy, 0, true).layer(Side))
        );
    };
}

support::bench_groups!("strangler", each_peer);

/// A request answered and its body read to the end, `iters` times in one task on `rt`.
fn answered<S>(rt: &tokio::runtime::Runtime, svc: &S, iters: u64) -> Duration
where
    S: Service<u64> + Clone + Send + 'static,
    S::Response: Into<Response<tower_patterns::strangler::StranglerBody<Body, Body>>>,
    S::Future: Send,
    S::Error: std::fmt::Debug + Send,
{
    let mut svc = svc.clone();
    rt.block_on(async move {
        let start = Instant::now();
        for i in 0..iters {
            let res: Response<_> = svc.ready().await.unwrap().call(i).await.unwrap().into();
            std::hint::black_box(res.into_body().collect().await.unwrap());
        }
        start.elapsed()
    })
}

fn shadow(c: &mut criterion::Criterion) {
    let rt = support::two_workers();
    let _context = rt.enter();
    let mut group = c.benchmark_group("strangler_shadow");
    let legacy = requests(ours(Mode::Legacy, 0, false).layer(Side));
    group.bench_function("legacy_alone", |b| {
        b.iter_custom(|iters| answered(&rt, &legacy, iters))
    });
    let layer = StranglerLayer::builder("bench-shadow")
        .key(HeaderKey::new(X_USER.clone()))
        .new_side(Side)
        .route(Route::prefix("/api/users").mode(Mode::Shadow))
        .shadow(Shadow::new(Comparator::default()).max_concurrency(4096))
        .build()
        .expect("a migration");
    let handle = layer.handle();
    let shadowed = requests(layer.layer(Side));
    group.bench_function("shadow_mode", |b| {
        b.iter_custom(|iters| answered(&rt, &shadowed, iters))
    });
    group.finish();
    let counts = handle.shadow().unwrap();
    eprintln!(
        "strangler_shadow: {} compared, {} dropped (no room), {} mismatched",
        counts.matched + counts.mismatched,
        counts.dropped,
        counts.mismatched
    );
}

criterion_group! {
    name = benches;
    config = support::config();
    targets = single, contended, shadow
}
criterion_main!(benches);
