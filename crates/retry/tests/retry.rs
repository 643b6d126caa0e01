//! Every retry rule, on paused time.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use http::{HeaderName, Method, Request, Response, StatusCode};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceBuilder, ServiceExt, service_fn};
use tower_patterns_core::{BoxError, Rejected, RejectionKind};
use tower_patterns_retry::{Attempt, Backoff, HttpRetry, RetryBudget, RetryPolicy};
use tower_patterns_testkit::TestService;

type Res = Response<String>;

/// One scripted answer: a status and its headers.
type Step = (u16, Vec<(&'static str, String)>);

/// An HTTP service answering each attempt with the next status of `script` (the last one
/// repeats), recording the attempt numbers it saw.
#[derive(Clone)]
struct Scripted {
    script: Arc<Vec<Step>>,
    seen: Arc<Mutex<Vec<u32>>>,
}

impl Scripted {
    fn new(script: Vec<Step>) -> Self {
        Self {
            script: Arc::new(script),
            seen: Arc::default(),
        }
    }

    fn statuses(codes: &[u16]) -> Self {
        Self::new(codes.iter().map(|c| (*c, vec![])).collect())
    }

    fn calls(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
}

impl Service<Request<String>> for Scripted {
    type Response = Res;
    type Error = BoxError;
    type Future = std::future::Ready<Result<Res, BoxError>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<String>) -> Self::Future {
        let attempt = req.extensions().get::<Attempt>().map_or(1, |a| a.0);
        let header = req
            .headers()
            .get("x-retry-attempt")
            .map(|v| v.to_str().unwrap().parse::<u32>().unwrap());
        if let Some(h) = header {
            assert_eq!(h, attempt, "header and extension agree");
        }
        let mut seen = self.seen.lock().unwrap();
        seen.push(attempt);
        let (status, headers) = &self.script[(seen.len() - 1).min(self.script.len() - 1)];
        let mut res = Response::builder().status(*status);
        for (k, v) in headers {
            res = res.header(*k, v.as_str());
        }
        std::future::ready(Ok(res.body(String::new()).unwrap()))
    }
}

fn get() -> Request<String> {
    Request::get("/").body(String::new()).unwrap()
}

/// One GET through the default test policy to `inner`.
async fn through_policy(inner: &Scripted) -> Res {
    policy()
        .build()
        .unwrap()
        .layer()
        .layer(inner.clone())
        .oneshot(get())
        .await
        .unwrap()
}

/// How many attempts one GET makes through the default test policy against `script`.
async fn attempts(script: Vec<Step>) -> usize {
    let inner = Scripted::new(script);
    through_policy(&inner).await;
    inner.calls()
}

fn policy() -> tower_patterns_retry::RetryPolicyBuilder<HttpRetry> {
    RetryPolicy::builder("test")
        .http()
        .backoff(Backoff::Constant(Duration::from_millis(100)))
}

#[tokio::test(start_paused = true)]
async fn retryable_statuses_are_retried_with_the_attempt_visible() {
    let inner = Scripted::statuses(&[503, 502, 200]);
    let svc = ServiceBuilder::new()
        .layer(
            policy()
                .kind(
                    HttpRetry::default().attempt_header(HeaderName::from_static("x-retry-attempt")),
                )
                .build()
                .unwrap()
                .layer(),
        )
        .service(inner.clone());
    let res = svc.oneshot(get()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(*inner.seen.lock().unwrap(), vec![1, 2, 3]);
}

#[tokio::test(start_paused = true)]
async fn other_statuses_are_not_retried() {
    for code in [400, 401, 404, 409, 500, 501] {
        let inner = Scripted::statuses(&[code, 200]);
        let res = through_policy(&inner).await;
        assert_eq!(res.status().as_u16(), code);
        assert_eq!(inner.calls(), 1, "{code} is sent once");
    }
}

#[tokio::test(start_paused = true)]
async fn post_without_an_idempotency_key_is_sent_once() {
    let inner = Scripted::statuses(&[503, 200]);
    let svc = policy().build().unwrap().layer().layer(inner.clone());
    let post = Request::post("/charge").body("100".to_owned()).unwrap();
    assert_eq!(svc.clone().oneshot(post).await.unwrap().status(), 503);
    assert_eq!(inner.calls(), 1, "never charge a user twice");

    let inner = Scripted::statuses(&[503, 200]);
    let svc = policy().build().unwrap().layer().layer(inner.clone());
    let keyed = Request::builder()
        .method(Method::POST)
        .uri("/charge")
        .header("idempotency-key", "order-42")
        .body("100".to_owned())
        .unwrap();
    assert_eq!(svc.oneshot(keyed).await.unwrap().status(), 200);
    assert_eq!(inner.calls(), 2);
}

#[tokio::test(start_paused = true)]
async fn retry_after_three_seconds_waits_at_least_three_seconds() {
    let inner = Scripted::new(vec![
        (503, vec![("retry-after", "3".to_owned())]),
        (200, vec![]),
    ]);
    let svc = policy().build().unwrap().layer().layer(inner.clone());
    let start = Instant::now();
    assert_eq!(svc.oneshot(get()).await.unwrap().status(), 200);
    assert!(
        start.elapsed() >= Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(inner.calls(), 2);

    // Longer than the maximum pushback: give up rather than retry early.
    let inner = Scripted::new(vec![
        (429, vec![("retry-after", "120".to_owned())]),
        (200, vec![]),
    ]);
    let svc = policy()
        .max_pushback(Duration::from_secs(60))
        .build()
        .unwrap()
        .layer()
        .layer(inner.clone());
    assert_eq!(svc.oneshot(get()).await.unwrap().status(), 429);
    assert_eq!(inner.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn grpc_statuses_and_pushback() {
    let grpc = |code: &str, pushback: Option<&str>| {
        let mut h = vec![("grpc-status", code.to_owned())];
        if let Some(p) = pushback {
            h.push(("grpc-retry-pushback-ms", p.to_owned()));
        }
        (200, h)
    };
    let inner = Scripted::new(vec![grpc("14", Some("1500")), grpc("0", None)]);
    let svc = policy().build().unwrap().layer().layer(inner.clone());
    let start = Instant::now();
    svc.oneshot(get()).await.unwrap();
    assert_eq!(inner.calls(), 2, "UNAVAILABLE is retried");
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(1_500),
        "after the pushback"
    );

    assert_eq!(
        attempts(vec![grpc("14", Some("-1")), grpc("0", None)]).await,
        1,
        "a negative pushback stops retries"
    );

    assert_eq!(
        attempts(vec![grpc("3", None), grpc("0", None)]).await,
        1,
        "INVALID_ARGUMENT is not retried"
    );
}

#[tokio::test(start_paused = true)]
async fn a_rejection_from_below_is_not_retried_unless_asked() {
    let calls = Arc::new(AtomicU32::new(0));
    let open = {
        let calls = calls.clone();
        service_fn(move |_: u32| {
            calls.fetch_add(1, Ordering::SeqCst);
            async {
                Err::<u32, BoxError>(
                    Rejected::new(RejectionKind::CircuitOpen)
                        .with_retry_after(Duration::from_secs(30))
                        .into(),
                )
            }
        })
    };
    let svc = RetryPolicy::builder("x")
        .build()
        .unwrap()
        .layer()
        .layer(open.clone());
    assert!(svc.oneshot(1).await.is_err());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "an open circuit is not retried"
    );

    let svc = RetryPolicy::builder("x")
        .kind(tower_patterns_retry::ErrorRetry::default().retry_rejected(true))
        .backoff(Backoff::Constant(Duration::ZERO))
        .build()
        .unwrap()
        .layer()
        .layer(open);
    assert!(svc.oneshot(1).await.is_err());
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "configured: retried up to 3 attempts"
    );
}

#[tokio::test(start_paused = true)]
async fn backoff_delays_are_waited_out_and_attempts_bounded() {
    let inner = TestService::new().always_fail();
    let svc = RetryPolicy::builder("exp")
        .max_attempts(4)
        .backoff(Backoff::Exponential {
            base: Duration::from_millis(100),
            multiplier: 2.0,
        })
        .no_budget()
        .build()
        .unwrap()
        .layer()
        .layer(inner.clone());
    let start = Instant::now();
    assert!(svc.oneshot(()).await.is_err());
    assert_eq!(inner.calls(), 4);
    assert_eq!(start.elapsed(), Duration::from_millis(100 + 200 + 400));
}

#[tokio::test(start_paused = true)]
async fn the_deadline_stops_retries_that_would_end_past_it() {
    let inner = TestService::new().always_fail();
    let svc = RetryPolicy::builder("deadline")
        .max_attempts(100)
        .backoff(Backoff::Constant(Duration::from_secs(1)))
        .deadline(Duration::from_millis(3_500))
        .no_budget()
        .build()
        .unwrap()
        .layer()
        .layer(inner.clone());
    let start = Instant::now();
    assert!(svc.oneshot(()).await.is_err());
    assert_eq!(
        inner.calls(),
        4,
        "at 0, 1, 2 and 3 s; the one at 4 s would pass 3.5 s"
    );
    assert_eq!(start.elapsed(), Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn retries_stay_within_the_budget_when_the_dependency_is_down() {
    let inner = TestService::new().always_fail();
    let policy = RetryPolicy::builder("budget")
        .max_attempts(5)
        .backoff(Backoff::Constant(Duration::from_millis(10)))
        .budget(RetryBudget::new(100.0, 0.1).unwrap())
        .build()
        .unwrap();
    let budget = policy.budget().unwrap().clone();
    let svc = policy.layer().layer(inner.clone());
    let requests = 1_000;
    for _ in 0..requests {
        let _ = svc.clone().oneshot(()).await;
    }
    let retries = inner.calls() - requests;
    // Without a budget: 4 retries per request, 4,000. With it: about half the tokens.
    assert!(
        retries <= 50,
        "{retries} retries for {requests} failed requests"
    );
    assert!(
        retries >= 40,
        "the budget allowed retries at first: {retries}"
    );
    assert!(budget.tokens() < 1.0);
}

#[tokio::test(start_paused = true)]
async fn concurrent_retries_are_capped() {
    // Two requests fail together at 1 s; with room for one retry in flight, only the first
    // retries (at 1 s and 2 s: attempts 2 and 3), the other gives up at once.
    let run = |budget: RetryBudget| async move {
        let inner = TestService::new()
            .always_fail()
            .delay(Duration::from_secs(1));
        let svc = RetryPolicy::builder("cap")
            .backoff(Backoff::Constant(Duration::ZERO))
            .budget(budget)
            .build()
            .unwrap()
            .layer()
            .layer(inner.clone());
        let a = tokio::spawn(svc.clone().oneshot(()));
        let b = tokio::spawn(svc.clone().oneshot(()));
        assert!(a.await.unwrap().is_err() && b.await.unwrap().is_err());
        inner.calls()
    };
    assert_eq!(
        run(RetryBudget::default().max_concurrent_retries(1)).await,
        4
    );
    assert_eq!(
        run(RetryBudget::default()).await,
        6,
        "without the cap both retry twice"
    );
}

#[test]
fn bad_configuration_is_a_typed_error() {
    assert_eq!(
        RetryPolicy::builder("x")
            .max_attempts(0)
            .build()
            .unwrap_err()
            .field(),
        "max_attempts"
    );
    assert_eq!(
        RetryPolicy::builder("x")
            .backoff(Backoff::Exponential {
                base: Duration::from_millis(1),
                multiplier: 0.5
            })
            .build()
            .unwrap_err()
            .field(),
        "backoff"
    );
}

#[tokio::test(start_paused = true)]
async fn a_static_policy_behaves_the_same() {
    let inner = Scripted::statuses(&[503, 200]);
    let svc = policy()
        .build()
        .unwrap()
        .leak()
        .layer()
        .layer(inner.clone());
    assert_eq!(svc.clone().oneshot(get()).await.unwrap().status(), 200);
    assert_eq!(*inner.seen.lock().unwrap(), vec![1, 2]);
}

mod replay {
    use bytes::Bytes;
    use http_body_util::{BodyExt, StreamBody};
    use tower_patterns_retry::{ReplayBodyLayer, ReplayableBody};

    use super::*;

    /// A streaming body of `chunks` chunks of `size` bytes, of unknown length.
    fn stream(chunks: usize, size: usize) -> StreamBody<futures_iter::Iter> {
        StreamBody::new(futures_iter::Iter(
            (0..chunks)
                .map(|_| Ok(http_body::Frame::data(Bytes::from(vec![b'x'; size]))))
                .collect(),
        ))
    }

    mod futures_iter {
        use std::{
            pin::Pin,
            task::{Context, Poll},
        };

        type Item = Result<http_body::Frame<bytes::Bytes>, std::convert::Infallible>;
        pub(super) struct Iter(pub(super) std::collections::VecDeque<Item>);
        impl futures_core::Stream for Iter {
            type Item = Item;
            fn poll_next(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Item>> {
                Poll::Ready(self.0.pop_front())
            }
        }
    }

    /// Fails the first attempt with 503, answers 200 after; records each body it read.
    fn echo(
        bodies: Arc<Mutex<Vec<usize>>>,
    ) -> impl Service<
        Request<ReplayableBody<StreamBody<futures_iter::Iter>>>,
        Response = Response<String>,
        Error = BoxError,
        Future: Send,
    > + Clone {
        service_fn(
            move |req: Request<ReplayableBody<StreamBody<futures_iter::Iter>>>| {
                let bodies = bodies.clone();
                async move {
                    let len = req.into_body().collect().await?.to_bytes().len();
                    let mut seen = bodies.lock().unwrap();
                    seen.push(len);
                    let status = if seen.len() == 1 { 503 } else { 200 };
                    Ok::<_, BoxError>(Response::builder().status(status).body(String::new())?)
                }
            },
        )
    }

    fn put<B>(body: B) -> Request<B> {
        Request::put("/doc").body(body).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn small_streaming_bodies_are_buffered_and_retried_whole() {
        let bodies = Arc::default();
        let svc = ServiceBuilder::new()
            .layer(ReplayBodyLayer::new(1_024))
            .layer(policy().build().unwrap().layer())
            .service(echo(Arc::clone(&bodies)));
        let res = svc.oneshot(put(stream(4, 100))).await.unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(*bodies.lock().unwrap(), vec![400, 400], "sent whole, twice");
    }

    #[tokio::test(start_paused = true)]
    async fn large_bodies_stream_once_and_are_not_retried() {
        let bodies = Arc::default();
        let svc = ServiceBuilder::new()
            .layer(ReplayBodyLayer::new(1_024))
            .layer(policy().build().unwrap().layer())
            .service(echo(Arc::clone(&bodies)));
        let res = svc.oneshot(put(stream(30, 100))).await.unwrap();
        assert_eq!(res.status(), 503, "not retried");
        assert_eq!(
            *bodies.lock().unwrap(),
            vec![3_000],
            "sent once, whole, prefix included"
        );
    }
}
