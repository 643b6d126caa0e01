//! The trip booking choreographed across three services over NATS JetStream: the outbox
//! relay publishes the log, and each service's durable consumer hands its events to its own
//! choreography (one reaction each), which appends its answer to the log.
#![cfg(feature = "nats")]

mod support;

use std::{sync::Arc, time::Duration};

use serde_json::json;
use support::{Act, Ledger};
use tower_patterns_cqrs::{
    MemoryCheckpoints,
    bus::{self, JetStreamConsumer, OutboxRelay},
};
use tower_patterns_eventstore::{Direction, EventStore, InMemoryStore};
use tower_patterns_saga::{
    SagaId,
    choreography::{Choreography, Reaction},
};
use tower_patterns_testkit::{Server, server_url};

async fn types(store: &InMemoryStore, stream: &str) -> Vec<String> {
    let events = store
        .read_stream(stream, 1, Direction::Forward, 100)
        .await
        .unwrap();
    events.into_iter().map(|e| e.event_type).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trip_choreographed_over_jetstream_compensates_a_failed_payment() {
    let Some(url) = server_url(Server::Nats) else {
        return;
    };
    let js = async_nats::jetstream::new(async_nats::connect(url).await.unwrap());
    let id = uuid::Uuid::now_v7().simple().to_string();
    let prefix = format!("tp_{id}");
    bus::ensure_stream(
        &js,
        &format!("TP_SAGA_{id}"),
        &[&format!("{prefix}.>")],
        bus::DEFAULT_DUPLICATE_WINDOW,
    )
    .await
    .unwrap();
    let store = Arc::new(InMemoryStore::new());
    let ledger = Ledger::in_memory();
    let p = prefix.clone();
    let (_relay, _relay_task) = OutboxRelay::builder(format!("saga_relay_{id}"))
        .source(store.clone())
        .checkpoints(MemoryCheckpoints::new())
        .jetstream(js.clone())
        .subject(move |e| format!("{p}.{}", e.event_type))
        .build()
        .unwrap()
        .spawn();
    // Three services, each with its own reaction and durable consumer.
    let services = [
        Reaction::new("flight", "TripRequested", ledger.service(Act::Ok))
            .emits("FlightBooked")
            .fails_with("FlightFailed")
            .compensate_on(
                ["HotelFailed", "HotelCancelled"],
                ledger.service(Act::Ok),
                "FlightCancelled",
            ),
        Reaction::new("hotel", "FlightBooked", ledger.service(Act::Ok))
            .emits("HotelBooked")
            .fails_with("HotelFailed")
            .compensate_on(["PaymentFailed"], ledger.service(Act::Ok), "HotelCancelled"),
        Reaction::new("payment", "HotelBooked", ledger.service(Act::Refuse))
            .emits("PaymentProcessed")
            .fails_with("PaymentFailed"),
    ];
    let mut consumers = Vec::new();
    for reaction in services {
        let choreography = Choreography::builder("trip")
            .store(store.clone())
            .reaction(reaction)
            .build()
            .unwrap();
        let stream = js.get_stream(format!("TP_SAGA_{id}")).await.unwrap();
        consumers.push(
            JetStreamConsumer::builder(format!("saga_{id}_{}", consumers.len()))
                .jetstream(js.clone())
                .stream(stream)
                .handler(choreography)
                .build()
                .unwrap()
                .spawn(),
        );
    }
    let begin = Choreography::builder("trip")
        .store(store.clone())
        .reaction(
            Reaction::new("none", "Nothing", ledger.service(Act::Ok))
                .emits("A")
                .fails_with("B"),
        )
        .build()
        .unwrap();
    begin
        .begin(&SagaId::new("j").unwrap(), "TripRequested", json!({}))
        .await
        .unwrap();
    let want = [
        "TripRequested",
        "FlightBooked",
        "HotelBooked",
        "PaymentFailed",
        "HotelCancelled",
        "FlightCancelled",
    ];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while types(&store, "trip-j").await.len() < want.len() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "got {:?}",
            types(&store, "trip-j").await
        );
        let head = store.head().await.unwrap().unwrap().position;
        let _ = tokio::time::timeout(Duration::from_secs(1), store.wait_for_events(head)).await;
    }
    assert_eq!(types(&store, "trip-j").await, want);
    assert_eq!(ledger.undone("j"), ["flight", "hotel"]);
    assert_eq!(ledger.most_per_step(), 1);
}
