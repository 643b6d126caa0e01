//! Shadow mode on a plain tower stack: legacy answers, the new side's answer is compared.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_patterns_core::key::HeaderKey;
use tower_patterns_strangler::{
    Mode, Route, Shadow, ShadowCounts, StranglerHandle, StranglerLayer, compare::Comparator,
};

type Body = Full<Bytes>;

/// A side answering `answer(call number)` after `delay`, keeping each request's headers.
#[derive(Clone)]
struct Side {
    answer: Arc<dyn Fn(usize) -> String + Send + Sync>,
    delay: Duration,
    calls: Arc<AtomicUsize>,
    seen: Arc<Mutex<Vec<(String, HeaderMap)>>>,
}

impl Side {
    fn new(answer: impl Fn(usize) -> String + Send + Sync + 'static) -> Self {
        Self {
            answer: Arc::new(answer),
            delay: Duration::ZERO,
            calls: Arc::default(),
            seen: Arc::default(),
        }
    }

    fn slow(mut self, delay: Duration) -> Self {
        self.delay = delay;
        self
    }

    fn service(
        &self,
    ) -> impl Service<Request<Body>, Response = Response<Body>, Error = Infallible, Future: Send>
    + Clone
    + Send
    + 'static {
        let side = self.clone();
        service_fn(move |req: Request<Body>| {
            let side = side.clone();
            async move {
                let n = side.calls.fetch_add(1, Ordering::SeqCst);
                side.seen
                    .lock()
                    .unwrap()
                    .push((req.method().to_string(), req.headers().clone()));
                tokio::time::sleep(side.delay).await;
                let body = (side.answer)(n);
                let json = body.starts_with('{');
                let mut res = Response::new(Full::new(Bytes::from(body)));
                if json {
                    res.headers_mut()
                        .insert("content-type", "application/json".parse().unwrap());
                }
                Ok::<_, Infallible>(res)
            }
        })
    }

    fn seen(&self) -> Vec<(String, HeaderMap)> {
        self.seen.lock().unwrap().clone()
    }
}

fn shadowed(
    legacy: &Side,
    new: &Side,
    shadow: Shadow,
) -> (
    impl Service<
        Request<Body>,
        Response = Response<tower_patterns_strangler::StranglerBody<Body, Body>>,
        Error = tower_patterns_core::BoxError,
    >,
    StranglerHandle,
) {
    let layer = StranglerLayer::builder("shadow")
        .key(HeaderKey::new(HeaderName::from_static("x-user")))
        .new_side(new.service())
        .route(
            Route::prefix("/api/users")
                .named("users")
                .mode(Mode::Shadow),
        )
        .shadow(shadow)
        .build()
        .unwrap();
    let handle = layer.handle();
    (layer.layer(legacy.service()), handle)
}

async fn call<S>(svc: &mut S, req: Request<Body>) -> String
where
    S: Service<
            Request<Body>,
            Response = Response<tower_patterns_strangler::StranglerBody<Body, Body>>,
            Error = tower_patterns_core::BoxError,
        >,
{
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

fn get(path: &str) -> Request<Body> {
    Request::get(path).body(Body::default()).unwrap()
}

/// Lets the comparison tasks run until `done` copies have an outcome.
async fn settle(handle: &StranglerHandle, done: u64) -> ShadowCounts {
    for _ in 0..1000 {
        let c = handle.shadow().unwrap();
        if c.matched + c.mismatched + c.dropped + c.skipped + c.failed >= done {
            return c;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("copies did not settle: {:?}", handle.shadow());
}

fn comparator() -> Comparator {
    Comparator::builder().build().unwrap()
}

#[tokio::test(start_paused = true)]
async fn legacy_answers_and_a_planted_mismatch_is_found() {
    let legacy = Side::new(|_| r#"{"id":7,"name":"Ada","email":"ada@example.com"}"#.into());
    let new = Side::new(|n| {
        if n == 1 {
            r#"{"name":"Ada","id":7,"email":"ADA@example.com"}"#.into()
        } else {
            r#"{"name":"Ada","id":7.0,"email":"ada@example.com"}"#.into()
        }
    });
    let (mut svc, handle) = shadowed(&legacy, &new, Shadow::new(comparator()));
    for _ in 0..3 {
        let body = call(&mut svc, get("/api/users/7")).await;
        assert!(body.contains("ada@example.com"), "legacy answers: {body}");
    }
    let counts = settle(&handle, 3).await;
    assert_eq!((counts.matched, counts.mismatched), (2, 1), "{counts:?}");
    let mismatches = handle.mismatches();
    assert_eq!(mismatches.len(), 1);
    assert_eq!(mismatches[0].request, "GET /api/users/7");
    assert!(
        mismatches[0]
            .differences
            .iter()
            .any(|d| d.contains("/email")),
        "{mismatches:?}"
    );
    // Routes not in shadow mode are not copied.
    call(&mut svc, get("/other")).await;
    assert_eq!(new.calls.load(Ordering::SeqCst), 3);
}

#[tokio::test(start_paused = true)]
async fn shadow_requests_are_marked_and_a_client_cannot_forge_the_marker() {
    let legacy = Side::new(|_| "same".into());
    let new = Side::new(|_| "same".into());
    let (mut svc, handle) = shadowed(&legacy, &new, Shadow::new(comparator()));
    let forged = Request::get("/api/users/1")
        .header("x-shadow-request", "1")
        .body(Body::default())
        .unwrap();
    call(&mut svc, forged).await;
    settle(&handle, 1).await;
    assert!(
        !legacy.seen()[0].1.contains_key("x-shadow-request"),
        "stripped on entry"
    );
    assert_eq!(new.seen()[0].1["x-shadow-request"], "1");
    // Non-JSON answers are compared as bytes: equal here.
    assert_eq!(handle.shadow().unwrap().matched, 1);
}

#[tokio::test(start_paused = true)]
async fn writes_are_not_copied_unless_asked_and_bytes_are_compared() {
    let legacy = Side::new(|_| "created".into());
    let new = Side::new(|_| "Created".into());
    let (mut svc, handle) = shadowed(&legacy, &new, Shadow::new(comparator()));
    let post = || {
        Request::post("/api/users")
            .body(Body::from("{\"name\":\"x\"}"))
            .unwrap()
    };
    assert_eq!(call(&mut svc, post()).await, "created");
    let c = settle(&handle, 1).await;
    assert_eq!(c.skipped, 1);
    assert_eq!(
        new.calls.load(Ordering::SeqCst),
        0,
        "a write is not copied by default"
    );

    let (mut svc, handle) = shadowed(&legacy, &new, Shadow::new(comparator()).mirror_writes(true));
    assert_eq!(call(&mut svc, post()).await, "created");
    let c = settle(&handle, 1).await;
    assert_eq!(c.mismatched, 1, "{c:?}");
    let (method, _) = &new.seen()[0];
    assert_eq!(method, "POST");
    let diff = &handle.mismatches()[0].differences;
    assert_eq!(diff.len(), 1, "{diff:?}");
    assert!(diff[0].to_lowercase().contains("byte"), "{diff:?}");
}

#[tokio::test(start_paused = true)]
async fn noise_legacy_has_with_itself_is_not_reported() {
    // Legacy stamps every answer with a fresh nonce; the new side does too.
    let legacy = Side::new(|n| format!(r#"{{"user":"ada","nonce":"L{n}"}}"#));
    let new = Side::new(|n| {
        if n == 1 {
            format!(r#"{{"user":"bob","nonce":"N{n}"}}"#)
        } else {
            format!(r#"{{"user":"ada","nonce":"N{n}"}}"#)
        }
    });
    let (mut svc, handle) = shadowed(&legacy, &new, Shadow::new(comparator()));
    call(&mut svc, get("/api/users/1")).await;
    let c = settle(&handle, 1).await;
    assert_eq!(c.mismatched, 1, "without a baseline the nonce differs");

    let new = Side::new(move |n| {
        if n == 1 {
            format!(r#"{{"user":"bob","nonce":"N{n}"}}"#)
        } else {
            format!(r#"{{"user":"ada","nonce":"N{n}"}}"#)
        }
    });
    let (mut svc, handle) = shadowed(
        &legacy,
        &new,
        Shadow::new(comparator()).noise_baseline(true),
    );
    for _ in 0..3 {
        call(&mut svc, get("/api/users/1")).await;
    }
    let c = settle(&handle, 3).await;
    assert_eq!((c.matched, c.mismatched), (2, 1), "{c:?}");
    let diff = &handle.mismatches()[0].differences;
    assert_eq!(diff.len(), 1, "only the planted field: {diff:?}");
    assert!(diff[0].contains("/user"), "{diff:?}");
}

#[tokio::test(start_paused = true)]
async fn the_copy_never_slows_the_answer_and_is_dropped_under_load() {
    let legacy = Side::new(|_| "ok".into());
    let new = Side::new(|_| "ok".into()).slow(Duration::from_secs(60));
    let (svc, handle) = shadowed(
        &legacy,
        &new,
        Shadow::new(comparator())
            .max_concurrency(1)
            .timeout(Duration::from_secs(5)),
    );
    let start = tokio::time::Instant::now();
    let mut a = svc;
    assert_eq!(call(&mut a, get("/api/users/1")).await, "ok");
    assert_eq!(call(&mut a, get("/api/users/2")).await, "ok");
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "answered without waiting for the new side"
    );
    let c = settle(&handle, 1).await;
    assert_eq!(c.dropped, 1, "the second copy found no room: {c:?}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let c = settle(&handle, 2).await;
    assert_eq!(c.failed, 1, "the first copy timed out: {c:?}");
    assert_eq!(legacy.calls.load(Ordering::SeqCst), 2);
}
