//! The outbox relay killed with SIGKILL in the middle of a batch, three times, and restarted
//! until done (a child process; real PostgreSQL and NATS from the test command): every
//! committed event is in the JetStream stream exactly once, in log order, and a consumer
//! applying each event's effect in PostgreSQL with the inbox applies each once, redeliveries
//! included.
#![cfg(all(feature = "nats", feature = "postgres", unix))]

use std::{collections::HashMap, io::Write as _, sync::Arc, time::Duration};

use async_nats::jetstream;
use serde_json::json;
use tower_patterns_core::BoxError;
use tower_patterns_cqrs::{
    bus::{self, Delivery, JetStreamConsumer, OutboxRelay},
    checkpoint::PostgresCheckpoints,
    inbox::Inbox,
};
use tower_patterns_eventstore::{
    EventData, EventStore, ExpectedVersion, GlobalPosition, postgres::PostgresStore,
};
use tower_patterns_testkit::{Server, fresh_postgres, process::ChildTest, server_url};

const CHILD: &str = "TP_CQRS_CHILD";
const DB: &str = "TP_RELAY_DB";
const PREFIX: &str = "TP_RELAY_SUBJECTS";
const KILL_AT: &str = "TP_RELAY_KILL_AT";
const EVENTS: u64 = 3_000;
const BATCH: usize = 100;
/// Where each round freezes the relay for the kill, by the event's rank in the log
/// (1-based), none a batch boundary (batches end at multiples of 100): after the
/// acknowledgement of event 150 (101..200 published, checkpoint at 100), while publishing
/// event 777 (701..776 published, none acknowledged), after the acknowledgement of 1,401.
const KILL_POINTS: [(&str, u64); 3] = [("ack", 150), ("publish", 777), ("ack", 1_401)];
const WAIT: Duration = Duration::from_secs(120);

/// The child: a relay with batch 100 and a checkpoint per batch, printing `published <rank>`
/// after each acknowledgement. At its kill point (`ack:<rank>`: after that event's
/// acknowledgement; `publish:<rank>`: when about to publish it) it prints `halt <rank>` and
/// freezes until the parent's SIGKILL. Run without one (`none:0`), it prints
/// `duplicates <n>` and `done` once everything is published.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn child_relay() {
    if std::env::var(CHILD).as_deref() != Ok("relay") {
        return;
    }
    let db = std::env::var(DB).unwrap();
    let prefix = std::env::var(PREFIX).unwrap();
    let kill = std::env::var(KILL_AT).unwrap();
    let (kill_where, kill_at) = kill.split_once(':').unwrap();
    let kill_at: u64 = kill_at.parse().unwrap();
    let (freeze_on_ack, freeze_on_publish) = (kill_where == "ack", kill_where == "publish");
    let store = Arc::new(PostgresStore::connect(&db, 4).await.unwrap());
    let all = store
        .read_all(GlobalPosition::START, 1_000_000)
        .await
        .unwrap();
    let rank: Arc<HashMap<GlobalPosition, u64>> =
        Arc::new(all.iter().zip(1..).map(|(e, r)| (e.position, r)).collect());
    let ranks = rank.clone();
    let last = all.last().unwrap().position;
    let checkpoints = PostgresCheckpoints::new(store.pool().clone())
        .await
        .unwrap();
    let client = async_nats::connect(server_url(Server::Nats).unwrap())
        .await
        .unwrap();
    let relay = OutboxRelay::builder("relay_crash")
        .source(store)
        .checkpoints(checkpoints)
        .jetstream(jetstream::new(client))
        .subject(move |e| {
            if freeze_on_publish && ranks[&e.position] == kill_at {
                halt(kill_at);
            }
            format!("{prefix}.{}", e.event_type)
        })
        .batch(BATCH)
        .on_published(move |e, _duplicate| {
            let r = rank[&e.position];
            say(&format!("published {r}"));
            if freeze_on_ack && r == kill_at {
                halt(r);
            }
        })
        .build()
        .unwrap();
    say("ready");
    let (handle, _task) = relay.spawn();
    assert!(
        handle.wait_for(last, WAIT).await,
        "caught up; last error {:?}",
        handle.last_error()
    );
    say(&format!("duplicates {}", handle.duplicates()));
    say("done");
}

/// Prints a line for the parent, flushed.
fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

/// Says `halt <rank>` and freezes the relay (mid-batch) until the parent's SIGKILL.
fn halt(rank: u64) -> ! {
    say(&format!("halt {rank}"));
    loop {
        std::thread::park();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_batch_publishes_every_event_once() {
    if std::env::var(CHILD).is_ok() {
        return;
    }
    let Some(db) = fresh_postgres("relay_crash").await else {
        return;
    };
    let Some(nats_url) = server_url(Server::Nats) else {
        return;
    };
    let store = PostgresStore::connect(&db, 4).await.unwrap();
    for b in 0..EVENTS / 10 {
        let events = (0..10)
            .map(|i| {
                let kind = if i % 2 == 0 { "PriceUpdated" } else { "Liked" };
                EventData::json(kind, &json!({ "batch": b, "i": i })).unwrap()
            })
            .collect();
        store
            .append(&format!("product-{}", b % 13), ExpectedVersion::Any, events)
            .await
            .unwrap();
    }
    let events = store
        .read_all(GlobalPosition::START, 1_000_000)
        .await
        .unwrap();
    assert_eq!(events.len() as u64, EVENTS);

    let js = jetstream::new(async_nats::connect(&nats_url).await.unwrap());
    let id = uuid::Uuid::now_v7().simple().to_string();
    let prefix = format!("tp_crash_{id}");
    let stream_name = format!("TP_RELAY_CRASH_{id}");
    let mut stream = bus::ensure_stream(
        &js,
        &stream_name,
        &[&format!("{prefix}.>")],
        bus::DEFAULT_DUPLICATE_WINDOW,
    )
    .await
    .unwrap();

    let spawn = |kill_where: &str, kill_at: u64| {
        ChildTest::spawn(
            "child_relay",
            &[
                (CHILD, "relay"),
                (DB, &db),
                (PREFIX, &prefix),
                (KILL_AT, &format!("{kill_where}:{kill_at}")),
            ],
        )
    };
    for (kill_where, kill_at) in KILL_POINTS {
        let mut child = spawn(kill_where, kill_at);
        child.wait_for("ready", WAIT).await;
        let halted: u64 = child.wait_for("halt ", WAIT).await.parse().unwrap();
        assert_eq!(halted, kill_at);
        child.kill9();
    }
    let mut child = spawn("none", 0);
    let duplicates: u64 = child.wait_for("duplicates ", WAIT).await.parse().unwrap();
    child.wait_for("done", WAIT).await;
    eprintln!("the last relay counted {duplicates} duplicate acknowledgements");

    // The stream: every committed event, once, in log order.
    let info = stream.info().await.unwrap().clone();
    assert_eq!(info.state.messages, EVENTS, "exactly one message per event");
    let mut published = Vec::with_capacity(events.len());
    for seq in 1..=info.state.last_sequence {
        let m = stream.get_raw_message(seq).await.unwrap();
        published.push(
            m.headers
                .get(async_nats::header::NATS_MESSAGE_ID)
                .unwrap()
                .to_string(),
        );
    }
    let stored: Vec<String> = events.iter().map(|e| e.id.to_string()).collect();
    assert_eq!(
        published, stored,
        "every stored event published once, in log order"
    );

    // A consumer applies each event's effect in PostgreSQL with the inbox; every 500th
    // event's first delivery fails after its commit (a lost ack), so it comes again.
    let pool = store.pool().clone();
    {
        let client = pool.get().await.unwrap();
        Inbox::create_postgres(&**client).await.unwrap();
        client
            .batch_execute("CREATE TABLE effects (event_id uuid PRIMARY KEY, n int NOT NULL)")
            .await
            .unwrap();
    }
    let inbox = Inbox::new("effects");
    let lost_ack: Vec<uuid::Uuid> = events.iter().step_by(500).map(|e| e.id).collect();
    let handler = tower::service_fn(move |d: Delivery| {
        let (pool, inbox, lost_ack) = (pool.clone(), inbox.clone(), lost_ack.clone());
        async move {
            let mut client = pool.get().await?;
            let tx = client.transaction().await?;
            if inbox.first_postgres(&*tx, d.event.id).await? {
                tx.execute(
                    "INSERT INTO effects VALUES ($1, 1) \
                     ON CONFLICT (event_id) DO UPDATE SET n = effects.n + 1",
                    &[&d.event.id],
                )
                .await?;
            }
            tx.commit().await?;
            if d.delivered == 1 && lost_ack.contains(&d.event.id) {
                return Err::<(), BoxError>("the ack was lost".into());
            }
            Ok(())
        }
    });
    let (consumer, task) = JetStreamConsumer::builder("effects")
        .jetstream(js.clone())
        .stream(stream)
        .batch(200)
        .backoff(
            tower_patterns_core::backoff::Backoff::Constant(Duration::from_millis(20)),
            Duration::from_secs(1),
        )
        .handler(handler)
        .build()
        .unwrap()
        .spawn();
    let mut done = false;
    for _ in 0..12_000 {
        if consumer.handled() == EVENTS {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        done,
        "the consumer handled {} of {EVENTS}",
        consumer.handled()
    );
    assert_eq!(
        consumer.redelivered(),
        lost_ack_count(),
        "each lost ack redelivered"
    );
    consumer.stop();
    task.await.unwrap().unwrap();

    let client = store.pool().get().await.unwrap();
    let row = client
        .query_one("SELECT count(*), max(n), min(n) FROM effects", &[])
        .await
        .unwrap();
    let (count, max, min): (i64, i32, i32) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(
        (count, max, min),
        (EVENTS as i64, 1, 1),
        "each effect applied once"
    );
    let missing: i64 = client
        .query_one(
            "SELECT count(*) FROM unnest($1::uuid[]) AS e(id) \
             WHERE NOT EXISTS (SELECT 1 FROM effects f WHERE f.event_id = e.id)",
            &[&events.iter().map(|e| e.id).collect::<Vec<_>>()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(missing, 0, "every stored event's effect applied");
}

fn lost_ack_count() -> u64 {
    EVENTS.div_ceil(500)
}
