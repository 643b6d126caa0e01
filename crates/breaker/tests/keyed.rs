//! The keyed breaker's handle (a `StateHandle` over every key's breaker) and metrics.

use std::task::{Context, Poll, Waker};

use http::{HeaderName, Request};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_patterns_breaker::{KeyedCircuitBreakerLayer, State};
use tower_patterns_core::{
    BoxError, Rejected, RejectionKind,
    key::HeaderKey,
    keyed::KeyBounds,
    observe::{Health, StateHandle},
};

/// The counters named `layer`, by metric name, from one snapshot (a snapshot takes the counts
/// it reads: they start again from 0).
fn counters(snapshotter: &Snapshotter, layer: &str) -> Vec<(String, u64)> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let k = key.key();
            match value {
                DebugValue::Counter(n)
                    if k.labels().any(|l| l.key() == "name" && l.value() == layer) =>
                {
                    Some((k.name().to_owned(), n))
                }
                _ => None,
            }
        })
        .collect()
}

fn count(counters: &[(String, u64)], name: &str) -> Option<u64> {
    counters.iter().find(|(n, _)| n == name).map(|(_, v)| *v)
}

#[tokio::test(start_paused = true)]
async fn the_keyed_handle_reports_every_key_and_its_metrics_count_keys_and_rejections() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        KeyedCircuitBreakerLayer::builder("hosts")
            .key(HeaderKey::new(HeaderName::from_static("x-host")))
            .consecutive_failures(1)
            .build()
            .unwrap()
    });
    let handle = layer.handle();
    assert_eq!(handle.pattern(), "breaker");
    assert_eq!(handle.name(), "hosts");
    assert_eq!(handle.health(), Health::Ready, "no key yet");
    assert_eq!(handle.report().value("keys"), Some(0.0));
    assert_eq!(
        count(
            &counters(&snapshotter, "hosts"),
            "tower_patterns_breaker_keys_total"
        ),
        Some(0),
        "registered when built"
    );

    let svc = layer.layer(service_fn(|req: Request<()>| async move {
        match req.headers()["x-host"].to_str().unwrap() {
            "bad" => Err::<(), BoxError>("down".into()),
            _ => Ok(()),
        }
    }));
    let to = |host: &str| Request::get("/").header("x-host", host).body(()).unwrap();
    let _ = svc.clone().oneshot(to("bad")).await;
    svc.clone().oneshot(to("good")).await.unwrap();
    svc.clone().oneshot(to("good")).await.unwrap();
    let err = svc.clone().oneshot(to("bad")).await.unwrap_err();
    assert_eq!(
        Rejected::find(&*err).unwrap().kind(),
        RejectionKind::CircuitOpen
    );

    assert_eq!(handle.get("bad").unwrap().state(), State::Open);
    let report = handle.report();
    assert_eq!(report.pattern, "breaker");
    assert_eq!(report.health, Health::Degraded, "one key of two is open");
    assert_eq!(report.state, "keyed");
    assert_eq!(report.value("keys"), Some(2.0));
    assert_eq!(report.value("unavailable"), Some(1.0));
    assert_eq!(report.value("degraded"), Some(0.0));
    assert_eq!(
        report.to_json(),
        r#"{"pattern":"breaker","name":"hosts","health":"degraded","state":"keyed","values":{"keys":2.0,"degraded":0.0,"unavailable":1.0}}"#
    );

    handle.get("good").unwrap().force_open();
    assert_eq!(handle.health(), Health::Unavailable, "every key is open");

    let counted = counters(&snapshotter, "hosts");
    assert_eq!(
        count(&counted, "tower_patterns_breaker_keys_total"),
        Some(2),
        "one per new key, not per call"
    );
    assert_eq!(
        count(&counted, "tower_patterns_breaker_rejected_total"),
        Some(1),
        "rejections count under the layer's name"
    );
    // One state per key cannot show in the layer's series: a keyed layer has no state gauge
    // (registered and never set, it would show the layer in no state at all).
    let state_gauges = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "tower_patterns_breaker_state")
        .count();
    assert_eq!(state_gauges, 0);
}

#[test]
fn keyed_settings_are_validated_by_build() {
    let key = || HeaderKey::new(HeaderName::from_static("x-host"));
    let err = KeyedCircuitBreakerLayer::builder("bp")
        .key(key())
        .backpressure()
        .build::<tower_patterns_core::key::AsciiKey>()
        .unwrap_err();
    assert_eq!(err.field(), "backpressure");
    let err = KeyedCircuitBreakerLayer::builder("none")
        .key(key())
        .key_bounds(KeyBounds {
            max_keys: 0,
            ..KeyBounds::default()
        })
        .build::<tower_patterns_core::key::AsciiKey>()
        .unwrap_err();
    assert_eq!(err.field(), "key_bounds");
    let err = KeyedCircuitBreakerLayer::builder("rate")
        .key(key())
        .failure_rate(2.0)
        .build::<tower_patterns_core::key::AsciiKey>()
        .unwrap_err();
    assert_eq!(err.field(), "failure_rate");
}

/// An inner service that is never ready.
#[derive(Clone)]
struct NeverReady;

impl Service<Request<()>> for NeverReady {
    type Response = ();
    type Error = BoxError;
    type Future = std::future::Ready<Result<(), BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Pending
    }

    fn call(&mut self, _: Request<()>) -> Self::Future {
        std::future::ready(Ok(()))
    }
}

#[test]
fn a_keyed_breaker_is_ready_when_its_inner_service_is() {
    // The circuit to judge is only known from the request, so readiness is the inner
    // service's: an unready dependency is not called unready.
    let layer = KeyedCircuitBreakerLayer::builder("hosts")
        .key(HeaderKey::new(HeaderName::from_static("x-host")))
        .build()
        .unwrap();
    let mut svc = layer.layer(NeverReady);
    let mut cx = Context::from_waker(Waker::noop());
    assert!(Service::<Request<()>>::poll_ready(&mut svc, &mut cx).is_pending());
}
