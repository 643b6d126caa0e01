//! The keyed bulkhead's handle (a `StateHandle` over every key's pool) and metrics.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use http::{HeaderName, Request};
use metrics::{
    Counter, CounterFn, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit,
};
use tower::{Layer, ServiceExt, service_fn};
use tower_patterns_bulkhead::{Aimd, KeyedBulkheadLayer};
use tower_patterns_core::{
    BoxError, ConfigError, Rejected, RejectionKind,
    key::{AsciiKey, HeaderKey},
    observe::{Health, StateHandle},
};

/// A recorder keeping every counter (a snapshot reads them without resetting them); the
/// crate has `metrics` but not `metrics-util`.
#[derive(Default)]
struct Counters(Mutex<Vec<(Key, Arc<AtomicU64>)>>);

struct Count(Arc<AtomicU64>);

impl CounterFn for Count {
    fn increment(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    fn absolute(&self, n: u64) {
        self.0.store(n, Ordering::Relaxed);
    }
}

impl Recorder for Counters {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut all = self.0.lock().unwrap();
        let count = match all.iter().find(|(k, _)| k == key) {
            Some((_, count)) => count.clone(),
            None => {
                let count = Arc::new(AtomicU64::new(0));
                all.push((key.clone(), count.clone()));
                count
            }
        };
        Counter::from_arc(Arc::new(Count(count)))
    }
    fn register_gauge(&self, _: &Key, _: &Metadata<'_>) -> Gauge {
        Gauge::noop()
    }
    fn register_histogram(&self, _: &Key, _: &Metadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

impl Counters {
    /// The counter `name{name = layer}`, if registered.
    fn get(&self, name: &str, layer: &str) -> Option<u64> {
        self.0.lock().unwrap().iter().find_map(|(k, v)| {
            (k.name() == name && k.labels().any(|l| l.key() == "name" && l.value() == layer))
                .then(|| v.load(Ordering::Relaxed))
        })
    }
}

type Hung = Pin<Box<dyn Future<Output = Result<(), BoxError>> + Send>>;

#[tokio::test(start_paused = true)]
async fn the_keyed_handle_reports_every_pool_and_its_metrics_count_keys_and_rejections() {
    let recorder = Counters::default();
    let layer = metrics::with_local_recorder(&recorder, || {
        KeyedBulkheadLayer::builder("tenants")
            .key(HeaderKey::new(HeaderName::from_static("x-tenant")))
            .partition(AsciiKey::from_static("big"), 2)
            .default_size(1)
            .build()
            .unwrap()
    });
    let handle = layer.handle();
    assert_eq!(handle.pattern(), "bulkhead");
    assert_eq!(handle.name(), "tenants");
    assert_eq!(handle.health(), Health::Ready);
    assert_eq!(handle.report().value("keys"), Some(1.0), "the fixed pool");

    // Calls for "slow" never answer: its pool of one fills.
    let svc = layer.layer(service_fn(|req: Request<()>| -> Hung {
        if req.headers()["x-tenant"] == "slow" {
            Box::pin(std::future::pending())
        } else {
            Box::pin(async { Ok(()) })
        }
    }));
    let to = |t: &str| Request::get("/").header("x-tenant", t).body(()).unwrap();
    let stuck = tokio::spawn(svc.clone().oneshot(to("slow")));
    tokio::task::yield_now().await;
    let err = svc.clone().oneshot(to("slow")).await.unwrap_err();
    assert_eq!(
        Rejected::find(&*err).unwrap().kind(),
        RejectionKind::BulkheadFull
    );
    svc.clone().oneshot(to("quick")).await.unwrap();
    svc.clone().oneshot(to("quick")).await.unwrap();

    assert_eq!(handle.get("slow").unwrap().in_flight(), 1);
    let report = handle.report();
    assert_eq!(report.health, Health::Degraded, "one pool of three is full");
    assert_eq!(report.value("keys"), Some(3.0));
    assert_eq!(report.value("degraded"), Some(1.0));
    assert_eq!(report.value("unavailable"), Some(0.0));
    assert!(report.to_json().starts_with(
        r#"{"pattern":"bulkhead","name":"tenants","health":"degraded","state":"keyed""#
    ));

    assert_eq!(
        recorder.get("tower_patterns_bulkhead_keys_total", "tenants"),
        Some(2),
        "one per pool made on demand, not per call"
    );
    assert_eq!(
        recorder.get("tower_patterns_bulkhead_rejected_total", "tenants"),
        Some(1),
        "on-demand pools count under the layer's name"
    );
    stuck.abort();
    let _ = stuck.await;
    assert_eq!(handle.health(), Health::Ready, "the permit came back");
}

#[test]
fn keyed_settings_are_validated_by_build() {
    let key = || HeaderKey::new(HeaderName::from_static("x-tenant"));
    let field = |r: Result<KeyedBulkheadLayer<HeaderKey, AsciiKey>, ConfigError>| {
        r.map(|_| ()).unwrap_err().field().to_owned()
    };
    let built = KeyedBulkheadLayer::builder("bp")
        .key(key())
        .backpressure()
        .build();
    assert_eq!(field(built), "backpressure");
    let built = KeyedBulkheadLayer::builder("ad")
        .key(key())
        .adaptive(Aimd::default())
        .build();
    assert_eq!(field(built), "adaptive");
    let built = KeyedBulkheadLayer::builder("zero")
        .key(key())
        .default_size(0)
        .build();
    assert_eq!(field(built), "max_concurrent");
    let built = KeyedBulkheadLayer::builder("wait")
        .key(key())
        .default_size(1)
        .max_waiting(3)
        .build();
    assert_eq!(field(built), "max_waiting");
    let built: Result<KeyedBulkheadLayer<HeaderKey, AsciiKey>, _> =
        KeyedBulkheadLayer::builder("ok")
            .key(key())
            .default_size(1)
            .max_wait(Duration::from_millis(5))
            .build();
    assert!(built.is_ok());
}
