//! The retry policy's and the hedging layer's handles and metrics.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU32, Ordering},
    },
    time::Duration,
};

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower::{Layer, ServiceExt, service_fn};
use tower_patterns_core::{
    BoxError,
    observe::{Health, StateHandle},
};
use tower_patterns_retry::{Backoff, HedgeDelay, HedgingLayer, RetryBudget, RetryPolicy};

/// The counters recorded since the last snapshot (a snapshot takes the counts): name, labels
/// and count.
type Counts = Vec<(String, Vec<(String, String)>, u64)>;

fn counts(snapshotter: &Snapshotter) -> Counts {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| match value {
            DebugValue::Counter(n) => {
                let key = key.key();
                let labels = key
                    .labels()
                    .map(|l| (l.key().to_owned(), l.value().to_owned()))
                    .collect();
                Some((key.name().to_owned(), labels, n))
            }
            _ => None,
        })
        .collect()
}

/// The count of `name` with exactly `labels` (in any order), if recorded.
fn counter(counts: &Counts, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
    counts.iter().find_map(|(n, l, count)| {
        let same = l.len() == labels.len()
            && labels
                .iter()
                .all(|(k, v)| l.iter().any(|(lk, lv)| lk == k && lv == v));
        (n == name && same).then_some(*count)
    })
}

/// Fails its first `failures` calls.
fn flaky(failures: u32) -> impl tower::Service<u32, Response = u32, Error = BoxError> + Clone {
    let calls = Arc::new(AtomicU32::new(0));
    service_fn(move |x: u32| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < failures {
                Err::<u32, BoxError>("flaky".into())
            } else {
                Ok(x)
            }
        }
    })
}

#[test]
fn the_retry_handle_reports_the_budget_and_turns_degraded_when_it_is_spent() {
    let policy = RetryPolicy::builder("inventory")
        .max_attempts(4)
        .budget(RetryBudget::new(10.0, 0.5).unwrap())
        .build()
        .unwrap();
    let handle = policy.handle();
    assert_eq!(handle.pattern(), "retry");
    assert_eq!(handle.name(), "inventory");
    assert_eq!(handle.health(), Health::Ready);
    assert_eq!(
        handle.report().to_json(),
        r#"{"pattern":"retry","name":"inventory","health":"ready","state":"retrying","values":{"max_attempts":4.0,"tokens":10.0,"max_tokens":10.0,"retries_in_flight":0.0}}"#
    );

    let budget = policy.budget().unwrap();
    for _ in 0..5 {
        budget.failure();
    }
    assert_eq!(
        handle.health(),
        Health::Degraded,
        "5 of 10 tokens: not above half"
    );
    let report = handle.report();
    assert_eq!(
        (report.health, report.state),
        (Health::Degraded, "throttled")
    );
    assert_eq!(report.value("tokens"), Some(5.0));
    budget.success();
    assert_eq!(
        handle.health(),
        Health::Ready,
        "5.5 tokens: above half again"
    );

    // A leaked policy shares the budget, so its handle reads the same state.
    let leaked = policy.leak();
    let leaked_handle = leaked.handle();
    assert_eq!(leaked_handle.name(), "inventory");
    assert_eq!(leaked_handle.report().value("tokens"), Some(5.5));
    assert!(Arc::ptr_eq(
        leaked.budget().unwrap(),
        leaked_handle.budget().unwrap()
    ));
}

#[tokio::test(start_paused = true)]
async fn the_handle_counts_retries_in_flight_until_they_end() {
    let policy = RetryPolicy::builder("slow")
        .backoff(Backoff::Constant(Duration::ZERO))
        .build()
        .unwrap();
    let handle = policy.handle();
    let calls = Arc::new(AtomicU32::new(0));
    let inner = service_fn(move |x: u32| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                return Err::<u32, BoxError>("first attempt fails".into());
            }
            std::future::pending::<()>().await;
            Ok(x)
        }
    });
    let mut call = Box::pin(policy.layer().layer(inner).oneshot(1));
    assert!(
        tokio::time::timeout(Duration::from_secs(1), &mut call)
            .await
            .is_err(),
        "the retry hangs"
    );
    assert_eq!(handle.report().value("retries_in_flight"), Some(1.0));
    assert!(format!("{handle:?}").contains("\"slow\""));
    drop(call);
    assert_eq!(handle.report().value("retries_in_flight"), Some(0.0));
}

#[test]
fn a_policy_without_a_budget_is_ready_and_says_so() {
    let handle = RetryPolicy::builder("free")
        .no_budget()
        .build()
        .unwrap()
        .handle();
    let report = handle.report();
    assert_eq!((report.health, report.state), (Health::Ready, "unbudgeted"));
    assert_eq!(report.value("tokens"), None);
    assert_eq!(report.value("max_attempts"), Some(3.0));
}

#[tokio::test(start_paused = true)]
async fn retries_and_give_ups_are_counted_by_name_and_reason() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let policy = metrics::with_local_recorder(&recorder, || {
        RetryPolicy::builder("metered")
            .max_attempts(3)
            .backoff(Backoff::Constant(Duration::from_millis(1)))
            .build()
            .unwrap()
    });
    let retries = |s: &Counts| {
        counter(
            s,
            "tower_patterns_retry_retries_total",
            &[("name", "metered")],
        )
    };
    let gave_up = |s: &Counts, reason| {
        counter(
            s,
            "tower_patterns_retry_gave_up_total",
            &[("name", "metered"), ("reason", reason)],
        )
    };

    let svc = policy.clone().layer().layer(flaky(0));
    assert_eq!(svc.oneshot(1).await.unwrap(), 1);
    assert_eq!(
        retries(&counts(&snapshotter)),
        Some(0),
        "a first success records nothing"
    );

    let svc = policy.clone().layer().layer(flaky(1));
    assert_eq!(svc.oneshot(2).await.unwrap(), 2);
    assert_eq!(retries(&counts(&snapshotter)), Some(1));

    let svc = policy.leak().layer().layer(flaky(10));
    assert!(svc.oneshot(3).await.is_err());
    let now = counts(&snapshotter);
    assert_eq!(
        retries(&now),
        Some(2),
        "two more retries, on the same counter: the leaked policy shares it"
    );
    assert_eq!(gave_up(&now, "attempts"), Some(1));
    assert_eq!(gave_up(&now, "budget"), Some(0));
}

/// The first call takes `slow`, later ones 1 ms.
fn slow_first(
    slow: Duration,
) -> impl tower::Service<u32, Response = u32, Error = BoxError> + Clone {
    let calls = Arc::new(AtomicU32::new(0));
    service_fn(move |x: u32| {
        let n = calls.fetch_add(1, Ordering::SeqCst);
        async move {
            tokio::time::sleep(if n == 0 {
                slow
            } else {
                Duration::from_millis(1)
            })
            .await;
            Ok::<_, BoxError>(x)
        }
    })
}

#[tokio::test(start_paused = true)]
async fn the_hedging_handle_and_metrics_count_copies_and_refusals() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let budget = Arc::new(RetryBudget::new(2.0, 0.1).unwrap());
    let layer = metrics::with_local_recorder(&recorder, || {
        HedgingLayer::builder("reads")
            .delay(HedgeDelay::Fixed(Duration::from_millis(10)))
            .budget(budget.clone())
            .copy(|x: &u32| Some(*x))
            .build()
            .unwrap()
    });
    let handle = layer.handle();
    assert_eq!((handle.pattern(), handle.name()), ("hedging", "reads"));
    assert_eq!(handle.health(), Health::Ready);
    let copies_and_declined = || {
        let now = counts(&snapshotter);
        (
            counter(
                &now,
                "tower_patterns_hedging_copies_total",
                &[("name", "reads")],
            ),
            counter(
                &now,
                "tower_patterns_hedging_declined_total",
                &[("name", "reads")],
            ),
        )
    };

    // Fast: no copy, nothing recorded.
    let svc = layer.layer(slow_first(Duration::from_millis(5)));
    assert_eq!(svc.oneshot(1).await.unwrap(), 1);
    assert_eq!(handle.copies(), 0);
    assert_eq!(copies_and_declined(), (Some(0), Some(0)));

    // Slow: one copy.
    let svc = layer.layer(slow_first(Duration::from_secs(1)));
    assert_eq!(svc.oneshot(2).await.unwrap(), 2);
    assert_eq!(copies_and_declined(), (Some(1), Some(0)));
    assert_eq!(handle.copies(), 1);

    // Slow with the budget spent: the copy is refused.
    budget.failure();
    let svc = layer.layer(slow_first(Duration::from_secs(1)));
    assert_eq!(svc.oneshot(3).await.unwrap(), 3);
    assert_eq!(
        copies_and_declined(),
        (Some(0), Some(1)),
        "no new copy, one refusal"
    );

    let debug = format!("{handle:?}");
    assert!(
        debug.contains("\"reads\"") && debug.contains("copies: 1"),
        "{debug}"
    );
    assert_eq!(
        handle.report().to_json(),
        r#"{"pattern":"hedging","name":"reads","health":"ready","state":"fixed","values":{"delay_seconds":0.01,"samples":3.0,"copies":1.0}}"#
    );
}

#[tokio::test(start_paused = true)]
async fn a_percentile_delay_reports_learning_until_it_has_samples() {
    let layer = HedgingLayer::builder("p90")
        .delay(HedgeDelay::Percentile {
            percentile: 0.9,
            min_samples: 2,
            fallback: Duration::from_secs(1),
        })
        .copy(|x: &u32| Some(*x))
        .build()
        .unwrap();
    let handle = layer.handle();
    let report = handle.report();
    assert_eq!(report.state, "learning");
    assert_eq!(report.value("delay_seconds"), Some(1.0), "the fallback");
    let svc = layer.layer(service_fn(|x: u32| async move {
        tokio::time::sleep(Duration::from_millis(3)).await;
        Ok::<_, BoxError>(x)
    }));
    for i in 0..2 {
        svc.clone().oneshot(i).await.unwrap();
    }
    let report = handle.report();
    assert_eq!(report.state, "percentile");
    assert_eq!(report.value("samples"), Some(2.0));
    assert_eq!(
        report.value("delay_seconds"),
        Some(0.004096),
        "the upper bound of the 3 ms bucket"
    );
}

#[test]
fn a_percentile_outside_zero_to_one_is_a_typed_error() {
    let err = HedgingLayer::builder("bad")
        .delay(HedgeDelay::Percentile {
            percentile: 1.5,
            min_samples: 1,
            fallback: Duration::from_millis(1),
        })
        .copy(|x: &u32| Some(*x))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "delay");
}
