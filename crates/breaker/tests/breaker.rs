//! Every knob of the circuit breaker, on paused time.

use std::{
    future::Future,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{Request, Response, StatusCode};
use tokio::time::{Instant, advance};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_patterns_breaker::{
    CircuitBreaker, CircuitBreakerBuilder, CircuitBreakerHandle, CircuitBreakerLayer,
    KeyedCircuitBreakerLayer, Reason, State, Transition,
};
use tower_patterns_core::{
    BoxError, KeyError, Rejected, RejectionKind,
    classify::{Outcome, TowerHttp, predicate},
    key::{HeaderKey, KeyErrorKind},
    keyed::KeyBounds,
    observe::{Health, StateHandle},
};
use tower_patterns_testkit::TestService;

type Svc = tower::util::BoxCloneService<bool, bool, BoxError>;

/// A service that succeeds when asked `true` and fails when asked `false`.
fn echo() -> impl Service<bool, Response = bool, Error = BoxError, Future: Send> + Clone + Send {
    service_fn(|ok: bool| async move {
        if ok {
            Ok(true)
        } else {
            Err(BoxError::from("dependency failed"))
        }
    })
}

fn build(b: CircuitBreakerBuilder) -> (Svc, tower_patterns_breaker::CircuitBreakerHandle) {
    let layer = b.build().expect("valid configuration");
    let handle = layer.handle();
    (
        tower::util::BoxCloneService::new(layer.layer(echo())),
        handle,
    )
}

async fn send(svc: &Svc, ok: bool) -> Result<bool, BoxError> {
    svc.clone().oneshot(ok).await
}

fn rejection(err: &BoxError) -> &Rejected {
    Rejected::find(&**err).unwrap_or_else(|| panic!("expected a rejection, got {err}"))
}

#[tokio::test(start_paused = true)]
async fn the_count_window_slides_after_many_successes() {
    // The scenario a popular peer gets wrong: window 10 at 50%, 100 successes, then failures.
    let (svc, handle) = build(
        CircuitBreakerLayer::builder("slides")
            .count_window(10)
            .minimum_calls(10)
            .failure_rate(0.5),
    );
    for _ in 0..100 {
        send(&svc, true).await.unwrap();
    }
    let mut failures = 0;
    while handle.state() == State::Closed {
        assert!(send(&svc, false).await.is_err());
        failures += 1;
        assert!(failures <= 5, "still closed after {failures} failures");
    }
    assert_eq!(failures, 5);
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn minimum_calls_hold_the_rate_back() {
    let (svc, handle) = build(
        CircuitBreakerLayer::builder("min")
            .count_window(100)
            .minimum_calls(10)
            .failure_rate(0.5),
    );
    for _ in 0..9 {
        let _ = send(&svc, false).await;
    }
    assert_eq!(
        handle.state(),
        State::Closed,
        "9 of 9 failing, but fewer than 10 calls"
    );
    let _ = send(&svc, false).await;
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn the_time_window_forgets_old_failures() {
    let (svc, handle) = build(
        CircuitBreakerLayer::builder("time")
            .time_window(Duration::from_secs(10), 10)
            .minimum_calls(4)
            .failure_rate(0.5),
    );
    for _ in 0..3 {
        let _ = send(&svc, false).await;
    }
    advance(Duration::from_secs(11)).await;
    // The three failures are out of the window: one more failure is 1 of 1, below minimum.
    let _ = send(&svc, false).await;
    assert_eq!(handle.state(), State::Closed);
    let snap = handle.snapshot();
    assert_eq!((snap.calls, snap.failures), (1, 1));
    for _ in 0..3 {
        let _ = send(&svc, false).await;
    }
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_and_failure_count() {
    let (svc, handle) = build(
        CircuitBreakerLayer::builder("run")
            .no_failure_rate()
            .consecutive_failures(3),
    );
    for _ in 0..2 {
        let _ = send(&svc, false).await;
    }
    send(&svc, true).await.unwrap();
    for _ in 0..2 {
        let _ = send(&svc, false).await;
    }
    assert_eq!(
        handle.state(),
        State::Closed,
        "the run was broken by a success"
    );
    let mut events = handle.subscribe();
    let _ = send(&svc, false).await;
    assert_eq!(handle.state(), State::Open);
    assert_eq!(
        events.try_recv().unwrap().reason,
        Reason::ConsecutiveFailures(3)
    );

    let (svc, handle) = build(
        CircuitBreakerLayer::builder("count")
            .count_window(100)
            .no_failure_rate()
            .failure_count(5),
    );
    for i in 0..50 {
        let _ = send(&svc, i % 10 != 0).await;
    }
    assert_eq!(
        handle.state(),
        State::Open,
        "5 failures among 50 calls, at a 10% rate"
    );
}

#[tokio::test(start_paused = true)]
async fn rejections_fail_fast_with_the_time_left_open() {
    let inner = TestService::new().always_fail();
    let layer = CircuitBreakerLayer::builder("fast")
        .count_window(4)
        .minimum_calls(4)
        .open_duration(Duration::from_secs(30))
        .build()
        .unwrap();
    let svc = layer.layer(inner.clone());
    for _ in 0..4 {
        let _ = svc.clone().oneshot(()).await;
    }
    assert_eq!(inner.calls(), 4);
    advance(Duration::from_millis(12_500)).await;

    let mut svc = svc;
    // Always ready, even though the circuit is open.
    std::future::poll_fn(|cx| Service::<()>::poll_ready(&mut svc, cx))
        .await
        .unwrap();
    let err = svc.call(()).await.unwrap_err();
    let rejected = rejection(&err);
    assert_eq!(rejected.kind(), RejectionKind::CircuitOpen);
    assert_eq!(rejected.name(), Some("fast"));
    assert_eq!(rejected.retry_after(), Some(Duration::from_millis(17_500)));
    assert_eq!(inner.calls(), 4, "the inner service was not touched");
    assert_eq!(layer.handle().snapshot().rejected, 1);
    assert_eq!(
        layer.handle().retry_after(),
        Some(Duration::from_millis(17_500))
    );
}

#[tokio::test(start_paused = true)]
async fn a_trip_late_in_life_stays_open_its_full_duration() {
    // Regression: recording on the count window reads no clock, but a trip must.
    let (svc, handle) = build(
        CircuitBreakerLayer::builder("late")
            .count_window(2)
            .minimum_calls(2)
            .open_duration(Duration::from_secs(30)),
    );
    advance(Duration::from_secs(3_600)).await;
    for _ in 0..2 {
        let _ = send(&svc, false).await;
    }
    assert_eq!(handle.retry_after(), Some(Duration::from_secs(30)));
    advance(Duration::from_secs(29)).await;
    let err = send(&svc, true).await.unwrap_err();
    assert_eq!(rejection(&err).retry_after(), Some(Duration::from_secs(1)));
}

#[tokio::test(start_paused = true)]
async fn half_open_admits_n_probes_and_closes_when_they_pass() {
    let (svc, handle) = build(
        CircuitBreakerLayer::builder("probes")
            .count_window(4)
            .minimum_calls(4)
            .half_open_probes(3)
            .open_duration(Duration::from_secs(5)),
    );
    let mut events = handle.subscribe();
    for _ in 0..4 {
        let _ = send(&svc, false).await;
    }
    advance(Duration::from_secs(5)).await;

    // Three probes in flight at once: hold them with a service that waits for a signal.
    let gate = Arc::new(tokio::sync::Notify::new());
    let layer_svc = {
        let gate = gate.clone();
        let layer = CircuitBreakerLayer::builder("held")
            .count_window(4)
            .minimum_calls(4)
            .half_open_probes(3)
            .open_duration(Duration::from_secs(5))
            .build()
            .unwrap();
        let h = layer.handle();
        let svc = layer.layer(service_fn(move |ok: bool| {
            let gate = gate.clone();
            async move {
                if ok {
                    gate.notified().await;
                    Ok::<_, BoxError>(true)
                } else {
                    Err(BoxError::from("down"))
                }
            }
        }));
        (svc, h)
    };
    let (held, held_handle) = layer_svc;
    for _ in 0..4 {
        let _ = held.clone().oneshot(false).await;
    }
    advance(Duration::from_secs(5)).await;
    let probes: Vec<_> = (0..3)
        .map(|_| tokio::spawn(held.clone().oneshot(true)))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(held_handle.state(), State::HalfOpen);
    assert_eq!(held_handle.snapshot().probes_admitted, 3);
    let fourth = held.clone().oneshot(true).await.unwrap_err();
    assert_eq!(
        rejection(&fourth).retry_after(),
        None,
        "probes are all taken"
    );
    gate.notify_waiters();
    for p in probes {
        assert!(p.await.unwrap().unwrap());
    }
    assert_eq!(held_handle.state(), State::Closed);

    // The plain one: three successes close it, and transitions arrive in order.
    for _ in 0..3 {
        send(&svc, true).await.unwrap();
    }
    assert_eq!(handle.state(), State::Closed);
    let seen: Vec<(State, State)> = std::iter::from_fn(|| events.try_recv().ok())
        .map(|t: Transition| (t.from, t.to))
        .collect();
    assert_eq!(
        seen,
        vec![
            (State::Closed, State::Open),
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::Closed),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn failing_probes_reopen_at_the_threshold() {
    let (svc, handle) = build(
        CircuitBreakerLayer::builder("reopen")
            .count_window(4)
            .minimum_calls(4)
            .failure_rate(0.5)
            .half_open_probes(4)
            .open_duration(Duration::from_secs(5)),
    );
    for _ in 0..4 {
        let _ = send(&svc, false).await;
    }
    advance(Duration::from_secs(5)).await;
    send(&svc, true).await.unwrap();
    let _ = send(&svc, false).await;
    assert_eq!(
        handle.state(),
        State::HalfOpen,
        "1 of 4 failed: not yet decided"
    );
    let _ = send(&svc, false).await;
    assert_eq!(
        handle.state(),
        State::Open,
        "2 of 4 failed reaches 50%: decided early"
    );
}

#[tokio::test(start_paused = true)]
async fn dropped_probes_give_their_permit_back() {
    let inner = TestService::new().never_respond();
    let layer = CircuitBreakerLayer::builder("drop")
        .count_window(2)
        .minimum_calls(2)
        .half_open_probes(1)
        .open_duration(Duration::from_secs(1))
        .build()
        .unwrap();
    let handle = layer.handle();
    handle.force_open();
    handle.reset();
    // Trip it with two failures from a failing twin sharing the breaker.
    let failing = layer.layer(TestService::new().always_fail());
    for _ in 0..2 {
        let _ = failing.clone().oneshot(()).await;
    }
    advance(Duration::from_secs(1)).await;
    let svc = layer.layer(inner.clone());
    let probe = svc.clone().oneshot(());
    let timed_out = tokio::time::timeout(Duration::from_millis(10), probe).await;
    assert!(timed_out.is_err(), "the probe hangs and is dropped");
    assert_eq!(handle.snapshot().probes_admitted, 0, "its permit came back");
    // So another probe can go.
    let again = tokio::time::timeout(Duration::from_millis(10), svc.clone().oneshot(())).await;
    assert!(again.is_err(), "admitted (and hangs), not rejected");
    assert_eq!(inner.calls(), 2);
}

/// A breaker that trips on two failures in a row, probes once after `open`, and reopens when
/// its probe has no verdict within 10 s; returned tripped, with the failing service that
/// tripped it.
async fn tripped_with_max_wait(
    name: &'static str,
    open: Duration,
) -> (
    CircuitBreakerLayer,
    CircuitBreakerHandle,
    CircuitBreaker<TestService>,
) {
    let layer = CircuitBreakerLayer::builder(name)
        .count_window(2)
        .minimum_calls(2)
        .half_open_probes(1)
        .open_duration(open)
        .max_wait_in_half_open(Some(Duration::from_secs(10)))
        .build()
        .unwrap();
    let failing = layer.layer(TestService::new().always_fail());
    for _ in 0..2 {
        let _ = failing.clone().oneshot(()).await;
    }
    let handle = layer.handle();
    (layer, handle, failing)
}

#[tokio::test(start_paused = true)]
async fn no_verdict_within_the_max_wait_reopens() {
    let (layer, handle, failing) = tripped_with_max_wait("stuck", Duration::from_secs(1)).await;
    advance(Duration::from_secs(1)).await;
    let hanging = layer.layer(TestService::new().never_respond());
    let probe = tokio::spawn(hanging.clone().oneshot(()));
    tokio::task::yield_now().await;
    assert_eq!(handle.state(), State::HalfOpen);
    assert!(
        failing.clone().oneshot(()).await.is_err(),
        "the one probe slot is taken"
    );
    advance(Duration::from_secs(10)).await;
    let mut events = handle.subscribe();
    let err = failing.clone().oneshot(()).await.unwrap_err();
    assert!(
        rejection(&err).retry_after().is_some(),
        "open again, with a time left"
    );
    assert_eq!(handle.state(), State::Open);
    assert_eq!(events.try_recv().unwrap().reason, Reason::HalfOpenTimeout);
    probe.abort();
}

#[tokio::test(start_paused = true)]
async fn open_duration_grows_across_trips_and_resets_on_recovery() {
    let (svc, handle) = build(
        CircuitBreakerLayer::builder("backoff")
            .count_window(2)
            .minimum_calls(2)
            .half_open_probes(1)
            .open_duration_backoff(Duration::from_secs(10), Duration::from_secs(35), 2.0, 0.0),
    );
    for _ in 0..2 {
        let _ = send(&svc, false).await;
    }
    assert_eq!(handle.retry_after(), Some(Duration::from_secs(10)));
    for expected in [20, 35, 35] {
        advance(handle.retry_after().unwrap()).await;
        let _ = send(&svc, false).await; // the probe fails
        assert_eq!(handle.retry_after(), Some(Duration::from_secs(expected)));
    }
    advance(handle.retry_after().unwrap()).await;
    send(&svc, true).await.unwrap();
    assert_eq!(handle.state(), State::Closed);
    for _ in 0..2 {
        let _ = send(&svc, false).await;
    }
    assert_eq!(
        handle.retry_after(),
        Some(Duration::from_secs(10)),
        "back to the base"
    );
}

#[tokio::test(start_paused = true)]
async fn jitter_is_seeded() {
    let retry_after = |seed| async move {
        let (svc, handle) = build(
            CircuitBreakerLayer::builder("jitter")
                .count_window(2)
                .minimum_calls(2)
                .open_duration_backoff(Duration::from_secs(10), Duration::from_secs(60), 2.0, 0.5)
                .seed(seed),
        );
        for _ in 0..2 {
            let _ = send(&svc, false).await;
        }
        handle.retry_after().unwrap()
    };
    let a = retry_after(1).await;
    assert_eq!(a, retry_after(1).await, "same seed, same jitter");
    assert!(
        a > Duration::from_secs(5) && a <= Duration::from_secs(10),
        "{a:?}"
    );
    assert_ne!(a, retry_after(2).await);
}

#[tokio::test(start_paused = true)]
async fn slow_calls_count_while_still_in_flight() {
    let inner = TestService::new().delay(Duration::from_secs(60));
    let layer = CircuitBreakerLayer::builder("slow")
        .count_window(10)
        .minimum_calls(3)
        .no_failure_rate()
        .slow_calls(Duration::from_secs(2), 1.0)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(inner);
    let calls: Vec<_> = (0..3)
        .map(|_| tokio::spawn(svc.clone().oneshot(())))
        .collect();
    tokio::task::yield_now().await; // the calls start now
    advance(Duration::from_millis(1_900)).await;
    assert_eq!(handle.state(), State::Closed);
    advance(Duration::from_millis(200)).await;
    tokio::task::yield_now().await;
    let snap = handle.snapshot();
    assert_eq!(snap.slow_in_flight, 3);
    assert_eq!(
        handle.state(),
        State::Open,
        "opened at 2 s, with all three still running"
    );
    for c in calls {
        c.abort();
    }
}

/// A breaker judged on the slow rate alone (1 s, 50%, at least 4 calls) over a count window of
/// `window`, with a fast service and one taking 3 s behind it.
fn slow_rate_breaker(
    name: &'static str,
    window: u32,
) -> (
    CircuitBreakerHandle,
    CircuitBreaker<TestService>,
    CircuitBreaker<TestService>,
) {
    let layer = CircuitBreakerLayer::builder(name)
        .count_window(window)
        .minimum_calls(4)
        .no_failure_rate()
        .slow_calls(Duration::from_secs(1), 0.5)
        .build()
        .unwrap();
    let fast = layer.layer(TestService::new());
    let slow = layer.layer(TestService::new().delay(Duration::from_secs(3)));
    (layer.handle(), fast, slow)
}

#[tokio::test(start_paused = true)]
async fn slow_calls_that_finish_count_too() {
    let (handle, fast, slow) = slow_rate_breaker("slow-done", 4);
    fast.clone().oneshot(()).await.unwrap();
    fast.clone().oneshot(()).await.unwrap();
    slow.clone().oneshot(()).await.unwrap();
    assert_eq!(handle.state(), State::Closed);
    slow.clone().oneshot(()).await.unwrap();
    assert_eq!(handle.state(), State::Open, "2 of 4 slow reaches 50%");
    assert_eq!(handle.snapshot().slow_in_flight, 0);
}

#[tokio::test(start_paused = true)]
async fn a_slow_probe_reopens_the_circuit() {
    let layer = CircuitBreakerLayer::builder("slow-probe")
        .count_window(2)
        .minimum_calls(2)
        .half_open_probes(1)
        .slow_calls(Duration::from_secs(1), 1.0)
        .open_duration(Duration::from_secs(5))
        .build()
        .unwrap();
    let handle = layer.handle();
    for _ in 0..2 {
        let _ = layer
            .layer(TestService::new().always_fail())
            .oneshot(())
            .await;
    }
    advance(Duration::from_secs(5)).await;
    let slow = layer.layer(TestService::new().delay(Duration::from_secs(2)));
    slow.oneshot(()).await.unwrap();
    assert_eq!(
        handle.state(),
        State::Open,
        "the probe answered, but slowly"
    );
    advance(Duration::from_secs(5)).await;
    layer.layer(TestService::new()).oneshot(()).await.unwrap();
    assert_eq!(handle.state(), State::Closed, "a fast probe closes it");
}

#[tokio::test(start_paused = true)]
async fn the_ramp_admits_growing_shares_and_reopens_on_failure() {
    let layer = CircuitBreakerLayer::builder("ramp")
        .count_window(2)
        .minimum_calls(2)
        .half_open_probes(20)
        .half_open_ramp([0.1, 0.5])
        .open_duration(Duration::from_secs(1))
        .seed(42)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(echo());
    for _ in 0..2 {
        let _ = svc.clone().oneshot(false).await;
    }
    advance(Duration::from_secs(1)).await;

    let mut admitted = [0u32; 2];
    let mut sent = [0u32; 2];
    let mut guard = 0;
    while handle.state() == State::HalfOpen || guard == 0 {
        guard += 1;
        assert!(guard < 10_000, "the ramp never finished");
        let stage = handle.snapshot().stage as usize;
        sent[stage] += 1;
        if svc.clone().oneshot(true).await.is_ok() {
            admitted[stage] += 1;
        }
    }
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(admitted, [20, 20]);
    let share = |s: usize| f64::from(admitted[s]) / f64::from(sent[s]);
    assert!(
        (0.04..0.2).contains(&share(0)),
        "stage 1 share {}",
        share(0)
    );
    assert!((0.3..0.7).contains(&share(1)), "stage 2 share {}", share(1));

    // A failing stage reopens.
    for _ in 0..2 {
        let _ = svc.clone().oneshot(false).await;
    }
    advance(Duration::from_secs(1)).await;
    let mut guard = 0;
    while handle.state() != State::Open {
        guard += 1;
        assert!(guard < 10_000);
        let _ = svc.clone().oneshot(false).await;
    }
}

#[tokio::test(start_paused = true)]
async fn backpressure_mode_waits_instead_of_rejecting() {
    let inner = TestService::new().fail_first(2);
    let layer = CircuitBreakerLayer::builder("bp")
        .count_window(2)
        .minimum_calls(2)
        .half_open_probes(1)
        .open_duration(Duration::from_secs(30))
        .backpressure()
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut svc = layer.layer(inner.clone());
    for _ in 0..2 {
        let _ = svc.clone().oneshot(()).await;
    }
    assert_eq!(handle.state(), State::Open);
    let start = Instant::now();
    std::future::poll_fn(|cx| Service::<()>::poll_ready(&mut svc, cx))
        .await
        .unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(30),
        "ready once half-open"
    );
    assert_eq!(handle.state(), State::HalfOpen);
    svc.call(()).await.unwrap();
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.snapshot().rejected, 0, "waits are not rejections");
}

#[tokio::test(start_paused = true)]
async fn http_classification_5xx_fail_4xx_ignored() {
    let layer = CircuitBreakerLayer::builder("http")
        .count_window(4)
        .minimum_calls(4)
        .classifier(TowerHttp::server_errors().ignore_status(|s| s.is_client_error()))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|req: Request<()>| async move {
        let status: u16 = req.uri().path()[1..].parse().unwrap();
        Ok::<_, BoxError>(
            Response::builder()
                .status(status)
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap(),
        )
    }));
    let get = |code: u16| Request::get(format!("/{code}")).body(()).unwrap();
    for _ in 0..10 {
        let res = svc.clone().oneshot(get(404)).await.unwrap();
        assert_eq!(res.status(), StatusCode::NOT_FOUND);
    }
    assert_eq!(handle.snapshot().calls, 0, "4xx count neither way");
    for _ in 0..4 {
        svc.clone().oneshot(get(503)).await.unwrap();
    }
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn grpc_status_in_trailers_is_judged_when_the_body_ends() {
    use http_body_util::BodyExt;

    let layer = CircuitBreakerLayer::builder("grpc")
        .count_window(2)
        .minimum_calls(2)
        .classifier(TowerHttp::grpc())
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: Request<()>| async {
        let mut trailers = http::HeaderMap::new();
        trailers.insert("grpc-status", "14".parse().unwrap());
        let body = http_body_util::Full::new(bytes::Bytes::from_static(b"msg")).with_trailers(
            std::future::ready(Some(Ok::<_, std::convert::Infallible>(trailers))),
        );
        Ok::<_, BoxError>(Response::new(body))
    }));
    for done in 0..2 {
        let res = svc.clone().oneshot(Request::new(())).await.unwrap();
        assert_eq!(handle.snapshot().calls, done, "headers alone say nothing");
        let collected = res.into_body().collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "14");
    }
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn ignored_errors_count_neither_way() {
    let layer = CircuitBreakerLayer::builder("ignore")
        .count_window(2)
        .minimum_calls(2)
        .classifier(predicate(|r: &Result<bool, BoxError>| match r {
            Ok(_) => Outcome::Success,
            Err(e) if Rejected::find(&**e).is_some() => Outcome::Ignored,
            Err(_) => Outcome::Failure,
        }))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: bool| async {
        Err::<bool, BoxError>(Rejected::new(RejectionKind::BulkheadFull).into())
    }));
    for _ in 0..10 {
        let _ = svc.clone().oneshot(true).await;
    }
    assert_eq!(handle.state(), State::Closed);
    assert_eq!(handle.snapshot().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn one_breaker_per_layer_value_whatever_layer_is_applied_to() {
    let layer = CircuitBreakerLayer::builder("shared")
        .count_window(4)
        .minimum_calls(4)
        .build()
        .unwrap();
    // As frameworks that apply the layer per request do.
    for _ in 0..4 {
        let _ = layer.layer(echo()).oneshot(false).await;
    }
    assert_eq!(layer.handle().state(), State::Open);
    let err = layer.layer(echo()).oneshot(true).await.unwrap_err();
    assert_eq!(rejection(&err).kind(), RejectionKind::CircuitOpen);
}

#[tokio::test(start_paused = true)]
async fn forcing_resetting_and_metrics_only() {
    let (svc, handle) = build(
        CircuitBreakerLayer::builder("forced")
            .count_window(2)
            .minimum_calls(2),
    );
    handle.force_open();
    assert!(send(&svc, true).await.is_err());
    assert_eq!(handle.state(), State::ForcedOpen);
    handle.disable();
    for _ in 0..10 {
        let _ = send(&svc, false).await;
    }
    assert_eq!(handle.state(), State::Disabled, "disabled counts nothing");
    handle.reset();
    assert_eq!(handle.state(), State::Closed);

    handle.set_metrics_only(true);
    let rejected_before = handle.snapshot().rejected;
    for _ in 0..2 {
        let _ = send(&svc, false).await;
    }
    assert_eq!(handle.state(), State::Open, "the machine still runs");
    assert!(send(&svc, true).await.unwrap(), "but never rejects");
    assert_eq!(
        handle.snapshot().rejected,
        rejected_before + 1,
        "the would-be rejection is reported"
    );
    assert!(handle.snapshot().metrics_only);
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_isolate_keys() {
    let layer = KeyedCircuitBreakerLayer::builder("hosts")
        .key(HeaderKey::new(http::HeaderName::from_static("x-host")))
        .count_window(2)
        .minimum_calls(2)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|req: Request<()>| async move {
        match req.headers()["x-host"].to_str().unwrap() {
            "bad" => Err::<&str, BoxError>("down".into()),
            _ => Ok("ok"),
        }
    }));
    let to = |host: &str| Request::get("/").header("x-host", host).body(()).unwrap();
    for _ in 0..2 {
        let _ = svc.clone().oneshot(to("bad")).await;
    }
    let err = svc.clone().oneshot(to("bad")).await.unwrap_err();
    assert_eq!(rejection(&err).name(), Some("hosts/bad"));
    assert_eq!(svc.clone().oneshot(to("good")).await.unwrap(), "ok");

    let err = svc.clone().oneshot(Request::new(())).await.unwrap_err();
    assert_eq!(
        err.downcast_ref::<KeyError>().unwrap().kind(),
        KeyErrorKind::Missing
    );

    assert_eq!(handle.get("bad").unwrap().state(), State::Open);
    assert_eq!(handle.get("good").unwrap().state(), State::Closed);
    let mut listed: Vec<_> = handle
        .entries()
        .into_iter()
        .map(|(k, h)| (k.to_string(), h.state()))
        .collect();
    listed.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        listed,
        vec![("bad".into(), State::Open), ("good".into(), State::Closed)]
    );
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_stay_within_their_bound() {
    let layer = KeyedCircuitBreakerLayer::builder("many-hosts")
        .key(HeaderKey::new(http::HeaderName::from_static("x-host")))
        .key_bounds(KeyBounds {
            max_keys: 1_000,
            idle: Some(Duration::from_secs(600)),
        })
        .build()
        .unwrap();
    let handle = layer.handle();
    assert!(handle.is_empty());
    let mut svc = layer.layer(service_fn(|_: Request<()>| async { Ok::<_, BoxError>(()) }));
    for host in 0..100_000u32 {
        let req = Request::get("/").header("x-host", host).body(()).unwrap();
        svc.ready().await.unwrap().call(req).await.unwrap();
        if host % 5_000 == 4_999 {
            let listed = handle.entries().len();
            assert!(
                listed <= 1_000,
                "{listed} breakers listed after {host} keys"
            );
            assert!(
                handle.len() <= 1_000,
                "{} breakers after {host} keys",
                handle.len()
            );
        }
    }
    assert!(
        handle.len() >= 900,
        "the map is kept nearly full: {}",
        handle.len()
    );
    assert!(!handle.is_empty());
}

#[test]
fn states_print_as_their_metric_labels() {
    for state in [
        State::Closed,
        State::Open,
        State::HalfOpen,
        State::ForcedOpen,
        State::Disabled,
    ] {
        assert_eq!(state.to_string(), state.as_str());
    }
    assert_eq!(State::HalfOpen.to_string(), "half_open");
}

#[test]
fn bad_configuration_is_a_typed_error() {
    let err = CircuitBreakerLayer::builder("bad")
        .failure_rate(2.0)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "failure_rate");
    let err = CircuitBreakerLayer::builder("bad")
        .minimum_calls(0)
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "minimum_calls");
    // The defaults are valid.
    let _ = CircuitBreakerLayer::builder("fine").build().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_minimum_larger_than_the_count_window_is_the_window() {
    // The default minimum (20) with a window of 10: the rate is judged once 10 calls are in.
    let (svc, handle) = build(CircuitBreakerLayer::builder("clamped").count_window(10));
    for _ in 0..5 {
        let _ = send(&svc, false).await;
    }
    for _ in 0..4 {
        send(&svc, true).await.unwrap();
    }
    assert_eq!(handle.state(), State::Closed, "9 calls: below the window");
    send(&svc, true).await.unwrap();
    assert_eq!(handle.state(), State::Open, "10 calls, 5 failed: 50%");
}

#[tokio::test(start_paused = true)]
async fn a_success_that_reaches_the_minimum_trips() {
    // Time window 10 s, minimum 4, 50%: failure, failure, success, success within 10 s.
    let (svc, handle) = build(
        CircuitBreakerLayer::builder("time-rule")
            .time_window(Duration::from_secs(10), 10)
            .minimum_calls(4)
            .failure_rate(0.5),
    );
    for ok in [false, false, true] {
        let _ = send(&svc, ok).await;
        advance(Duration::from_secs(1)).await;
        assert_eq!(handle.state(), State::Closed);
    }
    let mut events = handle.subscribe();
    send(&svc, true).await.unwrap();
    assert_eq!(handle.state(), State::Open, "4 calls, 2 failed: 50%");
    assert_eq!(events.try_recv().unwrap().reason, Reason::FailureRate(0.5));

    // The same in a count window.
    let (svc, handle) = build(
        CircuitBreakerLayer::builder("count-rule")
            .count_window(10)
            .minimum_calls(4)
            .failure_rate(0.5),
    );
    for ok in [false, false, true] {
        let _ = send(&svc, ok).await;
    }
    assert_eq!(handle.state(), State::Closed);
    send(&svc, true).await.unwrap();
    assert_eq!(handle.state(), State::Open);
}

#[tokio::test(start_paused = true)]
async fn failures_in_the_last_bucket_of_their_life_still_count_for_a_success() {
    // Time window 10 s in 10 buckets: failures stay counted until 10 s have passed. Two
    // successes 9 s later bring the window to its minimum of 4 at 50%: it trips. At 10 s the
    // failures are gone and the same successes do not.
    for (wait, tripped) in [(9, true), (10, false)] {
        let (svc, handle) = build(
            CircuitBreakerLayer::builder("edge")
                .time_window(Duration::from_secs(10), 10)
                .minimum_calls(4)
                .failure_rate(0.5),
        );
        let _ = send(&svc, false).await;
        let _ = send(&svc, false).await;
        advance(Duration::from_secs(wait)).await;
        send(&svc, true).await.unwrap();
        send(&svc, true).await.unwrap();
        let expected = if tripped { State::Open } else { State::Closed };
        assert_eq!(
            handle.state(),
            expected,
            "successes {wait} s after the failures"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn fast_calls_that_reach_the_minimum_trip_on_the_slow_rate() {
    // Two slow calls one after the other, then two fast ones: 50% slow once 4 are in.
    let (handle, fast, slow) = slow_rate_breaker("slow-rule", 10);
    slow.clone().oneshot(()).await.unwrap();
    slow.clone().oneshot(()).await.unwrap();
    fast.clone().oneshot(()).await.unwrap();
    assert_eq!(handle.state(), State::Closed);
    let mut events = handle.subscribe();
    fast.clone().oneshot(()).await.unwrap();
    assert_eq!(handle.state(), State::Open, "2 of 4 slow reaches 50%");
    assert_eq!(events.try_recv().unwrap().reason, Reason::SlowCallRate(0.5));
}

#[tokio::test(start_paused = true)]
async fn the_handle_reads_timeouts_as_a_call_would() {
    let (layer, handle, _) = tripped_with_max_wait("lazy", Duration::from_secs(5)).await;
    let mut events = handle.subscribe();
    advance(Duration::from_secs(4)).await;
    assert_eq!(handle.state(), State::Open);
    assert_eq!(handle.retry_after(), Some(Duration::from_secs(1)));
    assert_eq!(handle.report().health, Health::Unavailable);
    assert_eq!(handle.report().value("open_remaining_seconds"), Some(1.0));

    advance(Duration::from_secs(1)).await;
    assert_eq!(handle.state(), State::HalfOpen, "the open time is over");
    let snap = handle.snapshot();
    assert_eq!(snap.state, State::HalfOpen);
    assert_eq!(snap.open_for, None);
    assert_eq!(snap.in_state_for, Duration::ZERO);
    assert_eq!(handle.retry_after(), None);
    assert_eq!(handle.report().health, Health::Degraded);
    assert_eq!(handle.report().value("open_remaining_seconds"), Some(0.0));
    advance(Duration::from_secs(2)).await;
    assert_eq!(handle.snapshot().in_state_for, Duration::from_secs(2));
    assert!(events.try_recv().is_err(), "reading made no transition");

    // A probe that never answers: past the maximum wait, a call would find it open again.
    let hanging = layer.layer(TestService::new().never_respond());
    let probe = tokio::spawn(hanging.clone().oneshot(()));
    tokio::task::yield_now().await;
    assert_eq!(events.try_recv().unwrap().to, State::HalfOpen);
    assert_eq!(handle.snapshot().probes_admitted, 1);
    advance(Duration::from_secs(10)).await;
    assert_eq!(
        handle.state(),
        State::Open,
        "no verdict within the maximum wait"
    );
    let snap = handle.snapshot();
    assert_eq!((snap.state, snap.probes_admitted), (State::Open, 0));
    assert_eq!(
        snap.open_for, None,
        "the next open duration is not drawn yet"
    );
    assert_eq!(snap.in_state_for, Duration::ZERO);
    assert!(events.try_recv().is_err());
    probe.abort();
}

/// The state gauge of a breaker built under `recorder`: the one state set to 1.
fn gauged_state(snapshotter: &metrics_util::debugging::Snapshotter) -> Vec<String> {
    use metrics_util::debugging::DebugValue;
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let k = key.key();
            match (k.name(), value) {
                ("tower_patterns_breaker_state", DebugValue::Gauge(v)) if v.into_inner() == 1.0 => {
                    Some(k.labels().find(|l| l.key() == "state")?.value().to_owned())
                }
                _ => None,
            }
        })
        .collect()
}

/// The next transition, failing (rather than hanging) when none comes within a minute.
async fn next(events: &mut tokio::sync::broadcast::Receiver<Transition>) -> Transition {
    tokio::time::timeout(Duration::from_secs(60), events.recv())
        .await
        .expect("a transition within a minute")
        .expect("the breaker is alive")
}

#[tokio::test(start_paused = true)]
async fn automatic_transitions_move_the_gauge_without_traffic() {
    use metrics_util::debugging::DebuggingRecorder;

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        CircuitBreakerLayer::builder("auto")
            .count_window(2)
            .minimum_calls(2)
            .open_duration(Duration::from_secs(5))
            .max_wait_in_half_open(Some(Duration::from_secs(10)))
            .automatic_transition(true)
            .build()
            .unwrap()
    });
    let handle = layer.handle();
    let mut events = handle.subscribe();
    let failing = layer.layer(TestService::new().always_fail());
    for _ in 0..2 {
        let _ = failing.clone().oneshot(()).await;
    }
    let opened = next(&mut events).await;
    assert_eq!(opened.to, State::Open);
    assert_eq!(gauged_state(&snapshotter), ["open"]);

    // No call comes: the timer moves it to half-open when the open time is over.
    let half_open = next(&mut events).await;
    assert_eq!(
        (half_open.from, half_open.to, half_open.reason),
        (State::Open, State::HalfOpen, Reason::OpenElapsed)
    );
    assert_eq!(half_open.at - opened.at, Duration::from_secs(5));
    assert_eq!(gauged_state(&snapshotter), ["half_open"]);

    // Still no call: no verdict within the maximum wait reopens, on time too.
    let reopened = next(&mut events).await;
    assert_eq!(
        (reopened.to, reopened.reason),
        (State::Open, Reason::HalfOpenTimeout)
    );
    assert_eq!(reopened.at - half_open.at, Duration::from_secs(10));
    assert_eq!(gauged_state(&snapshotter), ["open"]);

    // A probe that passes closes it; a closed breaker schedules nothing.
    advance(Duration::from_secs(5)).await;
    tokio::task::yield_now().await;
    assert_eq!(next(&mut events).await.to, State::HalfOpen);
    let ok = layer.layer(TestService::new());
    for _ in 0..5 {
        ok.clone().oneshot(()).await.unwrap();
    }
    assert_eq!(next(&mut events).await.to, State::Closed);
    assert_eq!(gauged_state(&snapshotter), ["closed"]);
    advance(Duration::from_secs(60)).await;
    assert!(events.try_recv().is_err(), "nothing moves a closed circuit");
}

#[tokio::test(start_paused = true)]
async fn the_timer_holds_the_breaker_weakly() {
    let layer = CircuitBreakerLayer::builder("auto-dropped")
        .count_window(2)
        .minimum_calls(2)
        .open_duration(Duration::from_secs(5))
        .automatic_transition(true)
        .build()
        .unwrap();
    let handle = layer.handle();
    let mut events = handle.subscribe();
    let failing = layer.layer(TestService::new().always_fail());
    for _ in 0..2 {
        let _ = failing.clone().oneshot(()).await;
    }
    assert_eq!(next(&mut events).await.to, State::Open);
    drop((layer, handle, failing));
    // Had the timer kept the breaker alive, it would report half-open in 5 s; it is gone.
    let closed = tokio::time::timeout(Duration::from_secs(60), events.recv()).await;
    assert_eq!(
        closed,
        Ok(Err(tokio::sync::broadcast::error::RecvError::Closed))
    );
}

#[test]
fn a_trip_outside_a_runtime_schedules_nothing() {
    // The breaker is used without Tokio (polled by hand): tripping it cannot start a timer,
    // and does not panic; the handle still reads the timeout as a call would.
    let layer = CircuitBreakerLayer::builder("no-runtime")
        .count_window(2)
        .minimum_calls(2)
        .open_duration(Duration::from_millis(1))
        .automatic_transition(true)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(echo());
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    for _ in 0..2 {
        let mut call = std::pin::pin!(svc.clone().oneshot(false));
        assert!(matches!(
            call.as_mut().poll(&mut cx),
            std::task::Poll::Ready(Err(_))
        ));
    }
    let mut events = handle.subscribe();
    std::thread::sleep(Duration::from_millis(2));
    assert_eq!(handle.state(), State::HalfOpen);
    assert!(events.try_recv().is_err(), "no timer made the transition");
}

#[tokio::test(start_paused = true)]
async fn state_gauge_zeroes_the_old_state() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        CircuitBreakerLayer::builder("gauged")
            .count_window(2)
            .minimum_calls(2)
            .call_metrics(true)
            .build()
            .unwrap()
    });
    let svc = layer.layer(echo());
    metrics::with_local_recorder(&recorder, || ());
    for _ in 0..2 {
        let _ = svc.clone().oneshot(false).await;
    }
    let gauges: Mutex<Vec<(String, f64)>> = Mutex::new(Vec::new());
    let mut failures = 0;
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let k = key.key();
        match (k.name(), value) {
            ("tower_patterns_breaker_state", DebugValue::Gauge(v)) => {
                let state = k
                    .labels()
                    .find(|l| l.key() == "state")
                    .unwrap()
                    .value()
                    .to_owned();
                gauges.lock().unwrap().push((state, v.into_inner()));
            }
            ("tower_patterns_breaker_calls_total", DebugValue::Counter(n))
                if k.labels()
                    .any(|l| l.key() == "outcome" && l.value() == "failure") =>
            {
                failures = n;
            }
            _ => {}
        }
    }
    let mut gauges = gauges.into_inner().unwrap();
    gauges.sort_by(|a, b| a.0.cmp(&b.0));
    let one: Vec<_> = gauges.iter().filter(|(_, v)| *v == 1.0).collect();
    assert_eq!(one.len(), 1, "exactly one state is set: {gauges:?}");
    assert_eq!(one[0].0, "open");
    assert_eq!(failures, 2);
}

#[tokio::test(start_paused = true)]
async fn a_leaked_breaker_is_the_same_breaker() {
    let layer = CircuitBreakerLayer::builder("leaked")
        .count_window(4)
        .minimum_calls(4)
        .open_duration(Duration::from_secs(10))
        .half_open_probes(1)
        .build()
        .unwrap();
    let before = layer.handle();
    let leaked = layer.leak();
    let inner = TestService::new().always_fail();
    let svc = leaked.layer(inner.clone());
    for _ in 0..4 {
        let _ = svc.clone().oneshot(()).await;
    }
    assert_eq!(
        before.state(),
        State::Open,
        "the handle taken before sees the trip"
    );
    assert_eq!(leaked.handle().state(), State::Open);
    let err = svc.clone().oneshot(()).await.unwrap_err();
    assert_eq!(rejection(&err).kind(), RejectionKind::CircuitOpen);
    assert_eq!(inner.calls(), 4);

    // A probe whose future is dropped gives its permit back through the leaked reference.
    advance(Duration::from_secs(10)).await;
    let mut probe = svc.clone();
    std::future::poll_fn(|cx| Service::<()>::poll_ready(&mut probe, cx))
        .await
        .unwrap();
    drop(probe.call(()));
    assert_eq!(before.state(), State::HalfOpen);
    let mut echo = leaked.layer(echo());
    let ok = std::future::poll_fn(|cx| Service::<bool>::poll_ready(&mut echo, cx))
        .await
        .map(|()| echo.call(true));
    assert!(ok.unwrap().await.unwrap(), "the permit was given back");
    assert_eq!(
        before.state(),
        State::Closed,
        "the probe's success closed it"
    );
}

#[tokio::test(start_paused = true)]
async fn an_open_circuit_is_ready_without_its_inner_service() {
    let layer = CircuitBreakerLayer::builder("ready-open")
        .count_window(2)
        .minimum_calls(2)
        .open_duration(Duration::from_secs(10))
        .build()
        .unwrap();
    let (inner, mut handle) = tower_test::mock::pair::<(), ()>();
    let mut svc = layer.layer(inner);
    handle.allow(2);
    for _ in 0..2 {
        std::future::poll_fn(|cx| Service::<()>::poll_ready(&mut svc, cx))
            .await
            .unwrap();
        let call = svc.call(());
        let (_, reply) = handle.next_request().await.unwrap();
        reply.send_error(BoxError::from("down"));
        assert!(call.await.is_err());
    }
    assert_eq!(layer.handle().state(), State::Open);
    // The inner service has no capacity now: while open, readiness does not wait on it, and
    // the call fails fast.
    handle.allow(0);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(
        Service::<()>::poll_ready(&mut svc, &mut cx).is_ready(),
        "ready at once while open"
    );
    let err = svc.call(()).await.unwrap_err();
    assert_eq!(rejection(&err).kind(), RejectionKind::CircuitOpen);
    // Once the open time is over, readiness is the inner service's again (for the probe).
    advance(Duration::from_secs(10)).await;
    assert!(
        Service::<()>::poll_ready(&mut svc, &mut cx).is_pending(),
        "waits for the inner service before a probe"
    );
}

/// Shows the guard it is given, then records the outcome as `ErrorsAsFailures` would.
#[derive(Clone, Default)]
struct ShowGuard(Arc<Mutex<Vec<String>>>);

impl<Res, E, G: tower_patterns_core::classify::OnOutcome + std::fmt::Debug>
    tower_patterns_core::classify::Finish<Res, E, G> for ShowGuard
{
    type Response = Res;

    fn finish(&self, result: Result<Res, E>, guard: G) -> Result<Res, E> {
        self.0.lock().unwrap().push(format!("{guard:?}"));
        guard.on_outcome(if result.is_ok() {
            Outcome::Success
        } else {
            Outcome::Failure
        });
        result
    }
}

#[test]
fn debug_output_names_the_breaker_and_its_state() {
    let layer = CircuitBreakerLayer::builder("debugged").build().unwrap();
    let shown = format!("{layer:?}");
    assert!(
        shown.contains("debugged") && shown.contains("Closed"),
        "{shown}"
    );
    let svc = layer
        .clone()
        .layer(service_fn(|ok: bool| async move { Ok::<_, BoxError>(ok) }));
    let shown = format!("{svc:?}");
    assert!(
        shown.contains("debugged") && shown.contains("Closed"),
        "{shown}"
    );
    let leaked = layer.leak();
    let shown = format!("{leaked:?}");
    assert!(
        shown.contains("debugged") && shown.contains("Closed"),
        "{shown}"
    );
}

#[tokio::test]
async fn the_guard_shows_its_breaker_and_permit() {
    let shown = ShowGuard::default();
    let layer = CircuitBreakerLayer::builder("guarded")
        .classifier(shown.clone())
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|ok: bool| async move { Ok::<_, BoxError>(ok) }));
    assert!(svc.oneshot(true).await.unwrap());
    let shown = shown.0.lock().unwrap().join("");
    assert!(
        shown.contains("guarded") && shown.contains("Closed"),
        "{shown}"
    );
}
