//! The router and scatter-gather, on paused time.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering::SeqCst},
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::Instant;
use tower::{Service, ServiceExt, service_fn, steer::Steer};
use tower_patterns_core::{BoxError, KeyError, key::key_fn};
use tower_patterns_shard::{
    Concat, Directory, Jump, Partial, Route, ScatterGather, ShardError, ShardRouter, ShardTimeout,
    Strategy,
};
use tower_patterns_testkit::TestService;

fn by_user() -> impl tower_patterns_core::KeyExtractor<u64, Key = u64> + Clone {
    key_fn(|u: &u64| Ok::<_, KeyError>(*u))
}

/// A shard that answers every request with its user id, or, when stuck, is never ready: its
/// `poll_ready` stays `Pending` for ever (as tower-test's mock after `handle.allow(0)`). It
/// counts the readiness polls and the calls it gets.
#[derive(Clone)]
struct Shard {
    stuck: bool,
    polled: Arc<AtomicUsize>,
    calls: Arc<AtomicUsize>,
}

impl Shard {
    fn new(stuck: bool) -> Self {
        Self {
            stuck,
            polled: Arc::new(AtomicUsize::new(0)),
            calls: Arc::new(AtomicUsize::new(0)),
        }
    }
}

impl Service<u64> for Shard {
    type Response = u64;
    type Error = BoxError;
    type Future = std::future::Ready<Result<u64, BoxError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.polled.fetch_add(1, SeqCst);
        if self.stuck {
            Poll::Pending
        } else {
            Poll::Ready(Ok(()))
        }
    }

    fn call(&mut self, user: u64) -> Self::Future {
        self.calls.fetch_add(1, SeqCst);
        std::future::ready(Ok(user))
    }
}

/// Four shards by jump hash, the one of user 0 stuck.
fn shards_with_one_stuck() -> (Vec<Shard>, usize) {
    let stuck = Jump::new(4).route(&0u64).shard();
    ((0..4).map(|i| Shard::new(i == stuck)).collect(), stuck)
}

#[tokio::test(start_paused = true)]
async fn a_shard_that_is_never_ready_holds_back_only_its_own_requests() {
    let (shards, stuck_shard) = shards_with_one_stuck();
    let router = ShardRouter::builder("users")
        .shards(shards.clone())
        .strategy(Jump::new(4))
        .key(by_user())
        .build()
        .unwrap();
    let mut probe = router.clone();
    let ready = tokio::time::timeout(Duration::from_secs(1), probe.ready()).await;
    assert!(
        ready.is_ok_and(|r| r.is_ok()),
        "the router is ready though one shard is not"
    );
    let stuck = tokio::spawn(router.clone().oneshot(0));
    tokio::task::yield_now().await;
    assert!(
        shards[stuck_shard].polled.load(SeqCst) > 0,
        "user 0's request waits on its shard's readiness"
    );

    let start = Instant::now();
    let mut served = 0;
    for user in 1..200u64 {
        if Jump::new(4).route(&user).shard() != stuck_shard {
            assert_eq!(router.clone().oneshot(user).await.unwrap(), user);
            served += 1;
        }
    }
    assert!(served > 100);
    assert_eq!(
        start.elapsed(),
        Duration::ZERO,
        "no request waited for the stuck shard"
    );
    let calls: usize = shards.iter().map(|s| s.calls.load(SeqCst)).sum();
    assert_eq!(
        calls, served,
        "every other request was answered by its shard"
    );
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!stuck.is_finished(), "user 0's request still waits");
    assert_eq!(
        shards[stuck_shard].calls.load(SeqCst),
        0,
        "a shard that is not ready is never called"
    );
    stuck.abort();
}

#[tokio::test(start_paused = true)]
async fn tower_steer_is_not_ready_while_one_shard_is_not() {
    // The comparison the router is built against, on the same shards: Steer polls every
    // service ready before it routes, so the one stuck shard stops requests for all of them.
    let (shards, stuck_shard) = shards_with_one_stuck();
    let mut steer = Steer::new(shards.clone(), |user: &u64, _: &[Shard]| {
        Jump::new(4).route(user).shard()
    });
    let polled = tokio::time::timeout(Duration::from_secs(1), steer.ready()).await;
    assert!(
        polled.is_err(),
        "Steer is held back by the one shard that is not ready"
    );
    assert!(shards[stuck_shard].polled.load(SeqCst) > 0);
    let calls: usize = shards.iter().map(|s| s.calls.load(SeqCst)).sum();
    assert_eq!(calls, 0);
}

#[tokio::test]
async fn a_bad_key_is_a_typed_error() {
    let shards = vec![TestService::new(); 2];
    let router = ShardRouter::builder("users")
        .shards(shards)
        .strategy(Jump::new(2))
        .key(key_fn(|s: &&str| {
            s.parse::<u64>()
                .map_err(|_| KeyError::malformed("user id", "not a number"))
        }))
        .build()
        .unwrap();
    let err = router.oneshot("abc").await.unwrap_err();
    assert!(err.downcast_ref::<KeyError>().is_some(), "{err}");
    let too_few: Result<ShardRouter<_, _, _>, _> = ShardRouter::builder("users")
        .shards(vec![TestService::new(); 2])
        .strategy(Jump::new(3))
        .key(by_user())
        .build();
    assert_eq!(
        too_few.unwrap_err().field(),
        "shards",
        "too few shards for the strategy"
    );
}

#[tokio::test]
async fn a_migrating_slot_reads_the_new_shard_then_the_old() {
    // Shard i holds the users whose id ends in i... except the new shard, empty at first.
    let shards: Vec<_> = (0..3usize)
        .map(|i| {
            service_fn(move |user: u64| async move {
                let found = i != 2; // shard 2 is new: nothing copied yet
                Ok::<_, BoxError>((i, found.then_some(user)))
            })
        })
        .collect();
    let dir = Arc::new(Directory::new(2).unwrap());
    let router = ShardRouter::builder("users")
        .shards(shards)
        .shared_strategy(dir.clone())
        .key(by_user())
        .fallback_when(
            |(_, found): &(usize, Option<u64>)| found.is_none(),
            |u: &u64| Some(*u),
        )
        .build()
        .unwrap();
    let moves = dir.plan_resize(3);
    let slot = moves[0].slot;
    let user = (0u64..)
        .find(|u| tower_patterns_shard::ShardKey::slot(u) == slot)
        .unwrap();
    assert_eq!(router.clone().oneshot(user).await.unwrap().0, moves[0].from);

    dir.begin(&moves).unwrap();
    assert!(matches!(dir.route(&user), Route::Migrating { .. }));
    let (served_by, found) = router.clone().oneshot(user).await.unwrap();
    assert_eq!(
        found,
        Some(user),
        "not yet on the new shard: the old one answered"
    );
    assert_eq!(served_by, moves[0].from);

    dir.complete(&moves).unwrap();
    let (served_by, found) = router.oneshot(user).await.unwrap();
    assert_eq!(served_by, 2, "after the move only the new shard is asked");
    assert_eq!(found, None);
}

#[tokio::test(start_paused = true)]
async fn scatter_gather_names_the_missing_shard_or_fails() {
    let shards: Vec<_> = (0..4u32)
        .map(|i| {
            service_fn(move |_: ()| async move {
                match i {
                    1 => Err::<Vec<u32>, BoxError>("disk full".into()),
                    2 => {
                        tokio::time::sleep(Duration::from_secs(60)).await;
                        Ok(vec![i])
                    }
                    _ => Ok(vec![i, i + 10]),
                }
            })
        })
        .collect();
    let partial = ScatterGather::new(shards.clone(), Concat)
        .timeout(Duration::from_secs(1))
        .partial(Partial::Allow);
    let start = Instant::now();
    let got = partial.clone().oneshot(()).await.unwrap();
    let mut values = got.value;
    values.sort_unstable();
    assert_eq!(values, vec![0, 3, 10, 13]);
    let mut missing: Vec<usize> = got.missing.iter().map(|(s, _)| *s).collect();
    missing.sort_unstable();
    assert_eq!(missing, vec![1, 2]);
    assert!(
        got.missing
            .iter()
            .any(|(s, e)| *s == 2 && e.downcast_ref::<ShardTimeout>().is_some())
    );
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(1),
        "the slow shard's timeout"
    );

    let strict = ScatterGather::new(shards, Concat).timeout(Duration::from_secs(1));
    let err = strict.oneshot(()).await.unwrap_err();
    assert_eq!(err.downcast_ref::<ShardError>().unwrap().shard(), 1);
}

#[tokio::test(start_paused = true)]
async fn scatter_gather_respects_its_concurrency_cap() {
    let counter = TestService::new().delay(Duration::from_secs(1));
    let shards = vec![counter.clone(); 8];
    let sg = ScatterGather::new(shards, Concat).concurrency(2);
    let start = Instant::now();
    let probe = counter.clone();
    let watcher = tokio::spawn(async move {
        let mut peak = 0;
        for _ in 0..10 {
            peak = peak.max(probe.in_flight());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        peak
    });
    let got = sg.oneshot(vec![1u8]).await.unwrap();
    assert_eq!(got.value.len(), 8);
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(4),
        "8 shards, 2 at a time, 1 s each"
    );
    assert_eq!(watcher.await.unwrap(), 2);

    let some = ScatterGather::new(vec![TestService::new(); 8], Concat).call_some([1, 3], vec![7u8]);
    assert_eq!(some.await.unwrap().value, vec![7, 7]);
}

#[tokio::test]
async fn replicas_inside_a_shard_are_balanced_by_tower() {
    use tower::{
        balance::p2c::Balance,
        buffer::Buffer,
        discover::ServiceList,
        load::{CompleteOnResponse, PendingRequests},
    };
    // Two shards of three replicas each; each shard is a power-of-two-choices balancer
    // (behind a Buffer, so the router can clone it).
    let replicas: Vec<Vec<TestService>> = (0..2)
        .map(|_| (0..3).map(|_| TestService::new()).collect())
        .collect();
    let shards: Vec<_> = replicas
        .iter()
        .map(|group| {
            let list: Vec<_> = group
                .iter()
                .cloned()
                .map(|r| PendingRequests::new(r, CompleteOnResponse::default()))
                .collect();
            Buffer::new(Balance::new(ServiceList::new::<u64>(list)), 64)
        })
        .collect();
    let router = ShardRouter::builder("users")
        .shards(shards)
        .strategy(Jump::new(2))
        .key(by_user())
        .build()
        .unwrap();
    for user in 0..600u64 {
        assert_eq!(router.clone().oneshot(user).await.unwrap(), user);
    }
    for (shard, group) in replicas.iter().enumerate() {
        let expected = (0..600u64)
            .filter(|u| Jump::new(2).route(u).shard() == shard)
            .count();
        assert_eq!(
            group.iter().map(TestService::calls).sum::<usize>(),
            expected
        );
        assert!(
            group.iter().all(|r| r.calls() > 0),
            "every replica of shard {shard} served"
        );
    }
}
