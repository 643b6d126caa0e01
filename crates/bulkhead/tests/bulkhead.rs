//! The bulkhead's behaviour, on paused time.

use std::{
    sync::{Arc, mpsc},
    time::Duration,
};

use bytes::Bytes;
use http::{HeaderName, Request, Response};
use http_body_util::BodyExt;
use tokio::time::{Instant, advance};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_patterns_bulkhead::{
    Aimd, BulkheadLayer, IsolatedExecutor, IsolatedLayer, KeyedBulkheadLayer,
};
use tower_patterns_core::{
    BoxError, KeyError, Rejected, RejectionKind,
    key::{AsciiKey, HeaderKey},
};
use tower_patterns_testkit::TestService;

fn is_full(err: &BoxError) -> bool {
    Rejected::find(&**err).is_some_and(|r| r.kind() == RejectionKind::BulkheadFull)
}

#[tokio::test(start_paused = true)]
async fn a_hung_dependency_fills_its_pool_and_the_other_pool_still_answers_at_once() {
    let pools = KeyedBulkheadLayer::builder("deps")
        .key(HeaderKey::new(HeaderName::from_static("x-dep")))
        .partition(AsciiKey::from_static("slow"), 4)
        .partition(AsciiKey::from_static("fast"), 4)
        .build()
        .unwrap();
    let hung = TestService::new().never_respond();
    let fast = TestService::new();
    let svc = pools.layer(service_fn({
        let (hung, fast) = (hung.clone(), fast.clone());
        move |req: Request<()>| {
            let dep = req.headers()["x-dep"].to_str().unwrap().to_owned();
            let (mut hung, mut fast) = (hung.clone(), fast.clone());
            async move {
                if dep == "slow" {
                    hung.call(()).await
                } else {
                    fast.call(()).await
                }
            }
        }
    }));
    let to = |dep: &str| Request::get("/").header("x-dep", dep).body(()).unwrap();

    let stuck: Vec<_> = (0..4)
        .map(|_| tokio::spawn(svc.clone().oneshot(to("slow"))))
        .collect();
    tokio::task::yield_now().await;
    assert_eq!(hung.in_flight(), 4);
    assert_eq!(pools.handle().get("slow").unwrap().available(), 0);
    let err = svc.clone().oneshot(to("slow")).await.unwrap_err();
    assert!(is_full(&err), "{err}");

    let start = Instant::now();
    for _ in 0..100 {
        svc.clone().oneshot(to("fast")).await.unwrap();
    }
    assert_eq!(start.elapsed(), Duration::ZERO, "answered at once");
    assert_eq!(fast.calls(), 100);
    assert_eq!(
        hung.calls(),
        4,
        "the fifth slow call never reached the dependency"
    );

    let unknown = svc.clone().oneshot(to("other")).await.unwrap_err();
    assert!(unknown.downcast_ref::<KeyError>().is_some(), "{unknown}");
    for s in stuck {
        s.abort();
    }
}

#[tokio::test(start_paused = true)]
async fn waiters_are_admitted_in_order_and_time_out() {
    let layer = BulkheadLayer::builder("wait")
        .max_concurrent(1)
        .max_wait(Duration::from_secs(5))
        .max_waiting(2)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(TestService::new().delay(Duration::from_secs(3)));

    let first = tokio::spawn(svc.clone().oneshot("first"));
    tokio::task::yield_now().await;
    let second = tokio::spawn(svc.clone().oneshot("second"));
    tokio::task::yield_now().await;
    let third = tokio::spawn(svc.clone().oneshot("third"));
    tokio::task::yield_now().await;
    assert_eq!(handle.waiting(), 2);
    let err = svc.clone().oneshot("fourth").await.unwrap_err();
    assert!(is_full(&err), "the waiting room holds two");

    // first ends at 3 s, second (waited 3 s) ends at 6 s; third would start at 6 s,
    // past its 5 s wait: rejected.
    assert_eq!(first.await.unwrap().unwrap(), "first");
    assert_eq!(second.await.unwrap().unwrap(), "second");
    let err = third.await.unwrap().unwrap_err();
    assert!(is_full(&err), "{err}");
    assert_eq!(handle.in_flight(), 0);
    assert_eq!(handle.waiting(), 0);
}

#[tokio::test(start_paused = true)]
async fn fail_fast_by_default() {
    let layer = BulkheadLayer::builder("fast")
        .max_concurrent(2)
        .build()
        .unwrap();
    let inner = TestService::new().never_respond();
    let svc = layer.layer(inner.clone());
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(svc.clone().oneshot(())))
        .collect();
    tokio::task::yield_now().await;
    let start = Instant::now();
    let err = svc.clone().oneshot(()).await.unwrap_err();
    assert!(is_full(&err));
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(inner.calls(), 2);
    // A waiter (a call) that is dropped gives its permit back.
    for h in held {
        h.abort();
    }
    tokio::task::yield_now().await;
    assert_eq!(layer.handle().in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn backpressure_reserves_the_permit_in_poll_ready() {
    let layer = BulkheadLayer::builder("bp")
        .max_concurrent(1)
        .backpressure()
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(TestService::new().delay(Duration::from_secs(2)));
    let busy = tokio::spawn(svc.clone().oneshot(1));
    tokio::task::yield_now().await;
    let mut waiting = svc.clone();
    let start = Instant::now();
    std::future::poll_fn(|cx| Service::<u32>::poll_ready(&mut waiting, cx))
        .await
        .unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(2),
        "ready when the permit came back"
    );
    assert_eq!(handle.in_flight(), 1, "reserved for us");
    assert_eq!(waiting.call(2).await.unwrap(), 2);
    busy.await.unwrap().unwrap();
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn http_permits_can_last_until_the_body_ends() {
    let layer = BulkheadLayer::builder("body")
        .max_concurrent(1)
        .hold_until_body_end()
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(service_fn(|_: Request<()>| async {
        Ok::<_, BoxError>(Response::new(http_body_util::Full::new(
            Bytes::from_static(b"streamed"),
        )))
    }));
    let res = svc.clone().oneshot(Request::new(())).await.unwrap();
    assert_eq!(handle.in_flight(), 1, "the body is still being sent");
    assert!(is_full(
        &svc.clone().oneshot(Request::new(())).await.unwrap_err()
    ));
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "streamed");
    assert_eq!(handle.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn partitions_follow_the_seed_and_unknown_keys_get_the_default() {
    let layer = KeyedBulkheadLayer::builder("services")
        .key(HeaderKey::new(HeaderName::from_static("x-service")))
        .partition(AsciiKey::from_static("A"), 40)
        .partition(AsciiKey::from_static("B"), 30)
        .partition(AsciiKey::from_static("C"), 30)
        .default_size(5)
        .build()
        .unwrap();
    for (key, size) in [("A", 40), ("B", 30), ("C", 30), ("D", 5)] {
        let h = layer
            .handle()
            .get_or_make(&AsciiKey::try_from(key).unwrap())
            .unwrap();
        assert_eq!(h.limit(), size, "{key}");
        assert_eq!(h.name(), format!("services/{key}"));
    }
    let twice = KeyedBulkheadLayer::builder("dup")
        .key(HeaderKey::new(HeaderName::from_static("x-service")))
        .partition(AsciiKey::from_static("A"), 1)
        .partition(AsciiKey::from_static("A"), 2)
        .build();
    assert_eq!(twice.unwrap_err().field(), "partition");
}

#[tokio::test]
async fn the_isolated_executor_keeps_blocking_work_off_the_callers_runtime() {
    let executor = IsolatedExecutor::new("blocking", 1).unwrap();
    let layer = IsolatedLayer::new(executor, 2).unwrap();
    let (release, gate) = mpsc::channel::<()>();
    let gate = Arc::new(std::sync::Mutex::new(gate));
    let svc = layer.clone().layer(service_fn(move |n: u64| {
        let gate = gate.clone();
        async move {
            // Blocks its thread until released: on the caller's runtime this would stall it.
            gate.lock().unwrap().recv().unwrap();
            Ok::<_, BoxError>(n * 2)
        }
    }));
    let blocked = tokio::spawn(svc.clone().oneshot(21));
    let queued = tokio::spawn(svc.clone().oneshot(1));
    // This runtime (current-thread) still runs other tasks while both are out.
    for _ in 0..3 {
        tokio::task::yield_now().await;
    }
    let err = svc.clone().oneshot(0).await.unwrap_err();
    assert!(is_full(&err), "room for two");
    release.send(()).unwrap();
    release.send(()).unwrap();
    assert_eq!(blocked.await.unwrap().unwrap(), 42);
    assert_eq!(queued.await.unwrap().unwrap(), 2);
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_adaptive_limit_backs_off_on_rejections_and_grows_back() {
    let layer = BulkheadLayer::builder("adaptive")
        .adaptive(Aimd::new(4, 1, 8, 0.5, Duration::from_secs(1)))
        .build()
        .unwrap();
    let handle = layer.handle();
    assert_eq!(handle.limit(), 4);
    let hung = layer.layer(TestService::new().never_respond());
    let held: Vec<_> = (0..4)
        .map(|_| tokio::spawn(hung.clone().oneshot(())))
        .collect();
    tokio::task::yield_now().await;
    assert!(hung.clone().oneshot(()).await.is_err());
    assert_eq!(handle.limit(), 2, "halved on the rejection");
    for h in held {
        h.abort();
    }
    tokio::task::yield_now().await;
    // Busy, fast, successful calls grow it again, one at a time.
    let quick = layer.layer(TestService::new().delay(Duration::from_millis(10)));
    let busy: Vec<_> = (0..2)
        .map(|_| tokio::spawn(quick.clone().oneshot(())))
        .collect();
    advance(Duration::from_millis(10)).await;
    for b in busy {
        b.await.unwrap().unwrap();
    }
    assert!(handle.limit() > 2, "grew back to {}", handle.limit());
}

#[test]
fn waiting_settings_are_checked_together() {
    let field =
        |builder: tower_patterns_bulkhead::BulkheadBuilder| builder.build().map_err(|e| e.field());
    // No waiting: a room of 0 is what it is anyway, a larger one a contradiction.
    assert!(field(BulkheadLayer::builder("x").max_waiting(0)).is_ok());
    assert_eq!(
        field(BulkheadLayer::builder("x").max_waiting(1)).unwrap_err(),
        "max_waiting"
    );
    // Waiting: a room of at least one.
    let wait = || BulkheadLayer::builder("x").max_wait(Duration::from_secs(1));
    assert!(field(wait().max_waiting(1)).is_ok());
    assert_eq!(field(wait().max_waiting(0)).unwrap_err(), "max_waiting");
    // Backpressure: callers wait in poll_ready, there is no room to size.
    assert!(field(BulkheadLayer::builder("x").backpressure()).is_ok());
    assert_eq!(
        field(BulkheadLayer::builder("x").backpressure().max_waiting(0)).unwrap_err(),
        "max_waiting"
    );
}

#[tokio::test(start_paused = true)]
async fn the_default_waiting_room_holds_1024_calls() {
    let layer = BulkheadLayer::builder("room")
        .max_concurrent(1)
        .max_wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(TestService::new().never_respond());
    let mut calls: Vec<_> = (0..1_026)
        .map(|_| tokio::spawn(svc.clone().oneshot(())))
        .collect();
    // The scheduler runs a batch of tasks per turn: enough turns for all of them.
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
    assert_eq!(handle.in_flight(), 1);
    assert_eq!(handle.waiting(), 1_024);
    let turned_away = calls.pop().unwrap().await.unwrap().unwrap_err();
    assert!(is_full(&turned_away), "{turned_away}");
    for call in calls {
        call.abort();
    }
}

#[test]
fn bad_settings_are_typed_errors() {
    assert_eq!(
        BulkheadLayer::builder("x")
            .max_concurrent(0)
            .build()
            .unwrap_err()
            .field(),
        "max_concurrent"
    );
    assert_eq!(
        BulkheadLayer::builder("x")
            .max_waiting(5)
            .build()
            .unwrap_err()
            .field(),
        "max_waiting"
    );
    assert_eq!(
        BulkheadLayer::builder("x")
            .adaptive(Aimd::new(50, 1, 10, 0.9, Duration::from_secs(1)))
            .build()
            .unwrap_err()
            .field(),
        "adaptive"
    );
}

#[tokio::test(start_paused = true)]
async fn debug_output_shows_the_pool() {
    let builder = BulkheadLayer::builder("dbg").max_concurrent(3);
    assert!(format!("{builder:?}").contains("max_concurrent: 3"));
    let layer = builder.build().unwrap();
    let shown = format!("{layer:?}");
    assert!(
        shown.contains("\"dbg\"") && shown.contains("limit: 3"),
        "{shown}"
    );
    let mut svc = layer.layer(TestService::new().never_respond());
    assert!(format!("{svc:?}").contains("\"dbg\""));
    std::future::poll_fn(|cx| Service::<()>::poll_ready(&mut svc, cx))
        .await
        .unwrap();
    let called = svc.call(());
    assert!(format!("{called:?}").contains("called"));
    let held: Vec<_> = (0..2)
        .map(|_| tokio::spawn(svc.clone().oneshot(())))
        .collect();
    tokio::task::yield_now().await;
    let rejected = svc.clone().oneshot(());
    assert!(format!("{:?}", layer.handle()).contains("in_flight: 3"));
    assert!(is_full(&rejected.await.unwrap_err()));
    for h in held {
        h.abort();
    }

    let parts = KeyedBulkheadLayer::builder("parts")
        .key(HeaderKey::new(HeaderName::from_static("x-part")))
        .partition(AsciiKey::from_static("A"), 4)
        .default_size(2);
    assert!(format!("{parts:?}").contains("default_size: Some(2)"));
    let parts = parts.build().unwrap();
    assert!(format!("{parts:?}").contains("fixed_partitions: 1"));
    let svc = parts.layer(TestService::new());
    assert!(format!("{svc:?}").contains("\"parts\""));
}
