//! The bulkhead keeps tower's readiness contract, shown with tower's own tests ported to it
//! on `tower_test::mock`: fail fast is always ready and sheds from `call` (tower's
//! `LoadShed` tests); backpressure reserves in `poll_ready` and stays pending while full,
//! however many wait (tower's `ConcurrencyLimit` tests). An error from `poll_ready` means the
//! service failed for good, so the bulkhead returns one only when its inner service does.

use std::time::Duration;

use http::HeaderName;
use tokio_test::{assert_pending, assert_ready_err, assert_ready_ok, task};
use tower::Layer;
use tower_patterns_bulkhead::{BulkheadBuilder, BulkheadLayer, KeyedBulkheadLayer};
use tower_patterns_core::{
    BoxError, Rejected, RejectionKind,
    key::{AsciiKey, HeaderKey},
};
use tower_test::{assert_request_eq, mock};

fn kind(err: &BoxError) -> RejectionKind {
    Rejected::find(&**err)
        .unwrap_or_else(|| panic!("not a rejection: {err}"))
        .kind()
}

fn backpressure(max_concurrent: u32) -> BulkheadBuilder {
    BulkheadLayer::builder("bp")
        .max_concurrent(max_concurrent)
        .backpressure()
}

// ----- fail fast: tower's LoadShed tests -----

#[tokio::test]
async fn fail_fast_when_the_inner_service_is_ready() {
    let layer = BulkheadLayer::builder("ff").build().unwrap();
    let (mut service, mut handle) = mock::spawn_layer(layer);

    assert_ready_ok!(service.poll_ready(), "fail fast is always ready");
    let mut response = task::spawn(service.call("hello"));
    assert_request_eq!(handle, "hello").send_response("world");
    assert_eq!(assert_ready_ok!(response.poll()), "world");
}

#[tokio::test]
async fn fail_fast_sheds_when_the_inner_service_is_not_ready() {
    let layer = BulkheadLayer::builder("ff").build().unwrap();
    let pool = layer.handle();
    let (mut service, mut handle) = mock::spawn_layer::<&str, (), _>(layer);
    handle.allow(0);

    assert_ready_ok!(service.poll_ready(), "fail fast is always ready");
    let mut response = task::spawn(service.call("hello"));
    let err = assert_ready_err!(response.poll());
    assert_eq!(kind(&err), RejectionKind::LoadShed, "{err}");
    assert_eq!(pool.in_flight(), 0, "no permit was taken");
    assert_pending!(handle.poll_request());

    // Once the inner service is ready again, calls go through.
    handle.allow(1);
    assert_ready_ok!(service.poll_ready());
    let mut response = task::spawn(service.call("again"));
    assert_request_eq!(handle, "again").send_response(());
    assert_ready_ok!(response.poll());
}

#[tokio::test]
async fn fail_fast_readiness_counts_for_one_call() {
    let layer = BulkheadLayer::builder("ff").build().unwrap();
    let (mut service, mut handle) = mock::spawn_layer::<&str, (), _>(layer);

    assert_ready_ok!(service.poll_ready());
    let first = service.call("first");
    // Not polled again: the next call is shed rather than sent to a service that was not
    // made ready for it (the mock would panic).
    let err = service.call("second").await.unwrap_err();
    assert_eq!(kind(&err), RejectionKind::LoadShed);
    assert_request_eq!(handle, "first").send_response(());
    first.await.unwrap();
    // A clone of a service polled ready starts without that readiness.
    assert_ready_ok!(service.poll_ready());
    let mut clone = service.clone();
    let err = clone.call("from a clone").await.unwrap_err();
    assert_eq!(kind(&err), RejectionKind::LoadShed);
}

#[tokio::test]
async fn fail_fast_passes_on_an_inner_readiness_error() {
    let layer = BulkheadLayer::builder("ff").build().unwrap();
    let (mut service, mut handle) = mock::spawn_layer::<&str, (), _>(layer);
    handle.send_error("gone");
    let err = assert_ready_err!(service.poll_ready());
    assert_eq!(err.to_string(), "gone");
}

#[tokio::test(start_paused = true)]
async fn fail_fast_with_a_wait_sheds_at_once_when_the_inner_service_is_not_ready() {
    let layer = BulkheadLayer::builder("wait")
        .max_wait(Duration::from_secs(5))
        .build()
        .unwrap();
    let (mut service, mut handle) = mock::spawn_layer::<&str, (), _>(layer);
    handle.allow(0);
    assert_ready_ok!(service.poll_ready());
    let mut response = task::spawn(service.call("hello"));
    let err = assert_ready_err!(
        response.poll(),
        "no waiting for a service that is not ready"
    );
    assert_eq!(kind(&err), RejectionKind::LoadShed);
}

#[tokio::test]
async fn partitions_are_always_ready_and_shed_when_the_inner_service_is_not() {
    let layer = KeyedBulkheadLayer::builder("parts")
        .key(HeaderKey::new(HeaderName::from_static("x-part")))
        .partition(AsciiKey::from_static("a"), 2)
        .build()
        .unwrap();
    let (mut service, mut handle) = mock::spawn_layer::<http::Request<()>, (), _>(layer);
    let req = || {
        http::Request::get("/")
            .header("x-part", "a")
            .body(())
            .unwrap()
    };
    handle.allow(0);
    assert_ready_ok!(service.poll_ready(), "partitions are always ready");
    let err = service.call(req()).await.unwrap_err();
    assert_eq!(kind(&err), RejectionKind::LoadShed);

    handle.allow(1);
    assert_ready_ok!(service.poll_ready());
    let response = service.call(req());
    let (_, send) = handle.next_request().await.unwrap();
    send.send_response(());
    response.await.unwrap();
    // Readiness counts for one call here too.
    let err = service.call(req()).await.unwrap_err();
    assert_eq!(kind(&err), RejectionKind::LoadShed);
}

// ----- backpressure: tower's ConcurrencyLimit tests -----

#[tokio::test]
async fn backpressure_limits_calls_through_poll_ready() {
    let (mut service, mut handle) = mock::spawn_layer(backpressure(2).build().unwrap());

    assert_ready_ok!(service.poll_ready());
    let r1 = service.call("hello 1");
    assert_ready_ok!(service.poll_ready());
    let r2 = service.call("hello 2");
    assert_pending!(service.poll_ready());
    assert!(!service.is_woken());

    assert_request_eq!(handle, "hello 1").send_response("world 1");
    assert_request_eq!(handle, "hello 2").send_response("world 2");
    assert_pending!(handle.poll_request());

    assert_eq!(r1.await.unwrap(), "world 1");
    assert!(service.is_woken(), "a returned permit wakes the waiter");
    assert_ready_ok!(service.poll_ready());
    let r3 = service.call("hello 3");
    assert_pending!(service.poll_ready());

    assert_eq!(r2.await.unwrap(), "world 2");
    assert_request_eq!(handle, "hello 3").send_response("world 3");
    assert_eq!(r3.await.unwrap(), "world 3");
}

#[tokio::test]
async fn backpressure_reserves_capacity_without_sending_a_request() {
    let (mut s1, mut handle) = mock::spawn_layer(backpressure(1).build().unwrap());
    let mut s2 = s1.clone();

    assert_ready_ok!(s1.poll_ready());
    assert_pending!(s2.poll_ready(), "s1 holds the permit");

    let r1 = s1.call("hello");
    assert_request_eq!(handle, "hello").send_response("world");
    assert_pending!(s2.poll_ready(), "until the response is taken");
    r1.await.unwrap();
    assert!(s2.is_woken());
    assert_ready_ok!(s2.poll_ready());
}

#[tokio::test]
async fn backpressure_frees_capacity_when_a_service_is_dropped() {
    let (mut s1, _handle) = mock::spawn_layer::<(), (), _>(backpressure(1).build().unwrap());
    let mut s2 = s1.clone();

    assert_ready_ok!(s1.poll_ready());
    assert_pending!(s2.poll_ready());
    drop(s1);
    assert!(s2.is_woken());
    assert_ready_ok!(s2.poll_ready());
}

#[tokio::test]
async fn backpressure_frees_capacity_on_an_error_response() {
    let (mut s1, mut handle) = mock::spawn_layer::<_, (), _>(backpressure(1).build().unwrap());
    let mut s2 = s1.clone();

    assert_ready_ok!(s1.poll_ready());
    let r1 = s1.call("hello");
    assert_request_eq!(handle, "hello").send_error("boom");
    r1.await.unwrap_err();
    assert_ready_ok!(s2.poll_ready());
}

#[tokio::test]
async fn backpressure_frees_capacity_when_a_response_future_is_dropped() {
    let (mut s1, _handle) = mock::spawn_layer::<_, (), _>(backpressure(1).build().unwrap());
    let mut s2 = s1.clone();

    assert_ready_ok!(s1.poll_ready());
    let r1 = s1.call("hello");
    assert_pending!(s2.poll_ready());
    drop(r1);
    assert_ready_ok!(s2.poll_ready());
}

#[tokio::test]
async fn backpressure_wakes_waiters_one_at_a_time_in_order() {
    let (mut s1, _handle) = mock::spawn_layer::<(), (), _>(backpressure(1).build().unwrap());
    let mut s2 = s1.clone();
    let mut s3 = s1.clone();

    assert_ready_ok!(s1.poll_ready());
    assert_pending!(s2.poll_ready());
    assert_pending!(s3.poll_ready());

    drop(s1);
    assert!(s2.is_woken());
    assert!(!s3.is_woken());
    // s2 leaves with the permit it was handed: it goes on to s3.
    drop(s2);
    assert!(s3.is_woken());
    assert_ready_ok!(s3.poll_ready());
}

#[tokio::test]
async fn backpressure_holds_its_permit_while_the_inner_service_is_not_ready() {
    let layer = backpressure(1).build().unwrap();
    let pool = layer.handle();
    let (mut service, mut handle) = mock::spawn_layer::<&str, (), _>(layer);
    handle.allow(0);
    assert_pending!(service.poll_ready());
    assert_eq!(
        pool.in_flight(),
        1,
        "reserved while the inner service gets ready"
    );
    handle.allow(1);
    assert!(service.is_woken());
    assert_ready_ok!(service.poll_ready());
    let response = service.call("hello");
    assert_request_eq!(handle, "hello").send_response(());
    response.await.unwrap();
    assert_eq!(pool.in_flight(), 0);
}

/// The defect: past the default room of 1,024 waiters, `poll_ready` failed, which a `Buffer`
/// or a balancer takes as the service being gone for good.
#[tokio::test]
async fn backpressure_keeps_the_waiter_past_1024_pending() {
    let layer = backpressure(1).build().unwrap();
    let pool = layer.handle();
    let (mut holder, _handle) = mock::spawn_layer::<(), (), _>(layer);
    assert_ready_ok!(holder.poll_ready());

    let mut waiters: Vec<_> = (0..1_025).map(|_| holder.clone()).collect();
    for waiter in &mut waiters {
        assert_pending!(waiter.poll_ready());
    }
    assert_eq!(pool.waiting(), 1_025);
    let mut last = waiters.pop().unwrap();
    // Everyone before it gives up, and the holder lets go: the last one's turn.
    drop(waiters);
    assert!(!last.is_woken());
    drop(holder);
    assert!(last.is_woken());
    assert_ready_ok!(last.poll_ready());
}

#[test]
fn backpressure_has_no_waiting_room_to_size() {
    let err = backpressure(1).max_waiting(10).build().unwrap_err();
    assert_eq!(err.field(), "max_waiting");
}

/// A deadline ends the wait with a rejected call, not a failed `poll_ready`.
#[tokio::test(start_paused = true)]
async fn backpressure_past_its_deadline_is_ready_and_rejects_the_call() {
    let layer = backpressure(1)
        .max_wait(Duration::from_secs(5))
        .build()
        .unwrap();
    let pool = layer.handle();
    let (mut s1, mut handle) = mock::spawn_layer::<&str, (), _>(layer);
    let mut s2 = s1.clone();

    assert_ready_ok!(s1.poll_ready());
    assert_pending!(s2.poll_ready());
    tokio::time::advance(Duration::from_secs(5)).await;
    assert!(s2.is_woken());
    assert_ready_ok!(s2.poll_ready(), "a full pool is not a failed service");
    assert_eq!(pool.waiting(), 0, "it left the queue");
    let err = s2.call("late").await.unwrap_err();
    assert_eq!(kind(&err), RejectionKind::BulkheadFull);
    assert_pending!(
        handle.poll_request(),
        "the rejected call never reached the service"
    );
    // The next poll waits again.
    assert_pending!(s2.poll_ready());
    assert_eq!(pool.waiting(), 1);
}

#[tokio::test]
async fn the_layer_wraps_any_service() {
    // The layer is cheap configuration: one pool for every service it makes.
    let layer = backpressure(1).build().unwrap();
    let (a, _ha) = mock::pair::<(), ()>();
    let (b, _hb) = mock::pair::<(), ()>();
    let mut a = mock::Spawn::new(layer.layer(a));
    let mut b = mock::Spawn::new(layer.layer(b));
    assert_ready_ok!(a.poll_ready());
    assert_pending!(b.poll_ready(), "one pool for both");
}

/// Calling without `poll_ready` breaks the contract; when the pool is full the call is
/// rejected at once, even with a deadline to wait by (waiting is `poll_ready`'s job).
#[tokio::test(start_paused = true)]
async fn backpressure_rejects_a_call_made_without_a_reservation() {
    let layer = backpressure(1)
        .max_wait(Duration::from_secs(5))
        .build()
        .unwrap();
    let (mut s1, mut handle) = mock::spawn_layer::<&str, (), _>(layer);
    let mut s2 = s1.clone();
    assert_ready_ok!(s1.poll_ready());
    let mut response = task::spawn(s2.call("unpolled"));
    let err = assert_ready_err!(response.poll());
    assert_eq!(kind(&err), RejectionKind::BulkheadFull);
    assert_pending!(handle.poll_request());
}
