//! Write-behind: coalescing, batching, backpressure, flush on shutdown, retries, and reads that
//! see queued writes.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    task::Poll,
    time::Duration,
};

use tokio::time::advance;
use tower::{Layer, Service, ServiceExt, service_fn};
use tower_patterns_cache::{CacheLayer, ScopedKey, WriteBehind, store::MokaStore};
use tower_patterns_core::{BoxError, KeyError, key::key_fn};

type Batches = Arc<Mutex<Vec<Vec<(u64, String)>>>>;

type ByKey = tower_patterns_core::key::KeyFn<fn(&u64) -> Result<u64, KeyError>>;
type Layer_ =
    CacheLayer<ByKey, tower_patterns_cache::Unscoped, u64, String, MokaStore<u64, String>>;

fn cache() -> Layer_ {
    fn by(k: &u64) -> Result<u64, KeyError> {
        Ok(*k)
    }
    CacheLayer::builder("wb")
        .store(MokaStore::builder().max_entries(2).build())
        .key(key_fn(by as fn(&u64) -> Result<u64, KeyError>))
        .unscoped()
        .build()
        .unwrap()
}

fn writer(
    batches: Batches,
    fail_first: usize,
) -> impl tower_patterns_cache::BatchWriter<u64, String> + Clone {
    let failures = Arc::new(AtomicUsize::new(fail_first));
    service_fn(move |batch: Vec<(ScopedKey<u64>, String)>| {
        let batches = batches.clone();
        let failures = failures.clone();
        async move {
            if failures.load(Ordering::SeqCst) > 0 {
                failures.fetch_sub(1, Ordering::SeqCst);
                return Err::<(), BoxError>("database down".into());
            }
            batches
                .lock()
                .unwrap()
                .push(batch.into_iter().map(|(k, v)| (*k.key(), v)).collect());
            Ok(())
        }
    })
}

#[tokio::test(start_paused = true)]
async fn writes_coalesce_per_key_and_flush_in_batches() {
    let batches = Batches::default();
    let layer = cache();
    let (wb, handle) = WriteBehind::builder("wb")
        .cache(layer.handle())
        .writer(writer(batches.clone(), 0))
        .max_batch(3)
        .max_delay(Duration::from_millis(100))
        .build()
        .unwrap();
    for (k, v) in [(1, "a"), (2, "b"), (1, "a2"), (1, "a3")] {
        wb.clone().oneshot((None, k, v.to_owned())).await.unwrap();
    }
    assert_eq!(handle.pending(), 2, "key 1 coalesced");
    assert_eq!(
        layer.handle().peek(None, 1).unwrap().value(),
        "a3",
        "the cache has it now"
    );
    assert!(batches.lock().unwrap().is_empty(), "not before max_delay");
    advance(Duration::from_millis(100)).await;
    tokio::task::yield_now().await;
    handle.flush().await;
    assert_eq!(
        *batches.lock().unwrap(),
        vec![vec![(1, "a3".to_owned()), (2, "b".to_owned())]]
    );
    // A full batch goes at once.
    for k in 10..13 {
        wb.clone().oneshot((None, k, "x".to_owned())).await.unwrap();
    }
    handle.flush().await;
    assert_eq!(batches.lock().unwrap().len(), 2);
    assert_eq!(handle.written(), 5);
}

#[tokio::test(start_paused = true)]
async fn a_full_queue_is_backpressure_and_shutdown_flushes() {
    let batches = Batches::default();
    let layer = cache();
    let (mut wb, handle) = WriteBehind::builder("wb")
        .cache(layer.handle())
        .writer(writer(batches.clone(), 0))
        .max_pending(2)
        .max_batch(10)
        .max_delay(Duration::from_secs(60))
        .build()
        .unwrap();
    wb.clone().oneshot((None, 1, "a".to_owned())).await.unwrap();
    wb.clone().oneshot((None, 2, "b".to_owned())).await.unwrap();
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    assert!(
        matches!(wb.poll_ready(&mut cx), Poll::Pending),
        "two keys queued: full"
    );
    handle.shutdown().await;
    assert_eq!(
        batches.lock().unwrap().concat().len(),
        2,
        "shutdown wrote everything"
    );
    assert!(
        wb.clone().oneshot((None, 3, "c".to_owned())).await.is_err(),
        "closed"
    );
}

#[tokio::test(start_paused = true)]
async fn failed_batches_are_retried_then_reported() {
    let batches = Batches::default();
    let layer = cache();
    let (wb, handle) = WriteBehind::builder("wb")
        .cache(layer.handle())
        .writer(writer(batches.clone(), 2))
        .max_delay(Duration::ZERO)
        .attempts(3, Duration::from_millis(10))
        .build()
        .unwrap();
    wb.clone().oneshot((None, 1, "a".to_owned())).await.unwrap();
    handle.flush().await;
    assert_eq!(handle.written(), 1, "third attempt succeeded");
    let (wb, handle) = WriteBehind::builder("wb")
        .cache(cache().handle())
        .writer(writer(batches.clone(), 5))
        .max_delay(Duration::ZERO)
        .attempts(2, Duration::from_millis(10))
        .build()
        .unwrap();
    wb.oneshot((None, 1, "a".to_owned())).await.unwrap();
    handle.flush().await;
    assert_eq!((handle.written(), handle.dropped()), (0, 1));
}

#[tokio::test(start_paused = true)]
async fn a_read_miss_sees_the_queued_write_not_the_source() {
    // The cache holds 2 entries; evicting the written key must not expose the old value.
    let batches = Batches::default();
    let layer = cache();
    let source_reads = Arc::new(AtomicUsize::new(0));
    let r = source_reads.clone();
    let reads = layer.layer(service_fn(move |k: u64| {
        r.fetch_add(1, Ordering::SeqCst);
        async move { Ok::<_, BoxError>(format!("old {k}")) }
    }));
    let (wb, _handle) = WriteBehind::builder("wb")
        .cache(layer.handle())
        .writer(writer(batches, 0))
        .max_delay(Duration::from_secs(60))
        .build()
        .unwrap();
    wb.clone()
        .oneshot((None, 1, "new".to_owned()))
        .await
        .unwrap();
    layer.handle().invalidate(None, 1).await.unwrap(); // as an eviction would
    assert_eq!(reads.oneshot(1).await.unwrap(), "new");
    assert_eq!(source_reads.load(Ordering::SeqCst), 0);
    assert_eq!(wb.queued(None, 1).as_deref(), Some("new"));
}

#[tokio::test]
async fn bad_settings_are_refused() {
    let b = Batches::default();
    assert!(
        WriteBehind::builder("wb")
            .cache(cache().handle())
            .writer(writer(b.clone(), 0))
            .max_pending(0)
            .build()
            .is_err()
    );
    assert!(
        WriteBehind::builder("wb")
            .cache(cache().handle())
            .writer(writer(b.clone(), 0))
            .max_batch(0)
            .build()
            .is_err()
    );
    assert!(
        WriteBehind::builder("wb")
            .cache(cache().handle())
            .writer(writer(b, 0))
            .attempts(0, Duration::ZERO)
            .build()
            .is_err()
    );
}

#[tokio::test(start_paused = true)]
async fn dropping_everything_flushes_and_stops_the_writer() {
    let batches = Batches::default();
    let (wb, handle) = WriteBehind::builder("wb")
        .cache(cache().handle())
        .writer(writer(batches.clone(), 0))
        .max_delay(Duration::from_secs(60))
        .build()
        .unwrap();
    wb.clone().oneshot((None, 1, "a".to_owned())).await.unwrap();
    drop((wb, handle));
    // Well within max_delay (60 s): the writer noticed it is alone and flushed.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(batches.lock().unwrap().concat(), vec![(1, "a".to_owned())]);
}

#[tokio::test]
async fn write_builders_refuse_an_empty_name() {
    let err = WriteBehind::builder("")
        .cache(cache().handle())
        .writer(writer(Batches::default(), 0))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "name");
    let err = tower_patterns_cache::WriteThroughLayer::builder("")
        .cache(cache().handle())
        .key(key_fn(|(k, _): &(u64, String)| Ok::<_, KeyError>(*k)))
        .mode(tower_patterns_cache::WriteThroughMode::<(), String>::invalidate())
        .unscoped()
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "name");
}
