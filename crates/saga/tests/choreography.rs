//! The trip booking choreographed: flight, hotel and payment react to each other's events,
//! and failure events run the compensations back. Run as a CQRS external projection over
//! the in-memory log, and by hand to redeliver events.

mod support;

use std::sync::Arc;

use serde_json::json;
use support::{Act, Ledger};
use tower_patterns_core::backoff::Backoff;
use tower_patterns_cqrs::{MemoryCheckpoints, Projection};
use tower_patterns_eventstore::{
    Direction, EventData, EventStore, ExpectedVersion, GlobalPosition, InMemoryStore,
};
use tower_patterns_saga::{
    Attempts, SagaId,
    choreography::{Choreography, ChoreographyMessage, Reaction},
};

fn trip(
    store: &Arc<InMemoryStore>,
    ledger: &Ledger,
    acts: &[(&str, Act)],
) -> Choreography<InMemoryStore> {
    let act = |step: &str| {
        acts.iter()
            .find(|(s, _)| *s == step)
            .map_or(Act::Ok, |(_, a)| *a)
    };
    Choreography::builder("trip")
        .store(store.clone())
        .reaction(
            Reaction::new("flight", "TripRequested", ledger.service(act("flight")))
                .emits("FlightBooked")
                .fails_with("FlightFailed")
                .compensate_on(
                    ["HotelFailed", "HotelCancelled"],
                    ledger.service(Act::Ok),
                    "FlightCancelled",
                ),
        )
        .reaction(
            Reaction::new("hotel", "FlightBooked", ledger.service(act("hotel")))
                .emits("HotelBooked")
                .fails_with("HotelFailed")
                .retry(Attempts::new(
                    2,
                    Backoff::Constant(std::time::Duration::from_millis(10)),
                ))
                .compensate_on(["PaymentFailed"], ledger.service(Act::Ok), "HotelCancelled"),
        )
        .reaction(
            Reaction::new("payment", "HotelBooked", ledger.service(act("payment")))
                .emits("PaymentProcessed")
                .fails_with("PaymentFailed"),
        )
        .build()
        .unwrap()
}

/// Hands every event of the log to the choreography until nothing new comes.
async fn pump(store: &InMemoryStore, c: &Choreography<InMemoryStore>) {
    let mut after = GlobalPosition::START;
    loop {
        let page = store.read_all(after, 100).await.unwrap();
        let Some(last) = page.last() else { return };
        after = last.position;
        for e in &page {
            c.handle(e).await.unwrap();
        }
    }
}

async fn types(store: &InMemoryStore, stream: &str) -> Vec<String> {
    store
        .read_stream(stream, 1, Direction::Forward, 100)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_type)
        .collect()
}

fn id(s: &str) -> SagaId {
    SagaId::new(s).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_trip_choreographed_as_a_projection_books_all_three() {
    let store = Arc::new(InMemoryStore::new());
    let ledger = Ledger::in_memory();
    let c = trip(&store, &ledger, &[]);
    let (handle, _task) = Projection::builder("trip_choreography")
        .source(store.clone())
        .external(MemoryCheckpoints::new(), c.clone())
        .build()
        .unwrap()
        .spawn();
    c.begin(&id("42"), "TripRequested", json!({ "who": "ada" }))
        .await
        .unwrap();
    let stream = c.stream(&id("42"));
    while types(&store, &stream).await.len() < 4 {
        let head = store.head().await.unwrap().unwrap().position;
        handle
            .wait_for(head, std::time::Duration::from_secs(5))
            .await;
    }
    assert_eq!(
        types(&store, &stream).await,
        [
            "TripRequested",
            "FlightBooked",
            "HotelBooked",
            "PaymentProcessed"
        ]
    );
    let last = store
        .read_stream(&stream, 4, Direction::Forward, 1)
        .await
        .unwrap();
    let message: ChoreographyMessage = last[0].decode().unwrap();
    assert_eq!(message.input, json!({ "who": "ada" }));
    assert_eq!(
        message.outputs.keys().collect::<Vec<_>>(),
        ["flight", "hotel", "payment"]
    );
    assert_eq!(message.outputs["hotel"]["key"], "42/hotel/do/0");
}

#[tokio::test(start_paused = true)]
async fn a_failed_payment_cancels_the_hotel_then_the_flight() {
    let store = Arc::new(InMemoryStore::new());
    let ledger = Ledger::in_memory();
    let c = trip(&store, &ledger, &[("payment", Act::Refuse)]);
    c.begin(&id("p"), "TripRequested", json!({})).await.unwrap();
    pump(&store, &c).await;
    assert_eq!(
        types(&store, "trip-p").await,
        [
            "TripRequested",
            "FlightBooked",
            "HotelBooked",
            "PaymentFailed",
            "HotelCancelled",
            "FlightCancelled"
        ]
    );
    assert_eq!(ledger.undone("p"), ["flight", "hotel"]);
    let failed = store
        .read_stream("trip-p", 4, Direction::Forward, 1)
        .await
        .unwrap();
    let message: ChoreographyMessage = failed[0].decode().unwrap();
    assert_eq!(
        (message.failed.as_deref(), message.reason.as_deref()),
        (Some("payment"), Some("payment refused"))
    );
}

#[tokio::test(start_paused = true)]
async fn a_failed_hotel_cancels_the_flight_and_redelivery_changes_nothing() {
    let store = Arc::new(InMemoryStore::new());
    let ledger = Ledger::in_memory();
    let c = trip(&store, &ledger, &[("hotel", Act::Refuse)]);
    c.begin(&id("h"), "TripRequested", json!({})).await.unwrap();
    c.begin(&id("h"), "TripRequested", json!({})).await.unwrap();
    pump(&store, &c).await;
    let once = [
        "TripRequested",
        "FlightBooked",
        "HotelFailed",
        "FlightCancelled",
    ];
    assert_eq!(types(&store, "trip-h").await, once);
    // Every event delivered again, twice: nothing new in the log, no effect twice.
    for _ in 0..2 {
        for e in store
            .read_stream("trip-h", 1, Direction::Forward, 100)
            .await
            .unwrap()
        {
            c.handle(&e).await.unwrap();
        }
    }
    assert_eq!(types(&store, "trip-h").await, once);
    assert_eq!(ledger.most_per_step(), 1);
    assert_eq!(ledger.undone("h"), ["flight"]);
}

#[tokio::test(start_paused = true)]
async fn an_unknown_outcome_is_undone_before_the_failure_is_reported() {
    let store = Arc::new(InMemoryStore::new());
    let ledger = Ledger::in_memory();
    let c = trip(&store, &ledger, &[("hotel", Act::AlwaysFail)]);
    c.begin(&id("u"), "TripRequested", json!({})).await.unwrap();
    pump(&store, &c).await;
    assert_eq!(
        types(&store, "trip-u").await,
        [
            "TripRequested",
            "FlightBooked",
            "HotelFailed",
            "FlightCancelled"
        ]
    );
    assert_eq!(
        ledger.count("u", "hotel", tower_patterns_saga::Phase::Action),
        0
    );
}

#[tokio::test(start_paused = true)]
async fn a_redelivery_that_succeeds_after_a_logged_failure_is_undone() {
    let store = Arc::new(InMemoryStore::new());
    let ledger = Ledger::in_memory();
    // The hotel fails its first two calls (both attempts of the first delivery), then works.
    let c = trip(&store, &ledger, &[("hotel", Act::FailFirst(2))]);
    c.begin(&id("r"), "TripRequested", json!({})).await.unwrap();
    pump(&store, &c).await;
    assert_eq!(
        types(&store, "trip-r").await,
        [
            "TripRequested",
            "FlightBooked",
            "HotelFailed",
            "FlightCancelled"
        ]
    );
    let booked = store
        .read_stream("trip-r", 2, Direction::Forward, 1)
        .await
        .unwrap()
        .remove(0);
    c.handle(&booked).await.unwrap();
    assert_eq!(ledger.done("r"), ["flight", "hotel"]);
    assert_eq!(
        ledger.undone("r"),
        ["flight", "hotel"],
        "the late effect was undone"
    );
    assert_eq!(types(&store, "trip-r").await.len(), 4);
}

#[tokio::test(start_paused = true)]
async fn bad_events_and_settings_are_refused() {
    let store = Arc::new(InMemoryStore::new());
    let ledger = Ledger::in_memory();
    let c = trip(&store, &ledger, &[]);
    let forged = EventData::json("FlightBooked", &json!("not a message")).unwrap();
    store
        .append("trip-x", ExpectedVersion::Any, vec![forged])
        .await
        .unwrap();
    let e = store
        .read_stream("trip-x", 1, Direction::Forward, 1)
        .await
        .unwrap()
        .remove(0);
    assert!(c.handle(&e).await.is_err());
    // Another stream, or a type no one listens for: ignored.
    let other = EventData::json("FlightBooked", &json!("x")).unwrap();
    store
        .append("hotel-x", ExpectedVersion::Any, vec![other])
        .await
        .unwrap();
    let e = store
        .read_stream("hotel-x", 1, Direction::Forward, 1)
        .await
        .unwrap()
        .remove(0);
    assert!(c.handle(&e).await.is_ok());

    let field = |b: tower_patterns_saga::choreography::ChoreographyBuilder<Arc<InMemoryStore>>| {
        b.build().unwrap_err().field()
    };
    let base = || Choreography::builder("trip").store(store.clone());
    assert_eq!(field(base()), "reactions");
    let r = || Reaction::new("a", "X", ledger.service(Act::Ok));
    assert_eq!(field(base().reaction(r())), "reactions");
    assert_eq!(
        field(base().reaction(r().emits("Y"))),
        "reactions",
        "fails_with missing"
    );
    assert_eq!(
        field(base().reaction(r().fails_with("Z"))),
        "reactions",
        "emits missing"
    );
    assert_eq!(c.name(), "trip");
    assert_eq!(
        field(
            base()
                .reaction(r().emits("Y").fails_with("Z"))
                .reaction(r().emits("Y").fails_with("Z"))
        ),
        "reactions"
    );
    assert_eq!(
        field(
            base().reaction(
                r().emits("Y")
                    .fails_with("Z")
                    .retry(Attempts::new(0, Backoff::default()))
            )
        ),
        "attempts"
    );
    assert_eq!(
        field(
            Choreography::builder("")
                .store(store.clone())
                .reaction(r().emits("Y").fails_with("Z"))
        ),
        "name"
    );
}
