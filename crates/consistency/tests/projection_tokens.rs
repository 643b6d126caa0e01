//! Read-your-writes over a real CQRS projection: a query carrying a command's token never sees
//! the read model from before that command, whatever the projection's delays (random per
//! event, seeded) and batch size, and whatever other clients write meanwhile.

use std::{
    collections::HashMap,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::{HeaderValue, Method, Request, Response, StatusCode};
use proptest::prelude::*;
use tower::{Layer, ServiceExt, service_fn};
use tower_patterns_consistency::{
    TokenKey,
    layer::{ConsistencyLayer, TOKEN_HEADER},
};
use tower_patterns_core::rng::SplitMix64;
use tower_patterns_cqrs::{ApplyError, ExternalProjection, MemoryCheckpoints, Projection};
use tower_patterns_eventstore::{
    Committed, EventData, EventStore, ExpectedVersion, InMemoryStore, RecordedEvent,
};

const STREAMS: [&str; 3] = ["a", "b", "c"];

/// The read model: events applied per stream, each after a random delay.
#[derive(Clone)]
struct Counts {
    counts: Arc<Mutex<HashMap<String, u64>>>,
    rng: Arc<Mutex<SplitMix64>>,
    max_delay_ms: u64,
}

impl ExternalProjection for Counts {
    async fn apply(&self, e: &RecordedEvent) -> Result<(), ApplyError> {
        let delay = self.rng.lock().unwrap().next_u64() % (self.max_delay_ms + 1);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        *self
            .counts
            .lock()
            .unwrap()
            .entry(e.stream_id.clone())
            .or_default() += 1;
        Ok(())
    }
}

/// The counting read model over `store`, its projection running: per-event delays up to
/// `max_delay_ms` (seeded by `seed`), `batch` events a batch.
fn spawn_counts(
    store: &Arc<InMemoryStore>,
    seed: u64,
    max_delay_ms: u64,
    batch: usize,
) -> (Counts, tower_patterns_cqrs::ProjectionHandle) {
    let counts = Counts {
        counts: Arc::default(),
        rng: Arc::new(Mutex::new(SplitMix64::new(seed))),
        max_delay_ms,
    };
    let (handle, _task) = Projection::builder("counts")
        .source(store.clone())
        .external(MemoryCheckpoints::new(), counts.clone())
        .batch(batch)
        .build()
        .unwrap()
        .spawn();
    (counts, handle)
}

fn event() -> EventData {
    EventData::json("Added", &1u32).unwrap()
}

/// One client's run: `ops` are (stream, write?) pairs; `noise` appends by other clients.
async fn run(seed: u64, max_delay_ms: u64, batch: usize, ops: Vec<(usize, bool)>, noise: usize) {
    let store = Arc::new(InMemoryStore::new());
    let (counts, handle) = spawn_counts(&store, seed, max_delay_ms, batch);
    let layer = ConsistencyLayer::builder("counts")
        .key(TokenKey::new(*b"proptest key 16b"))
        .read_side(handle.clone())
        .wait(Duration::from_secs(3600))
        .build()
        .unwrap();
    let app = {
        let (store, counts) = (store.clone(), counts.clone());
        service_fn(move |req: Request<()>| {
            let (store, counts) = (store.clone(), counts.clone());
            async move {
                let stream = req.uri().path().trim_start_matches('/').to_owned();
                let mut res = Response::new(());
                if req.method() == Method::POST {
                    let r = store
                        .append(&stream, ExpectedVersion::Any, vec![event()])
                        .await
                        .unwrap();
                    res.extensions_mut().insert(Committed {
                        version: r.version,
                        positions: r.positions,
                        retries: 0,
                    });
                } else {
                    let n = counts.counts.lock().unwrap().get(&stream).copied();
                    res.headers_mut()
                        .insert("x-count", HeaderValue::from(n.unwrap_or(0)));
                }
                Ok::<_, Infallible>(res)
            }
        })
    };
    let svc = layer.layer(app);

    // Other clients write in the background, at random moments.
    let noise_task = {
        let store = store.clone();
        let mut rng = SplitMix64::new(seed ^ 0xabcd);
        tokio::spawn(async move {
            for _ in 0..noise {
                tokio::time::sleep(Duration::from_millis(rng.next_u64() % 20)).await;
                let stream = STREAMS[(rng.next_u64() % 3) as usize];
                store
                    .append(stream, ExpectedVersion::Any, vec![event()])
                    .await
                    .unwrap();
            }
        })
    };

    let mut mine = [0u64; 3];
    let mut token: Option<HeaderValue> = None;
    let mut rng = SplitMix64::new(seed ^ 0x1234);
    for (stream, is_write) in ops {
        let mut req = Request::builder()
            .method(if is_write { Method::POST } else { Method::GET })
            .uri(format!("/{}", STREAMS[stream]))
            .body(())
            .unwrap();
        if let Some(t) = &token {
            req.headers_mut().insert(TOKEN_HEADER, t.clone());
        }
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        if let Some(t) = res.headers().get(TOKEN_HEADER) {
            token = Some(t.clone());
        }
        if is_write {
            mine[stream] += 1;
        } else {
            let seen: u64 = res.headers()["x-count"].to_str().unwrap().parse().unwrap();
            assert!(
                seen >= mine[stream],
                "stream {}: read {seen} after writing {} (a stale read)",
                STREAMS[stream],
                mine[stream]
            );
        }
        // Think time between requests, sometimes none.
        tokio::time::sleep(Duration::from_millis(rng.next_u64() % 5)).await;
    }
    noise_task.await.unwrap();
    handle.shutdown();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn a_query_with_a_commands_token_never_sees_the_model_before_it(
        seed in any::<u64>(),
        max_delay_ms in 0u64..40,
        batch in 1usize..8,
        ops in proptest::collection::vec((0usize..3, any::<bool>()), 1..40),
        noise in 0usize..20,
    ) {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
            .block_on(run(seed, max_delay_ms, batch, ops, noise));
    }
}

/// The same run without tokens shows the pattern: reads right after writes do see the old
/// model (that is what the layer is for).
#[tokio::test(start_paused = true)]
async fn without_the_token_reads_do_see_the_model_before_the_write() {
    let store = Arc::new(InMemoryStore::new());
    let (counts, handle) = spawn_counts(&store, 7, 30, 256);
    let mut stale = 0;
    for i in 1..=50u64 {
        store
            .append("a", ExpectedVersion::Any, vec![event()])
            .await
            .unwrap();
        let seen = counts.counts.lock().unwrap().get("a").copied().unwrap_or(0);
        if seen < i {
            stale += 1;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("without tokens: {stale} of 50 reads were stale");
    assert!(stale > 0);
    handle.shutdown();
}

/// A caught-up projection answers a token at once (no wait counted); one that lags says how
/// many events behind it is on a stale answer.
#[tokio::test(start_paused = true)]
async fn a_caught_up_projection_answers_at_once_and_a_lagging_one_says_how_far() {
    use tower_patterns_consistency::layer::{Behind, STALE_HEADER};
    use tower_patterns_eventstore::GlobalPosition;

    let store = Arc::new(InMemoryStore::new());
    let (_, handle) = spawn_counts(&store, 1, 0, 256);
    let mut last = GlobalPosition::START;
    for _ in 0..3 {
        last = *store
            .append("a", ExpectedVersion::Any, vec![event()])
            .await
            .unwrap()
            .positions
            .last()
            .unwrap();
    }
    assert!(handle.wait_for(last, Duration::from_secs(60)).await);
    let layer = ConsistencyLayer::builder("counts")
        .key(TokenKey::new(*b"proptest key 16b"))
        .read_side(handle.clone())
        .wait(Duration::ZERO)
        .when_behind(Behind::Stale)
        .build()
        .unwrap();
    let svc = layer.layer(service_fn(|_: Request<()>| async {
        Ok::<_, Infallible>(Response::new(()))
    }));
    let read = |index: u64| {
        Request::get("/a")
            .header(
                TOKEN_HEADER,
                layer
                    .tokens()
                    .header_value(GlobalPosition::new(last.commit, index).into()),
            )
            .body(())
            .unwrap()
    };
    let res = svc.clone().oneshot(read(last.index)).await.unwrap();
    assert!(res.headers().get(STALE_HEADER).is_none());
    let res = svc.clone().oneshot(read(last.index + 5)).await.unwrap();
    assert_eq!(res.headers()[STALE_HEADER], "events=5");
    assert_eq!(layer.handle().stale(), 1);
    handle.shutdown();
}
