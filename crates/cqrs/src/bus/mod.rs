//! The event bus: in process for one node, NATS JetStream through a transactional outbox for
//! many.
//!
//! | bus | what it gives | when |
//! |---|---|---|
//! | `LocalBus` (module `local`, in process) | a Tokio broadcast of each event as a projection applies it; nothing survives a restart, a slow receiver skips | one node: caches, web sockets, tests |
//! | `OutboxRelay` + `JetStreamConsumer` (feature `nats`) | every committed event published once into a JetStream stream, in log order; durable consumers that acknowledge after handling, redeliver with backoff, and set aside what keeps failing | many nodes and services |
//!
//! # The transactional outbox
//!
//! The event store's global log *is* the outbox: a command's events and its "to publish"
//! record are the same rows, committed in one transaction. The `OutboxRelay` reads the log
//! after its own checkpoint (only committed events can be read), publishes each event with
//! its id as `Nats-Msg-Id` and headers for its stream, version, position and type, then
//! stores the checkpoint of the last event JetStream acknowledged. Nothing uncommitted is
//! published, and nothing committed is lost:
//!
//! - a crash between a publish and its checkpoint republishes the rest of that batch, which
//!   JetStream drops inside the stream's duplicate window, answering `duplicate` (counted as
//!   `tower_patterns_cqrs_outbox_duplicates_total`); `ensure_stream` sets the window;
//! - a lost connection or a missing stream fails the publish: the relay backs off and tries
//!   again from the first unacknowledged event, never checkpointing past it;
//! - a repeat after the window (a relay down longer than it) reaches consumers, which drop it
//!   by event id with the [`Inbox`](crate::inbox).
//!
//! Order: JetStream stores a batch in log order. After a publish that failed in the middle of
//! a batch, events after it in that batch may already be stored ahead of its retry.
//!
//! # Consumers
//!
//! A `JetStreamConsumer` is a durable pull consumer with explicit acks: each message goes
//! to a handler (a `tower::Service<Delivery>`) as a `Delivery` (the event decoded back, and
//! its stream sequence and deliveries). `Ok` acknowledges it; an error asks for it again
//! after a backoff delay, and at `max_deliver` deliveries (or a permanent
//! [`ApplyError`](crate::ApplyError)) publishes it to a dead-letter subject with its stream
//! sequence and the error as headers, then terminates it. A last delivery that gets no
//! answer within `ack_wait` (a consumer that crashed in the middle, a message that waited in
//! the client's buffer too long) is set aside too, from JetStream's max-deliveries advisory,
//! by whichever instance of the consumer is running when JetStream gives up on it; with none
//! running then, it gets no dead letter (see `JetStreamConsumer`'s limits). Delivery is at least once: a handler
//! whose effect must happen once records the event id with the effect, in one transaction
//! ([`Inbox`](crate::inbox)).
//!
//! # Metrics
//!
//! | name | kind | labels |
//! |---|---|---|
//! | `tower_patterns_cqrs_outbox_published_total` | counter | `name` |
//! | `tower_patterns_cqrs_outbox_duplicates_total` | counter | `name` |
//! | `tower_patterns_cqrs_outbox_errors_total` | counter | `name` |
//! | `tower_patterns_cqrs_outbox_lag_events` | gauge (set by `handle.lag()`) | `name` |
//! | `tower_patterns_cqrs_consumer_handled_total` | counter | `name` |
//! | `tower_patterns_cqrs_consumer_redelivered_total` | counter | `name` |
//! | `tower_patterns_cqrs_consumer_dead_lettered_total` | counter | `name` |
//!
//! # Examples
//!
//! The relay checks its settings when built; this needs no server (the client connects in
//! the background):
//!
//! ```
//! # #[cfg(feature = "nats")]
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use tower_patterns_cqrs::{MemoryCheckpoints, bus::OutboxRelay};
//! use tower_patterns_eventstore::InMemoryStore;
//!
//! let client = async_nats::ConnectOptions::new()
//!     .retry_on_initial_connect()
//!     .connect("nats://127.0.0.1:4222")
//!     .await?;
//! let jetstream = async_nats::jetstream::new(client);
//! let relay = |batch| {
//!     OutboxRelay::builder("catalog")
//!         .source(Arc::new(InMemoryStore::new()))
//!         .checkpoints(MemoryCheckpoints::new())
//!         .jetstream(jetstream.clone())
//!         .subject(|e| format!("catalog.{}", e.event_type))
//!         .batch(batch)
//!         .build()
//! };
//! assert!(relay(100).is_ok());
//! assert_eq!(relay(0).unwrap_err().field(), "batch");
//! # Ok(())
//! # }
//! # #[cfg(not(feature = "nats"))]
//! # fn main() {}
//! ```
//!
//! The product catalog's events to JetStream, and a consumer that reindexes each product
//! (needs a NATS server with JetStream and a PostgreSQL):
//!
//! ```no_run
//! # #[cfg(all(feature = "nats", feature = "postgres"))]
//! # async fn example() -> Result<(), Box<dyn std::error::Error>> {
//! use std::{sync::Arc, time::Duration};
//! use tower_patterns_cqrs::{
//!     MemoryCheckpoints,
//!     bus::{self, Delivery, JetStreamConsumer, OutboxRelay},
//! };
//! use tower_patterns_eventstore::postgres::PostgresStore;
//!
//! let store = Arc::new(PostgresStore::connect("postgres://localhost/shop", 8).await?);
//! let jetstream = async_nats::jetstream::new(async_nats::connect("nats://localhost:4222").await?);
//! let stream = bus::ensure_stream(&jetstream, "CATALOG", &["catalog.>"], bus::DEFAULT_DUPLICATE_WINDOW).await?;
//!
//! let (relay, _task) = OutboxRelay::builder("catalog")
//!     .source(store)
//!     .checkpoints(MemoryCheckpoints::new()) // use a durable checkpoint store
//!     .jetstream(jetstream.clone())
//!     .subject(|e| format!("catalog.{}", e.event_type))
//!     .batch(256)
//!     .build()?
//!     .spawn();
//!
//! let (consumer, _task) = JetStreamConsumer::builder("search-index")
//!     .jetstream(jetstream.clone())
//!     .stream(stream)
//!     .handler(tower::service_fn(|d: Delivery| async move {
//!         println!("reindex {} after {}", d.event.stream_id, d.event.event_type);
//!         Ok::<_, std::convert::Infallible>(())
//!     }))
//!     .max_deliver(5)
//!     .ack_wait(Duration::from_secs(30))
//!     .dead_letter("catalog_dead.search-index")
//!     .build()?
//!     .spawn();
//! println!("{} published, {} handled", relay.published(), consumer.handled());
//! # Ok(())
//! # }
//! ```

pub mod local;

pub use local::{LocalBus, LocalBusBuilder, Subscriber, SubscriberError};

#[cfg(feature = "nats")]
mod consumer;
#[cfg(feature = "nats")]
mod nats;
#[cfg(feature = "nats")]
mod outbox;

#[cfg(feature = "nats")]
pub use consumer::{
    DEAD_LETTERED, Delivery, HANDLED, JetStreamConsumer, JetStreamConsumerBuilder,
    JetStreamConsumerHandle, NoHandler, NoStream, REDELIVERED,
};
#[cfg(feature = "nats")]
pub use nats::{
    BusError, BusErrorKind, DEFAULT_DUPLICATE_WINDOW, HEADER_CONSUMER, HEADER_DELIVERIES,
    HEADER_ERROR, HEADER_METADATA, HEADER_POSITION, HEADER_SCHEMA_VERSION, HEADER_SOURCE_SEQUENCE,
    HEADER_SOURCE_STREAM, HEADER_STREAM, HEADER_TYPE, HEADER_VERSION, ensure_stream,
};
#[cfg(feature = "nats")]
pub use outbox::{
    DUPLICATES, ERRORS, LAG_EVENTS, NoCheckpoints, NoJetStream, NoSubject, OutboxRelay,
    OutboxRelayBuilder, OutboxRelayHandle, PUBLISHED, RelayStatus,
};
