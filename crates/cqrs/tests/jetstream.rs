//! The outbox relay and the JetStream consumer against the test command's NATS server: the
//! product catalog's events published once each, in log order, across restarts; duplicates
//! counted; a missing stream retried without moving the checkpoint; consumers that ack,
//! redeliver and dead-letter.
#![cfg(feature = "nats")]

mod nats_support;

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use async_nats::{header::NATS_MESSAGE_ID, jetstream};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use nats_support::fresh_stream;
use serde_json::json;
use tower_patterns_core::{
    BoxError,
    backoff::Backoff,
    observe::{Health, StateHandle},
};
use tower_patterns_cqrs::{
    ApplyError, MemoryCheckpoints,
    bus::{self, Delivery, JetStreamConsumer, OutboxRelay, OutboxRelayHandle, RelayStatus},
};
use tower_patterns_eventstore::{
    EventData, EventStore, ExpectedVersion, GlobalPosition, InMemoryStore, RecordedEvent,
};
use tower_patterns_testkit::{Server, server_url};

const WAIT: Duration = Duration::from_secs(20);

/// One recorder for the whole binary: the relay's tasks run on other threads. Names are
/// unique per test, so tests running at once do not see each other's counts.
fn snapshotter() -> &'static Snapshotter {
    static S: OnceLock<Snapshotter> = OnceLock::new();
    S.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let s = recorder.snapshotter();
        recorder
            .install()
            .expect("the only recorder of this binary");
        s
    })
}

/// A counter's total so far. A snapshot takes the counts (resets them), and tests run at
/// once: every snapshot is added into one running total per (metric, name).
fn counter(metric: &str, name: &str) -> Option<u64> {
    static TOTALS: OnceLock<Mutex<HashMap<(String, String), u64>>> = OnceLock::new();
    let mut totals = TOTALS.get_or_init(Mutex::default).lock().unwrap();
    for (k, _, _, v) in snapshotter().snapshot().into_vec() {
        if let DebugValue::Counter(n) = v {
            let label = k
                .key()
                .labels()
                .find(|l| l.key() == "name")
                .map(|l| l.value().to_owned())
                .unwrap_or_default();
            *totals
                .entry((k.key().name().to_owned(), label))
                .or_default() += n;
        }
    }
    totals.get(&(metric.to_owned(), name.to_owned())).copied()
}

/// A JetStream context, or `None` (skipped) without a NATS server.
async fn nats() -> Option<jetstream::Context> {
    snapshotter(); // before any build(), which registers the metrics
    nats_support::nats().await
}

/// Appends `n` catalog events over a few products; returns them as stored, in log order.
async fn append_catalog(store: &InMemoryStore, n: u64, tag: &str) -> Vec<RecordedEvent> {
    for i in 0..n {
        let e = if i % 3 == 0 {
            EventData::json("ProductCreated", &json!({ "sku": i, "tag": tag }))
        } else {
            EventData::json("PriceUpdated", &json!({ "sku": i, "price": i * 10 }))
        };
        store
            .append(
                &format!("product-{}", i % 7),
                ExpectedVersion::Any,
                vec![e.unwrap()],
            )
            .await
            .unwrap();
    }
    store
        .read_all(GlobalPosition::START, 1_000_000)
        .await
        .unwrap()
}

/// Every message of `stream`, in stream order.
async fn stored(
    stream: &mut jetstream::stream::Stream,
) -> Vec<async_nats::jetstream::message::StreamMessage> {
    let last = stream.info().await.unwrap().state.last_sequence;
    let mut all = Vec::new();
    for seq in 1..=last {
        all.push(stream.get_raw_message(seq).await.unwrap());
    }
    all
}

fn msg_ids(messages: &[async_nats::jetstream::message::StreamMessage]) -> Vec<String> {
    messages
        .iter()
        .map(|m| {
            m.headers
                .get(NATS_MESSAGE_ID)
                .expect("Nats-Msg-Id")
                .to_string()
        })
        .collect()
}

fn ids(events: &[RecordedEvent]) -> Vec<String> {
    events.iter().map(|e| e.id.to_string()).collect()
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..2_000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 20 s");
}

fn relay(
    name: &str,
    store: &Arc<InMemoryStore>,
    checkpoints: &MemoryCheckpoints,
    js: &jetstream::Context,
    prefix: &str,
    batch: usize,
) -> OutboxRelay {
    let prefix = prefix.to_owned();
    OutboxRelay::builder(name)
        .source(store.clone())
        .checkpoints(checkpoints.clone())
        .jetstream(js.clone())
        .subject(move |e| format!("{prefix}.{}", e.event_type))
        .batch(batch)
        .backoff(
            Backoff::Constant(Duration::from_millis(20)),
            Duration::from_millis(50),
        )
        .build()
        .unwrap()
}

async fn caught_up(handle: &OutboxRelayHandle, events: &[RecordedEvent]) {
    let last = events.last().unwrap().position;
    assert!(
        handle.wait_for(last, WAIT).await,
        "relay at {} of {last}; last error {:?}",
        handle.position(),
        handle.last_error()
    );
}

fn name(tag: &str) -> String {
    format!("{tag}-{}", uuid::Uuid::now_v7().simple())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_publishes_every_event_once_in_log_order() {
    let Some(js) = nats().await else { return };
    let (mut stream, prefix) = fresh_stream(&js, "ONCE").await;
    let store = Arc::new(InMemoryStore::new());
    let events = append_catalog(&store, 300, "once").await;
    let name = name("catalog");
    let checkpoints = MemoryCheckpoints::new();
    let r = relay(&name, &store, &checkpoints, &js, &prefix, 64);
    assert_eq!(
        counter(bus::DUPLICATES, &name),
        Some(0),
        "registered at build"
    );
    let (handle, task) = r.spawn();
    caught_up(&handle, &events).await;

    let messages = stored(&mut stream).await;
    assert_eq!(msg_ids(&messages), ids(&events), "once each, in log order");
    for (m, e) in messages.iter().zip(&events) {
        assert_eq!(m.subject.as_str(), format!("{prefix}.{}", e.event_type));
        assert_eq!(
            m.headers.get(bus::HEADER_STREAM).unwrap().as_str(),
            e.stream_id
        );
        assert_eq!(
            m.headers.get(bus::HEADER_VERSION).unwrap().as_str(),
            e.version.to_string()
        );
        assert_eq!(
            m.headers.get(bus::HEADER_POSITION).unwrap().as_str(),
            format!("{}.{}", e.position.commit, e.position.index)
        );
        assert_eq!(
            m.headers.get(bus::HEADER_TYPE).unwrap().as_str(),
            e.event_type
        );
        assert_eq!(&m.payload[..], e.payload.get().as_bytes());
    }
    assert_eq!((handle.published(), handle.duplicates()), (300, 0));
    let stored_cp =
        tower_patterns_cqrs::CheckpointStore::load(&checkpoints, &format!("outbox:{name}"))
            .await
            .unwrap()
            .unwrap();
    assert_eq!(stored_cp.position, events.last().unwrap().position);
    until("the relay goes live", || {
        handle.status() == RelayStatus::Live
    })
    .await;
    let report = handle.report();
    assert_eq!(
        (report.pattern, report.health, report.state),
        ("cqrs", Health::Ready, "live")
    );
    assert_eq!(report.value("published"), Some(300.0));
    assert_eq!(counter(bus::PUBLISHED, &name), Some(300));
    assert_eq!(counter(bus::DUPLICATES, &name), Some(0));
    let lag = handle.lag().await.unwrap();
    assert_eq!((lag.events, lag.seconds), (0, 0.0));

    // Live: a new event is published as it commits.
    let more = append_catalog(&store, 1, "live").await;
    caught_up(&handle, &more).await;
    assert_eq!(stored(&mut stream).await.len(), 301);

    handle.stop();
    task.await.unwrap().unwrap();
    assert_eq!(handle.status(), RelayStatus::Stopped);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_relay_goes_on_from_its_checkpoint() {
    let Some(js) = nats().await else { return };
    let (mut stream, prefix) = fresh_stream(&js, "RESTART").await;
    let store = Arc::new(InMemoryStore::new());
    let checkpoints = MemoryCheckpoints::new();
    let name = name("restart");
    let first = append_catalog(&store, 100, "first").await;
    let (handle, task) = relay(&name, &store, &checkpoints, &js, &prefix, 30).spawn();
    caught_up(&handle, &first).await;
    handle.stop();
    task.await.unwrap().unwrap();

    let all = append_catalog(&store, 50, "second").await;
    let (handle, task) = relay(&name, &store, &checkpoints, &js, &prefix, 30).spawn();
    caught_up(&handle, &all).await;
    assert_eq!(
        (handle.published(), handle.duplicates()),
        (50, 0),
        "only what came after the checkpoint"
    );
    assert_eq!(msg_ids(&stored(&mut stream).await), ids(&all));
    handle.stop();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_behind_what_it_published_counts_duplicates() {
    let Some(js) = nats().await else { return };
    let (mut stream, prefix) = fresh_stream(&js, "DUP").await;
    let store = Arc::new(InMemoryStore::new());
    let events = append_catalog(&store, 120, "dup").await;
    let name = name("dup");
    let (handle, task) = relay(&name, &store, &MemoryCheckpoints::new(), &js, &prefix, 50).spawn();
    caught_up(&handle, &events).await;
    handle.stop();
    task.await.unwrap().unwrap();

    // The same relay with its checkpoint lost (as after a crash before every checkpoint).
    let (handle, task) = relay(&name, &store, &MemoryCheckpoints::new(), &js, &prefix, 50).spawn();
    caught_up(&handle, &events).await;
    assert_eq!((handle.published(), handle.duplicates()), (120, 120));
    assert_eq!(counter(bus::DUPLICATES, &name), Some(120));
    assert_eq!(
        msg_ids(&stored(&mut stream).await),
        ids(&events),
        "JetStream dropped every repeat"
    );
    handle.stop();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_without_a_stream_is_retried_and_never_checkpointed() {
    let Some(js) = nats().await else { return };
    let store = Arc::new(InMemoryStore::new());
    let events = append_catalog(&store, 40, "missing").await;
    let id = uuid::Uuid::now_v7().simple().to_string();
    let prefix = format!("tp_{id}");
    let name = name("missing");
    let checkpoints = MemoryCheckpoints::new();
    let (handle, task) = relay(&name, &store, &checkpoints, &js, &prefix, 16).spawn();
    until(
        "the relay retries",
        || matches!(handle.status(), RelayStatus::Retrying { attempt } if attempt >= 3),
    )
    .await;
    assert_eq!(
        handle.position(),
        GlobalPosition::START,
        "nothing acknowledged"
    );
    assert_eq!(handle.published(), 0);
    assert_eq!(handle.report().health, Health::Degraded);
    assert!(counter(bus::ERRORS, &name).unwrap() >= 3);
    assert!(
        handle.last_error().unwrap().contains("no stream found"),
        "{:?}",
        handle.last_error()
    );

    // The stream appears: the relay goes on from the first unacknowledged event.
    let mut stream = bus::ensure_stream(
        &js,
        &format!("TP_LATE_{id}"),
        &[&format!("{prefix}.>")],
        bus::DEFAULT_DUPLICATE_WINDOW,
    )
    .await
    .unwrap();
    caught_up(&handle, &events).await;
    assert_eq!(msg_ids(&stored(&mut stream).await), ids(&events));
    handle.stop();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_counts_unpublished_events_and_their_age() {
    let Some(js) = nats().await else { return };
    let (_stream, prefix) = fresh_stream(&js, "LAG").await;
    // The store's clock moves one second per append.
    let tick = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let t = tick.clone();
    let store = Arc::new(InMemoryStore::new().with_clock(move || {
        std::time::UNIX_EPOCH
            + Duration::from_secs(1_000 + t.fetch_add(1, std::sync::atomic::Ordering::SeqCst))
    }));
    let events = append_catalog(&store, 30, "lag").await;
    let name = name("lag");
    let r = relay(&name, &store, &MemoryCheckpoints::new(), &js, &prefix, 8);
    let handle = r.handle();
    let lag = handle.lag().await.unwrap();
    assert_eq!(
        (lag.events, lag.seconds),
        (30, 29.0),
        "nothing published yet"
    );
    assert_eq!(handle.report().value("lag_events"), Some(30.0));
    assert_eq!(handle.status(), RelayStatus::Starting);
    let task = tokio::spawn(r.run());
    caught_up(&handle, &events).await;
    let lag = handle.lag().await.unwrap();
    assert_eq!((lag.events, lag.seconds), (0, 0.0));
    handle.stop();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_whose_checkpoint_moved_under_it_stops_fenced() {
    let Some(js) = nats().await else { return };
    let (_stream, prefix) = fresh_stream(&js, "FENCE").await;
    let store = Arc::new(InMemoryStore::new());
    let events = append_catalog(&store, 10, "fence").await;
    let checkpoints = MemoryCheckpoints::new();
    let name = name("fence");
    let (handle, task) = relay(&name, &store, &checkpoints, &js, &prefix, 4).spawn();
    caught_up(&handle, &events).await;
    // Another relay of the same name moves the checkpoint.
    let key = format!("outbox:{name}");
    let stored = tower_patterns_cqrs::CheckpointStore::load(&checkpoints, &key)
        .await
        .unwrap()
        .unwrap();
    let moved = tower_patterns_cqrs::Checkpoint {
        position: events[4].position,
        ..stored
    };
    assert!(
        tower_patterns_cqrs::CheckpointStore::save(&checkpoints, &key, stored, moved)
            .await
            .unwrap()
    );
    append_catalog(&store, 1, "after").await;
    let err = tokio::time::timeout(WAIT, task)
        .await
        .expect("the relay stops")
        .unwrap()
        .unwrap_err();
    assert_eq!(err.kind(), bus::BusErrorKind::Fenced, "{err}");
    assert_eq!(handle.status(), RelayStatus::Stopped);
    assert_eq!(handle.report().health, Health::Unavailable);
    assert_eq!(
        tower_patterns_cqrs::CheckpointStore::load(&checkpoints, &key)
            .await
            .unwrap()
            .unwrap(),
        moved,
        "the other relay's checkpoint stands"
    );
}

/// A TCP forwarder to the NATS server that the test can cut (every connection closed, new
/// ones refused) and restore: a lost connection without touching the shared server.
struct Proxy {
    url: String,
    up: Arc<std::sync::atomic::AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Proxy {
    async fn to(nats_url: &str) -> Self {
        let target = nats_url.trim_start_matches("nats://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("nats://{}", listener.local_addr().unwrap());
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (u, c) = (up.clone(), conns.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !u.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let target = target.clone();
                let task = tokio::spawn(async move {
                    if let Ok(mut out) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                c.lock().unwrap().push(task.abort_handle());
            }
        });
        Self { url, up, conns }
    }

    fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_retried_and_never_checkpointed_past_an_unacked_event() {
    let Some(js) = nats().await else { return };
    let (mut stream, prefix) = fresh_stream(&js, "LOST").await;
    let proxy = Proxy::to(&server_url(Server::Nats).unwrap()).await;
    let client = async_nats::ConnectOptions::new()
        .reconnect_delay_callback(|_| Duration::from_millis(20))
        .connect(&proxy.url)
        .await
        .unwrap();
    let through_proxy = jetstream::ContextBuilder::new()
        .timeout(Duration::from_millis(300))
        .build(client);
    let store = Arc::new(InMemoryStore::new());
    let first = append_catalog(&store, 50, "before").await;
    let name = name("lost");
    let (handle, task) = relay(
        &name,
        &store,
        &MemoryCheckpoints::new(),
        &through_proxy,
        &prefix,
        16,
    )
    .spawn();
    caught_up(&handle, &first).await;
    let before = handle.position();

    proxy.cut();
    let all = append_catalog(&store, 50, "during").await;
    until(
        "the relay retries",
        || matches!(handle.status(), RelayStatus::Retrying { attempt } if attempt >= 2),
    )
    .await;
    assert_eq!(
        handle.position(),
        before,
        "no checkpoint past an unacknowledged event"
    );
    assert_eq!(handle.report().health, Health::Degraded);

    proxy.restore();
    caught_up(&handle, &all).await;
    let ids_stored = msg_ids(&stored(&mut stream).await);
    assert_eq!(
        ids_stored.iter().collect::<HashSet<_>>().len(),
        ids_stored.len(),
        "no event twice"
    );
    assert_eq!(ids_stored, ids(&all), "every event, in log order");
    handle.stop();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ensure_stream_refuses_a_shorter_duplicate_window() {
    let Some(js) = nats().await else { return };
    let id = uuid::Uuid::now_v7().simple().to_string();
    let name = format!("TP_WINDOW_{id}");
    let subject = format!("tp_{id}.>");
    bus::ensure_stream(&js, &name, &[&subject], Duration::from_secs(60))
        .await
        .unwrap();
    // Asking again for the same or less is fine; for more, or another subject, is not.
    bus::ensure_stream(&js, &name, &[&subject], Duration::from_secs(30))
        .await
        .unwrap();
    let err = bus::ensure_stream(&js, &name, &[&subject], Duration::from_secs(600))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), bus::BusErrorKind::Stream);
    assert!(err.to_string().contains("duplicate"), "{err}");
    let err = bus::ensure_stream(
        &js,
        &name,
        &[&format!("tp_{id}_other.>")],
        Duration::from_secs(60),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("without subject"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// Consumers

/// Publishes `n` catalog events (the last of type `Poison` if `poison`) through a relay;
/// returns the stream, its subject prefix and the events.
async fn published(
    js: &jetstream::Context,
    tag: &str,
    n: u64,
    poison: bool,
) -> (jetstream::stream::Stream, String, Vec<RecordedEvent>) {
    let (stream, prefix) = fresh_stream(js, tag).await;
    let store = Arc::new(InMemoryStore::new());
    let mut events = append_catalog(&store, n, tag).await;
    if poison {
        store
            .append(
                "product-0",
                ExpectedVersion::Any,
                vec![EventData::json("Poison", &json!({})).unwrap()],
            )
            .await
            .unwrap();
        events = store.read_all(GlobalPosition::START, 1_000).await.unwrap();
    }
    let (handle, task) = relay(
        &name(tag),
        &store,
        &MemoryCheckpoints::new(),
        js,
        &prefix,
        64,
    )
    .spawn();
    caught_up(&handle, &events).await;
    handle.stop();
    task.await.unwrap().unwrap();
    (stream, prefix, events)
}

type Seen = Arc<Mutex<Vec<(uuid::Uuid, u64)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_acks_what_it_handled() {
    let Some(js) = nats().await else { return };
    let (stream, _, events) = published(&js, "ACK", 25, false).await;
    let stream_name = stream.cached_info().config.name.clone();
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let name = name("search-index");
    let consumer = JetStreamConsumer::builder(name.as_str())
        .jetstream(js.clone())
        .stream(stream)
        .ack_wait(Duration::from_secs(7))
        .handler(tower::service_fn(move |d: Delivery| {
            let s = s.clone();
            async move {
                assert_eq!(d.subject.rsplit('.').next().unwrap(), d.event.event_type);
                s.lock().unwrap().push((d.event.id, d.delivered));
                Ok::<_, BoxError>(())
            }
        }))
        .build()
        .unwrap();
    let (handle, task) = consumer.spawn();
    until("every event handled", || handle.handled() == 25).await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.iter()
            .map(|(id, _)| id.to_string())
            .collect::<Vec<_>>(),
        ids(&events),
        "in stream order"
    );
    assert!(seen.iter().all(|(_, d)| *d == 1));
    let server = js.get_stream(&stream_name).await.unwrap();
    let mut acked = false;
    for _ in 0..2_000 {
        let info = server.consumer_info(&name).await.unwrap();
        assert_eq!(
            info.config.ack_policy,
            jetstream::consumer::AckPolicy::Explicit
        );
        assert_eq!(info.config.max_deliver, 5);
        assert_eq!(info.config.ack_wait, Duration::from_secs(7));
        if info.num_ack_pending == 0 && info.num_pending == 0 {
            acked = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(acked, "every message acknowledged on the server");
    assert_eq!(handle.report().pattern, "cqrs");
    assert_eq!(counter(bus::HANDLED, &name), Some(25));
    assert_eq!(counter(bus::REDELIVERED, &name), Some(0));
    handle.stop();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_with_a_filter_gets_only_its_subjects() {
    let Some(js) = nats().await else { return };
    let (stream, prefix, events) = published(&js, "FILTER", 9, false).await;
    let created: Vec<String> = events
        .iter()
        .filter(|e| e.event_type == "ProductCreated")
        .map(|e| e.id.to_string())
        .collect();
    assert_eq!(created.len(), 3);
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let stream_name = stream.cached_info().config.name.clone();
    let consumer_name = name("created");
    let (handle, task) = JetStreamConsumer::builder(consumer_name.as_str())
        .jetstream(js.clone())
        .stream(stream)
        .filter_subject(format!("{prefix}.ProductCreated"))
        .handler(tower::service_fn(move |d: Delivery| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push((d.event.id, d.delivered));
                Ok::<_, BoxError>(())
            }
        }))
        .build()
        .unwrap()
        .spawn();
    until("the product creations handled", || handle.handled() >= 3).await;
    // Nothing else pending on the server: the price updates never came to this consumer.
    let server = js.get_stream(&stream_name).await.unwrap();
    let mut settled = false;
    for _ in 0..2_000 {
        let info = server.consumer_info(&consumer_name).await.unwrap();
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            settled = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(settled, "the consumer settles");
    handle.stop();
    task.await.unwrap().unwrap();
    let got: Vec<String> = seen
        .lock()
        .unwrap()
        .iter()
        .map(|(id, _)| id.to_string())
        .collect();
    assert_eq!(got, created, "nothing but the filter's subject");
    assert_eq!(handle.handled(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_event_is_delivered_again_after_a_backoff() {
    let Some(js) = nats().await else { return };
    let (stream, _, events) = published(&js, "NAK", 10, false).await;
    let flaky = events[3].id;
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let name = name("flaky");
    let (handle, task) = JetStreamConsumer::builder(name.as_str())
        .jetstream(js.clone())
        .stream(stream)
        .backoff(
            Backoff::Constant(Duration::from_millis(50)),
            Duration::from_secs(1),
        )
        .handler(tower::service_fn(move |d: Delivery| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push((d.event.id, d.delivered));
                if d.event.id == flaky && d.delivered < 3 {
                    return Err::<(), BoxError>("the search index is down".into());
                }
                Ok(())
            }
        }))
        .build()
        .unwrap()
        .spawn();
    until("every event handled", || handle.handled() == 10).await;
    let flaky_deliveries: Vec<u64> = seen
        .lock()
        .unwrap()
        .iter()
        .filter(|(id, _)| *id == flaky)
        .map(|(_, d)| *d)
        .collect();
    assert_eq!(flaky_deliveries, [1, 2, 3]);
    assert_eq!(
        (
            handle.failures(),
            handle.redelivered(),
            handle.dead_lettered()
        ),
        (2, 2, 0)
    );
    assert_eq!(counter(bus::REDELIVERED, &name), Some(2));
    handle.stop();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_failing_max_deliver_times_is_dead_lettered() {
    let Some(js) = nats().await else { return };
    let (stream, prefix, events) = published(&js, "DLQ", 6, true).await;
    let poison = events.last().unwrap().clone();
    let mut dead = bus::ensure_stream(
        &js,
        &format!("{}_DEAD", stream.cached_info().config.name),
        &[&format!("{prefix}_dead.>")],
        bus::DEFAULT_DUPLICATE_WINDOW,
    )
    .await
    .unwrap();
    let name = name("dlq");
    let deliveries = Arc::new(Mutex::new(0u64));
    let d2 = deliveries.clone();
    let (handle, task) = JetStreamConsumer::builder(name.as_str())
        .jetstream(js.clone())
        .stream(stream)
        .max_deliver(3)
        .backoff(
            Backoff::Constant(Duration::from_millis(20)),
            Duration::from_secs(1),
        )
        .dead_letter(format!("{prefix}_dead.catalog"))
        .handler(tower::service_fn(move |d: Delivery| {
            let d2 = d2.clone();
            async move {
                if d.event.event_type == "Poison" {
                    *d2.lock().unwrap() += 1;
                    return Err::<(), BoxError>("no price\nin payload".into());
                }
                Ok(())
            }
        }))
        .build()
        .unwrap()
        .spawn();
    until("the poison dead-lettered", || handle.dead_lettered() == 1).await;
    assert_eq!(handle.handled(), 6, "the others are handled");
    assert_eq!(
        *deliveries.lock().unwrap(),
        3,
        "max_deliver deliveries, no more"
    );
    let letters = stored(&mut dead).await;
    assert_eq!(letters.len(), 1);
    let h = &letters[0].headers;
    assert_eq!(h.get(bus::HEADER_SOURCE_SEQUENCE).unwrap().as_str(), "7");
    assert_eq!(
        h.get(bus::HEADER_ERROR).unwrap().as_str(),
        "no price in payload"
    );
    assert_eq!(h.get(bus::HEADER_DELIVERIES).unwrap().as_str(), "3");
    assert_eq!(h.get(bus::HEADER_CONSUMER).unwrap().as_str(), name);
    assert_eq!(h.get(bus::HEADER_TYPE).unwrap().as_str(), "Poison");
    assert_eq!(
        h.get(NATS_MESSAGE_ID).unwrap().as_str(),
        format!("{}:dead:{name}", poison.id)
    );
    assert_eq!(counter(bus::DEAD_LETTERED, &name), Some(1));
    handle.stop();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_error_is_dead_lettered_at_once() {
    let Some(js) = nats().await else { return };
    let (stream, prefix, _) = published(&js, "PERM", 2, true).await;
    let mut dead = bus::ensure_stream(
        &js,
        &format!("{}_DEAD", stream.cached_info().config.name),
        &[&format!("{prefix}_dead.>")],
        bus::DEFAULT_DUPLICATE_WINDOW,
    )
    .await
    .unwrap();
    let calls = Arc::new(Mutex::new(HashSet::new()));
    let c2 = calls.clone();
    let (handle, task) = JetStreamConsumer::builder(name("perm"))
        .jetstream(js.clone())
        .stream(stream)
        .dead_letter(format!("{prefix}_dead.catalog"))
        .handler(tower::service_fn(move |d: Delivery| {
            let c2 = c2.clone();
            async move {
                assert!(c2.lock().unwrap().insert(d.event.id), "delivered once");
                if d.event.event_type == "Poison" {
                    return Err::<(), BoxError>(Box::new(ApplyError::permanent("cannot decode")));
                }
                Ok(())
            }
        }))
        .build()
        .unwrap()
        .spawn();
    until("dead-lettered", || handle.dead_lettered() == 1).await;
    assert_eq!(
        stored(&mut dead).await[0]
            .headers
            .get(bus::HEADER_DELIVERIES)
            .unwrap()
            .as_str(),
        "1"
    );
    handle.stop();
    task.await.unwrap().unwrap();
}

/// A consumer whose handler fails the poison's first delivery and, on its second (the last,
/// `max_deliver` 2), waits `answer` then fails it again, or never answers (`None`); the
/// others are handled.
fn hanging_consumer(
    js: &jetstream::Context,
    stream: jetstream::stream::Stream,
    name: &str,
    dead_subject: String,
    last_delivery: Arc<std::sync::atomic::AtomicBool>,
    ack_wait: Duration,
    answer: Option<Duration>,
) -> JetStreamConsumer {
    JetStreamConsumer::builder(name)
        .jetstream(js.clone())
        .stream(stream)
        .max_deliver(2)
        .ack_wait(ack_wait)
        .backoff(
            Backoff::Constant(Duration::from_millis(20)),
            Duration::from_secs(1),
        )
        .dead_letter(dead_subject)
        .handler(tower::service_fn(move |d: Delivery| {
            let last = last_delivery.clone();
            async move {
                if d.event.event_type == "Poison" {
                    if d.delivered < 2 {
                        return Err::<(), BoxError>("the search index is down".into());
                    }
                    last.store(true, std::sync::atomic::Ordering::SeqCst);
                    match answer {
                        Some(after) => tokio::time::sleep(after).await,
                        None => std::future::pending::<()>().await,
                    }
                    return Err("the search index is still down".into());
                }
                Ok(())
            }
        }))
        .build()
        .unwrap()
}

async fn dead_stream(
    js: &jetstream::Context,
    stream: &jetstream::stream::Stream,
    prefix: &str,
) -> jetstream::stream::Stream {
    bus::ensure_stream(
        js,
        &format!("{}_DEAD", stream.cached_info().config.name),
        &[&format!("{prefix}_dead.>")],
        bus::DEFAULT_DUPLICATE_WINDOW,
    )
    .await
    .unwrap()
}

/// The one dead letter of the poison (the last of 4 messages, on its second delivery), with
/// an error that contains `error`.
async fn poison_letter(
    dead: &mut jetstream::stream::Stream,
    poison: &RecordedEvent,
    name: &str,
    error: &str,
) {
    let letters = stored(dead).await;
    assert_eq!(letters.len(), 1, "one dead letter");
    let h = &letters[0].headers;
    assert_eq!(h.get(bus::HEADER_SOURCE_SEQUENCE).unwrap().as_str(), "4");
    assert_eq!(h.get(bus::HEADER_DELIVERIES).unwrap().as_str(), "2");
    assert_eq!(h.get(bus::HEADER_CONSUMER).unwrap().as_str(), name);
    assert_eq!(h.get(bus::HEADER_TYPE).unwrap().as_str(), "Poison");
    assert!(
        h.get(bus::HEADER_ERROR).unwrap().as_str().contains(error),
        "{:?}",
        h.get(bus::HEADER_ERROR)
    );
    assert_eq!(
        h.get(NATS_MESSAGE_ID).unwrap().as_str(),
        format!("{}:dead:{name}", poison.id)
    );
    assert_eq!(&letters[0].payload[..], poison.payload.get().as_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_delivery_failed_after_ack_wait_is_dead_lettered_once_by_the_loop() {
    let Some(js) = nats().await else { return };
    let (stream, prefix, events) = published(&js, "LOSTWAIT", 3, true).await;
    let poison = events.last().unwrap().clone();
    let mut dead = dead_stream(&js, &stream, &prefix).await;
    let name = name("slow");
    let last = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // The handler answers the last delivery 3 s after it came, past ack_wait (1 s): JetStream
    // gives up on it and says so meanwhile, but this instance holds it; its loop sets it
    // aside when the handler fails, once.
    let (handle, task) = hanging_consumer(
        &js,
        stream,
        &name,
        format!("{prefix}_dead.catalog"),
        last.clone(),
        Duration::from_secs(1),
        Some(Duration::from_secs(3)),
    )
    .spawn();
    until("dead-lettered", || handle.dead_lettered() >= 1).await;
    assert!(last.load(std::sync::atomic::Ordering::SeqCst));
    // Room for a second dead letter of the same message, counted or stored.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!((handle.handled(), handle.dead_lettered()), (3, 1));
    poison_letter(&mut dead, &poison, &name, "still down").await;
    assert_eq!(counter(bus::DEAD_LETTERED, &name), Some(1));
    handle.stop();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_expired_in_the_buffer_are_handled_or_dead_lettered_never_both() {
    let Some(js) = nats().await else { return };
    let (stream, prefix, events) = published(&js, "BUFFERED", 4, false).await;
    let mut dead = dead_stream(&js, &stream, &prefix).await;
    let name = name("buffered");
    let seen: Seen = Arc::default();
    let s = seen.clone();
    // One pull brings all four, each on its only delivery; the first takes 4 s, twice
    // ack_wait: JetStream gives up on all four (the others waiting in the client's buffer)
    // before the loop is done with the first.
    let (handle, task) = JetStreamConsumer::builder(name.as_str())
        .jetstream(js.clone())
        .stream(stream)
        .batch(4)
        .max_deliver(1)
        .ack_wait(Duration::from_secs(2))
        .dead_letter(format!("{prefix}_dead.catalog"))
        .handler(tower::service_fn(move |d: Delivery| {
            let s = s.clone();
            async move {
                let first = {
                    let mut s = s.lock().unwrap();
                    s.push((d.event.id, d.delivered));
                    s.len() == 1
                };
                if first {
                    tokio::time::sleep(Duration::from_secs(4)).await;
                }
                Ok::<_, BoxError>(())
            }
        }))
        .build()
        .unwrap()
        .spawn();
    until("every event handled or dead-lettered", || {
        handle.handled() + handle.dead_lettered() >= 4
    })
    .await;
    // Room for the loop to handle what the listener set aside (it did, before the fix).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let letters = stored(&mut dead).await;
    let handled: Vec<uuid::Uuid> = seen.lock().unwrap().iter().map(|(id, _)| *id).collect();
    let lettered: Vec<String> = letters
        .iter()
        .map(|m| {
            let id = m.headers.get(NATS_MESSAGE_ID).unwrap().as_str();
            id.split(':').next().unwrap().to_owned()
        })
        .collect();
    for e in &events {
        let h = handled.iter().filter(|id| **id == e.id).count();
        let d = lettered
            .iter()
            .filter(|id| **id == e.id.to_string())
            .count();
        assert_eq!(
            h + d,
            1,
            "event {} handled {h} times, dead-lettered {d} times",
            e.id
        );
    }
    assert_eq!(handle.handled(), handled.len() as u64);
    assert_eq!(
        handle.dead_lettered(),
        letters.len() as u64,
        "counted once each"
    );
    assert_eq!(
        handled.first(),
        Some(&events[0].id),
        "the first, held, is handled"
    );
    handle.stop();
    task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_crashed_on_a_last_delivery_leaves_it_to_the_next_to_dead_letter() {
    let Some(js) = nats().await else { return };
    let (stream, prefix, events) = published(&js, "LOSTCRASH", 3, true).await;
    let poison = events.last().unwrap().clone();
    let mut dead = dead_stream(&js, &stream, &prefix).await;
    let name = name("crashed");
    let last = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // ack_wait 4 s: room to start the next instance (and its listener) before JetStream
    // gives up on the last delivery, on a loaded machine too.
    let ack_wait = Duration::from_secs(4);
    let (first, task) = hanging_consumer(
        &js,
        stream.clone(),
        &name,
        format!("{prefix}_dead.catalog"),
        last.clone(),
        ack_wait,
        None,
    )
    .spawn();
    until("the last delivery reaches the handler", || {
        last.load(std::sync::atomic::Ordering::SeqCst)
    })
    .await;
    // The process dies in the middle of it.
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    assert_eq!(first.dead_lettered(), 0);

    // The next instance of the consumer: JetStream gives up on the message when it would
    // deliver it again, and this one dead-letters it; the handler never sees it.
    let seen: Seen = Arc::default();
    let s = seen.clone();
    let (handle, task) = JetStreamConsumer::builder(name.as_str())
        .jetstream(js.clone())
        .stream(stream)
        .max_deliver(2)
        .ack_wait(ack_wait)
        .dead_letter(format!("{prefix}_dead.catalog"))
        .handler(tower::service_fn(move |d: Delivery| {
            let s = s.clone();
            async move {
                s.lock().unwrap().push((d.event.id, d.delivered));
                Ok::<_, BoxError>(())
            }
        }))
        .build()
        .unwrap()
        .spawn();
    until("dead-lettered by the next instance", || {
        handle.dead_lettered() == 1
    })
    .await;
    poison_letter(&mut dead, &poison, &name, "ack_wait").await;
    assert!(
        seen.lock().unwrap().iter().all(|(id, _)| *id != poison.id),
        "delivered beyond max_deliver: {:?}",
        seen.lock().unwrap()
    );
    handle.stop();
    task.await.unwrap().unwrap();
}

#[test]
fn the_builders_refuse_bad_settings() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Connects in the background: no server needed to check settings.
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connect("nats://127.0.0.1:1")
            .await
            .unwrap();
        let js = jetstream::new(client);
        let build = |name: &str, batch: usize| {
            OutboxRelay::builder(name)
                .source(Arc::new(InMemoryStore::new()))
                .checkpoints(MemoryCheckpoints::new())
                .jetstream(js.clone())
                .subject(|e| e.event_type.clone())
                .batch(batch)
                .build()
                .map(|_| ())
                .map_err(|e| e.field())
        };
        assert_eq!(build("catalog", 1), Ok(()));
        assert_eq!(build("catalog", 10_000), Ok(()));
        assert_eq!(build("catalog", 0), Err("batch"));
        assert_eq!(build("catalog", 10_001), Err("batch"));
        assert_eq!(build("", 1), Err("name"));
        assert_eq!(build("cata log", 1), Err("name"));
        assert_eq!(build(&"x".repeat(65), 1), Err("name"));
        assert_eq!(build(&"x".repeat(64), 1), Ok(()));
    });
}
