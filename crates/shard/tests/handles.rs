//! The shard router's handle and metrics.

use std::sync::Arc;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower::{ServiceExt, service_fn};
use tower_patterns_core::{
    BoxError, KeyError,
    key::key_fn,
    observe::{Health, StateHandle},
};
use tower_patterns_shard::{Directory, Jump, Ring, ShardKey, ShardRouter};

/// Recorded counters and gauges: name, labels and value.
type Values = Vec<(String, Vec<(String, String)>, f64)>;

/// The counters and gauges recorded since the last snapshot (a snapshot takes the counts).
fn values(snapshotter: &Snapshotter) -> Values {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, value)| {
            let value = match value {
                DebugValue::Counter(n) => n as f64,
                DebugValue::Gauge(g) => g.into_inner(),
                DebugValue::Histogram(_) => return None,
            };
            let key = key.key();
            let labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            Some((key.name().to_owned(), labels, value))
        })
        .collect()
}

fn value(values: &Values, name: &str, router: &str) -> Option<f64> {
    values.iter().find_map(|(n, labels, v)| {
        let named = labels == &[("name".to_owned(), router.to_owned())];
        (n == name && named).then_some(*v)
    })
}

/// Shard `i` answers `(i, None)`: every read is a miss.
fn shards(
    n: usize,
) -> Vec<
    impl tower::Service<u64, Response = (usize, Option<u64>), Error = BoxError, Future: Send> + Clone,
> {
    (0..n)
        .map(|i| service_fn(move |_: u64| async move { Ok::<_, BoxError>((i, None)) }))
        .collect()
}

#[tokio::test]
async fn the_handle_reports_the_strategy_and_the_shards() {
    let router = ShardRouter::builder("users")
        .shards(shards(4))
        .strategy(Jump::new(4))
        .key(key_fn(|u: &u64| Ok::<_, KeyError>(*u)))
        .build()
        .unwrap();
    let handle = router.handle();
    assert_eq!((handle.pattern(), handle.name()), ("shard", "users"));
    assert_eq!(handle.health(), Health::Ready);
    assert_eq!((handle.shards(), handle.strategy()), (4, "jump"));
    assert_eq!(
        handle.report().to_json(),
        r#"{"pattern":"shard","name":"users","health":"ready","state":"jump","values":{"shards":4.0,"migrating_slots":0.0}}"#
    );
    assert_eq!(router.oneshot(7).await.unwrap().1, None);
}

#[tokio::test]
async fn a_bounded_load_ring_reports_its_calls_in_flight() {
    let router = ShardRouter::builder("ring")
        .shards(shards(3))
        .strategy(Ring::new(3, 16).unwrap().bounded_load(0.25).unwrap())
        .key(key_fn(|u: &u64| Ok::<_, KeyError>(*u)))
        .build()
        .unwrap();
    let report = router.handle().report();
    assert_eq!(report.state, "ring");
    assert_eq!(report.value("in_flight"), Some(0.0));
    assert_eq!(router.oneshot(1).await.unwrap().1, None);
}

#[tokio::test]
async fn moves_in_progress_migrating_requests_and_bad_keys_are_reported_and_counted() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let dir = Arc::new(Directory::new(2).unwrap());
    let by_user = key_fn(|u: &u64| Ok::<_, KeyError>(*u));
    let (three, two) = metrics::with_local_recorder(&recorder, || {
        let three = ShardRouter::builder("three")
            .shards(shards(3))
            .shared_strategy(dir.clone())
            .key(by_user)
            .fallback_when(
                |(_, found): &(usize, Option<u64>)| found.is_none(),
                |u: &u64| Some(*u),
            )
            .build()
            .unwrap();
        let two = ShardRouter::builder("two")
            .shards(shards(2))
            .shared_strategy(dir.clone())
            .key(key_fn(|u: &u64| match *u {
                u64::MAX => Err(KeyError::malformed("user id", "reserved")),
                u => Ok(u),
            }))
            .build()
            .unwrap();
        (three, two)
    });
    let now = values(&snapshotter);
    assert_eq!(
        value(&now, "tower_patterns_shard_shards", "three"),
        Some(3.0)
    );
    assert_eq!(value(&now, "tower_patterns_shard_shards", "two"), Some(2.0));
    for counter in [
        "key_errors_total",
        "unrouted_total",
        "migrating_requests_total",
    ] {
        let name = format!("tower_patterns_shard_{counter}");
        assert_eq!(
            value(&now, &name, "three"),
            Some(0.0),
            "{name} is registered when built"
        );
    }

    let handle = three.handle();
    assert_eq!(handle.strategy(), "directory");
    let moves = dir.plan_resize(3);
    dir.begin(&moves).unwrap();
    assert_eq!(handle.migrating_slots(), moves.len());
    assert_eq!(
        handle.report().value("migrating_slots"),
        Some(moves.len() as f64)
    );
    assert_eq!(
        handle.health(),
        Health::Ready,
        "a migration is not a failure"
    );

    // A read of a migrating slot misses on the new shard (2) and is read again on the old.
    let user = (0u64..).find(|u| u.slot() == moves[0].slot).unwrap();
    assert_eq!(three.clone().oneshot(user).await.unwrap().0, moves[0].from);
    // The two-shard router has no shard 2, and a bad key is refused.
    assert!(two.clone().oneshot(user).await.is_err());
    assert!(two.clone().oneshot(u64::MAX).await.is_err());
    let now = values(&snapshotter);
    assert_eq!(
        value(
            &now,
            "tower_patterns_shard_migrating_requests_total",
            "three"
        ),
        Some(1.0)
    );
    assert_eq!(
        value(&now, "tower_patterns_shard_unrouted_total", "two"),
        Some(1.0)
    );
    assert_eq!(
        value(&now, "tower_patterns_shard_key_errors_total", "two"),
        Some(1.0)
    );

    dir.complete(&moves).unwrap();
    assert_eq!(handle.report().value("migrating_slots"), Some(0.0));
}

#[test]
fn every_strategy_names_its_kind_and_only_a_directory_moves_slots() {
    use tower_patterns_shard::{Geo, Modulo, Range, Rendezvous, Route, Strategy};

    /// A strategy of the user's own: the defaults apply.
    struct Everything;
    impl Strategy for Everything {
        fn shards(&self) -> usize {
            1
        }
        fn route<K: ShardKey + ?Sized>(&self, _: &K) -> Route {
            Route::To(0)
        }
    }

    let kinds = [
        Modulo::new(2).kind(),
        Jump::new(2).kind(),
        Rendezvous::new(2).kind(),
        Ring::new(2, 4).unwrap().kind(),
        Range::new(vec![10]).unwrap().kind(),
        Directory::new(2).unwrap().kind(),
        Geo::new(vec![("eu", 0..1), ("us", 1..2)], "eu")
            .unwrap()
            .kind(),
        Everything.kind(),
    ];
    assert_eq!(
        kinds,
        [
            "modulo",
            "jump",
            "rendezvous",
            "ring",
            "range",
            "directory",
            "geo",
            "custom"
        ]
    );
    assert_eq!(Everything.migrating_slots(), 0);
    assert_eq!(Directory::new(2).unwrap().migrating_slots(), 0);

    let router = ShardRouter::builder("debugged")
        .shards(shards(1))
        .strategy(Everything)
        .key(key_fn(|u: &u64| Ok::<_, KeyError>(*u)))
        .build()
        .unwrap();
    let with_fallback = ShardRouter::builder("fallback")
        .shards(shards(1))
        .strategy(Jump::new(1))
        .key(key_fn(|u: &u64| Ok::<_, KeyError>(*u)))
        .fallback_when(
            |(_, found): &(usize, Option<u64>)| found.is_none(),
            |u: &u64| Some(*u),
        )
        .build()
        .unwrap();
    assert!(format!("{with_fallback:?}").contains("\"fallback\""));
    let builder = ShardRouter::builder("b").fallback_when(|_: &()| true, |_: &()| None);
    assert!(format!("{builder:?}").contains("\"b\""));
    let debug = format!("{:?}", router.handle());
    assert!(
        debug.contains("\"debugged\"") && debug.contains("shards: 1") && debug.contains("custom"),
        "{debug}"
    );
}
