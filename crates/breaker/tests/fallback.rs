//! The fallback layer, and the payment client with fallback: a payment gateway client with a
//! circuit breaker that queues payments while the circuit is open.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use tower::{ServiceBuilder, ServiceExt, service_fn};
use tower_patterns_breaker::{CircuitBreakerLayer, FallbackLayer, State, fallback::Cause};
use tower_patterns_core::{
    BoxError, KeyError, Rejected, RejectionKind,
    classify::{Outcome, predicate},
    key::key_fn,
};

#[derive(Clone, Debug, PartialEq)]
struct Payment {
    user: String,
    amount: u64,
}

#[derive(Clone, Debug, PartialEq)]
struct Charge {
    status: &'static str,
    user: String,
    amount: u64,
}

#[derive(Debug)]
struct GatewayTimeout;
impl std::fmt::Display for GatewayTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("payment gateway timed out")
    }
}
impl std::error::Error for GatewayTimeout {}

#[tokio::test(start_paused = true)]
async fn q3_payment_client_queues_while_the_circuit_is_open() {
    let gateway_up = Arc::new(AtomicBool::new(true));
    let gateway_calls = Arc::new(AtomicUsize::new(0));
    let gateway = {
        let up = gateway_up.clone();
        let calls = gateway_calls.clone();
        service_fn(move |p: Payment| {
            let up = up.load(Ordering::SeqCst);
            calls.fetch_add(1, Ordering::SeqCst);
            async move {
                if up {
                    Ok(Charge {
                        status: "CHARGED",
                        user: p.user,
                        amount: p.amount,
                    })
                } else {
                    Err(BoxError::from(GatewayTimeout))
                }
            }
        })
    };

    // Fallback 1: while the circuit is open, queue the payment and answer QUEUED.
    let queue: Arc<Mutex<Vec<Payment>>> = Arc::default();
    let enqueue = {
        let queue = queue.clone();
        service_fn(move |p: Payment| {
            let queue = queue.clone();
            async move {
                queue.lock().unwrap().push(p.clone());
                Ok::<_, BoxError>(Charge {
                    status: "QUEUED",
                    user: p.user,
                    amount: p.amount,
                })
            }
        })
    };
    // Fallback 2: on a gateway timeout, the user's previous charge of the same amount.
    let last_charge = FallbackLayer::last_good(
        key_fn(|p: &Payment| Ok::<_, KeyError>(format!("{}:{}", p.user, p.amount))),
        10_000,
        Some(Duration::from_secs(3_600)),
    )
    .unwrap();

    let breaker = CircuitBreakerLayer::builder("payment-gateway")
        .no_failure_rate()
        .consecutive_failures(5)
        .open_duration(Duration::from_secs(60))
        .build()
        .unwrap();
    let handle = breaker.handle();
    let client = ServiceBuilder::new()
        .layer(last_charge)
        .layer(FallbackLayer::service(enqueue).on_rejection_only())
        .layer(breaker)
        .service(gateway);

    let pay = |user: &str, amount| Payment {
        user: user.into(),
        amount,
    };

    let ok = client.clone().oneshot(pay("alice", 100)).await.unwrap();
    assert_eq!(ok.status, "CHARGED");

    gateway_up.store(false, Ordering::SeqCst);
    // A timeout: alice's previous charge of 100 stands in.
    let cached = client.clone().oneshot(pay("alice", 100)).await.unwrap();
    assert_eq!(cached.status, "CHARGED");
    // Bob has no previous charge: the failure stands.
    let err = client.clone().oneshot(pay("bob", 30)).await.unwrap_err();
    assert!(err.downcast_ref::<GatewayTimeout>().is_some(), "{err}");
    for _ in 0..3 {
        let _ = client.clone().oneshot(pay("carol", 5)).await;
    }
    assert_eq!(
        handle.state(),
        State::Open,
        "five gateway failures in a row"
    );
    assert_eq!(gateway_calls.load(Ordering::SeqCst), 6);

    // Open: payments are queued, the gateway is left alone.
    let queued = client.clone().oneshot(pay("dave", 70)).await.unwrap();
    assert_eq!(queued.status, "QUEUED");
    assert_eq!(*queue.lock().unwrap(), vec![pay("dave", 70)]);
    assert_eq!(gateway_calls.load(Ordering::SeqCst), 6);

    // After 60 s the gateway is back; a probe goes through and closes the circuit.
    gateway_up.store(true, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(60)).await;
    for _ in 0..5 {
        let charged = client.clone().oneshot(pay("erin", 10)).await.unwrap();
        assert_eq!(charged.status, "CHARGED");
    }
    assert_eq!(handle.state(), State::Closed);
}

#[tokio::test]
async fn value_and_function_fallbacks() {
    let failing = service_fn(|_: u8| async { Err::<u32, BoxError>("down".into()) });
    let value = ServiceBuilder::new()
        .layer(FallbackLayer::value(7u32))
        .service(failing);
    assert_eq!(value.oneshot(1).await.unwrap(), 7);

    let rejected = service_fn(|_: u8| async {
        Err::<u32, BoxError>(Rejected::new(RejectionKind::BulkheadFull).into())
    });
    let by_cause = ServiceBuilder::new()
        .layer(FallbackLayer::from_fn(|cause: Cause<u32>| {
            match cause.rejected().map(Rejected::kind) {
                Some(RejectionKind::BulkheadFull) => Ok(503),
                _ => Err(cause.into_error()),
            }
        }))
        .service(rejected);
    assert_eq!(by_cause.oneshot(1).await.unwrap(), 503);
}

#[tokio::test]
async fn rejections_only_lets_other_failures_through() {
    let failing = service_fn(|_: u8| async { Err::<u32, BoxError>("plain failure".into()) });
    let svc = ServiceBuilder::new()
        .layer(FallbackLayer::value(0u32).on_rejection_only())
        .service(failing);
    assert_eq!(
        svc.oneshot(1).await.unwrap_err().to_string(),
        "plain failure"
    );
}

#[tokio::test]
async fn failed_responses_trigger_it_through_the_classifier() {
    let svc = ServiceBuilder::new()
        .layer(FallbackLayer::value(200u16).classifier(predicate(
            |r: &Result<u16, BoxError>| match r {
                Ok(code) if *code >= 500 => Outcome::Failure,
                Ok(_) => Outcome::Success,
                Err(_) => Outcome::Failure,
            },
        )))
        .service(service_fn(
            |code: u16| async move { Ok::<_, BoxError>(code) },
        ));
    assert_eq!(svc.clone().oneshot(503).await.unwrap(), 200);
    assert_eq!(svc.oneshot(404).await.unwrap(), 404);
}

#[tokio::test(start_paused = true)]
async fn last_good_expires() {
    let up = Arc::new(AtomicBool::new(true));
    let svc = {
        let up = up.clone();
        service_fn(move |key: &'static str| {
            let up = up.load(Ordering::SeqCst);
            async move {
                if up {
                    Ok::<_, BoxError>(format!("fresh {key}"))
                } else {
                    Err("down".into())
                }
            }
        })
    };
    let svc = ServiceBuilder::new()
        .layer(
            FallbackLayer::last_good(
                key_fn(|k: &&'static str| Ok::<_, KeyError>(*k)),
                100,
                Some(Duration::from_secs(10)),
            )
            .unwrap(),
        )
        .service(svc);
    assert_eq!(svc.clone().oneshot("a").await.unwrap(), "fresh a");
    up.store(false, Ordering::SeqCst);
    assert_eq!(svc.clone().oneshot("a").await.unwrap(), "fresh a");
    assert!(
        svc.clone().oneshot("b").await.is_err(),
        "nothing stored for b"
    );
    tokio::time::advance(Duration::from_secs(11)).await;
    assert!(svc.oneshot("a").await.is_err(), "too old to stand in");
}
