//! An effect outside the checkpoint's database: delivered at least once, checkpointed after
//! each batch (compare-and-set) in a checkpoint store, failures by the policy (dead letters in
//! the checkpoint store).

#![cfg(feature = "sqlite")]

mod runner_support;

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use runner_support::{Shop, append, append_n, event};
use tower_patterns_cqrs::{
    ApplyError, Checkpoint, CheckpointStore, ExternalProjection, FailurePolicy, MemoryCheckpoints,
    Projection, Status, checkpoint::SqliteCheckpoints,
};
use tower_patterns_eventstore::{InMemoryStore, RecordedEvent};

const WAIT: Duration = Duration::from_secs(600);

/// Counts deliveries per event index; fails on `Poison` until cured; panics once at
/// `crash_at` (after counting it: the effect happened, the checkpoint did not).
#[derive(Clone, Default)]
struct Effect {
    delivered: Arc<Mutex<BTreeMap<u64, u32>>>,
    cured: Arc<AtomicBool>,
    crash_at: Option<(u64, Arc<AtomicBool>)>,
}

impl ExternalProjection for Effect {
    async fn apply(&self, e: &RecordedEvent) -> Result<(), ApplyError> {
        if e.event_type == "Poison" && !self.cured.load(Ordering::SeqCst) {
            return Err(ApplyError::transient("search service unavailable"));
        }
        *self
            .delivered
            .lock()
            .unwrap()
            .entry(e.position.index)
            .or_default() += 1;
        if let Some((at, fired)) = &self.crash_at
            && e.position.index == *at
            && !fired.swap(true, Ordering::SeqCst)
        {
            panic!("crash after the effect of {at}");
        }
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn each_event_reaches_the_effect_and_the_checkpoint_follows_each_batch() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(InMemoryStore::new());
    let head = append_n(&*store, "shop", 25).await;
    let checkpoints = SqliteCheckpoints::open(dir.path().join("checkpoints.db")).unwrap();
    let effect = Effect::default();
    let (handle, task) = Projection::builder("search")
        .source(store.clone())
        .external(checkpoints.clone(), effect.clone())
        .batch(10)
        .build()
        .unwrap()
        .spawn();
    assert!(handle.wait_for(head, WAIT).await);
    assert_eq!(
        checkpoints.load("search").await.unwrap(),
        Some(Checkpoint {
            position: head,
            version: 1
        })
    );
    assert_eq!(
        effect.delivered.lock().unwrap().clone(),
        (1..=25).map(|i| (i, 1)).collect()
    );
    handle.shutdown();
    task.await.unwrap().unwrap();

    // A restart continues from the checkpoint: nothing delivered again.
    let later = append_n(&*store, "more", 5).await;
    let (handle, task) = Projection::builder("search")
        .source(store.clone())
        .external(checkpoints.clone(), effect.clone())
        .build()
        .unwrap()
        .spawn();
    assert!(handle.wait_for(later, WAIT).await);
    assert!(effect.delivered.lock().unwrap().values().all(|&n| n == 1));
    assert_eq!(effect.delivered.lock().unwrap().len(), 30);
    handle.shutdown();
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_crash_between_the_effect_and_the_checkpoint_delivers_the_batch_again() {
    let store = Arc::new(InMemoryStore::new());
    let head = append_n(&*store, "shop", 25).await;
    let checkpoints = MemoryCheckpoints::new();
    let effect = Effect {
        crash_at: Some((15, Arc::new(AtomicBool::new(false)))),
        ..Effect::default()
    };
    let (_, task) = Projection::builder("search")
        .source(store.clone())
        .external(checkpoints.clone(), effect.clone())
        .batch(10)
        .build()
        .unwrap()
        .spawn();
    assert!(task.await.unwrap_err().is_panic());
    assert_eq!(
        checkpoints
            .load("search")
            .await
            .unwrap()
            .map(|c| c.position.index),
        Some(10)
    );
    let (handle, task) = Projection::builder("search")
        .source(store.clone())
        .external(checkpoints.clone(), effect.clone())
        .batch(10)
        .build()
        .unwrap()
        .spawn();
    assert!(handle.wait_for(head, WAIT).await);
    // At least once: 11 to 15 twice (the effect must drop repeats), every other event once.
    let delivered = effect.delivered.lock().unwrap().clone();
    let want: BTreeMap<u64, u32> = (1..=25)
        .map(|i| (i, if (11..=15).contains(&i) { 2 } else { 1 }))
        .collect();
    assert_eq!(delivered, want);
    handle.shutdown();
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_failing_effect_goes_by_the_policy_with_dead_letters_in_the_checkpoint_store() {
    let store = Arc::new(InMemoryStore::new());
    append_n(&*store, "shop", 5).await;
    let poison = append(&*store, "poison", vec![event(&Shop::Poison {})]).await;
    let head = append_n(&*store, "more", 5).await;
    let checkpoints = MemoryCheckpoints::new();
    let effect = Effect::default();
    let (handle, task) = Projection::builder("search")
        .source(store.clone())
        .external(checkpoints.clone(), effect.clone())
        .policy(
            FailurePolicy::retry(2).then(tower_patterns_cqrs::projection::Exhausted::DeadLetter),
        )
        .build()
        .unwrap()
        .spawn();
    assert!(handle.wait_for(head, WAIT).await);
    let letters = checkpoints.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(
        (
            letters[0].position,
            letters[0].stream.as_str(),
            letters[0].attempts
        ),
        (poison, "poison", 2)
    );
    assert!(letters[0].error.contains("search service unavailable"));
    assert_eq!(effect.delivered.lock().unwrap().len(), 10);
    assert_eq!(
        handle.wait_for_status(WAIT, |s| *s == Status::Live).await,
        Status::Live
    );
    handle.shutdown();
    task.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_crash_between_the_two_checkpoint_writes_of_a_swap_is_tidied_at_start() {
    let store = Arc::new(InMemoryStore::new());
    let head = append_n(&*store, "shop", 10).await;
    // A swap's first write landed (the live checkpoint took the rebuilt copy's position and
    // version); the crash came before the second (the rebuild's row reset).
    let checkpoints = MemoryCheckpoints::new();
    let rebuilt = Checkpoint {
        position: head,
        version: 2,
    };
    assert!(
        checkpoints
            .save("search", Checkpoint::default(), rebuilt)
            .await
            .unwrap()
    );
    assert!(
        checkpoints
            .save("search#rebuild", Checkpoint::default(), rebuilt)
            .await
            .unwrap()
    );
    let effect = Effect::default();
    let (handle, task) = Projection::builder("search")
        .source(store.clone())
        .external(checkpoints.clone(), effect.clone())
        .build()
        .unwrap()
        .spawn();
    assert_eq!(
        handle.wait_for_status(WAIT, |s| *s == Status::Live).await,
        Status::Live
    );
    // The swap stands (version 2 from where the rebuild stood), the leftover row is reset,
    // and the live copy goes on from there: nothing delivered again.
    assert_eq!(handle.tables().version(), 2);
    assert_eq!(handle.position(), head);
    assert_eq!(
        checkpoints
            .load("search#rebuild")
            .await
            .unwrap()
            .unwrap_or_default(),
        Checkpoint::default()
    );
    let later = append_n(&*store, "more", 3).await;
    assert!(handle.wait_for(later, WAIT).await);
    assert_eq!(
        effect.delivered.lock().unwrap().clone(),
        (11..=13).map(|i| (i, 1)).collect()
    );
    handle.shutdown();
    task.await.unwrap().unwrap();
}
