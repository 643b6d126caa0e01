//! `--nats URL`: every order event of every shard published to NATS JetStream, in order and at
//! least once (the transactional outbox: each shard's event log is its outbox, and a relay
//! per shard publishes what its store committed, each event under its id so that JetStream
//! drops a repeat). Other services subscribe to `storefront.orders.>`.

use std::{sync::Arc, time::Duration};

use tower_patterns::{
    BoxError,
    cqrs::{
        bus::{DEFAULT_DUPLICATE_WINDOW, OutboxRelay, OutboxRelayHandle, ensure_stream},
        checkpoint::SqliteCheckpoints,
    },
};

use crate::shards::Shards;

/// The JetStream stream the order events go to.
pub(crate) const STREAM: &str = "STOREFRONT_ORDERS";

/// Connects to `url`, makes sure the stream exists, and starts one relay per shard; their
/// checkpoints are kept in `outbox.db` in `dir`, so a restart publishes only what is new.
pub(crate) async fn relay(
    url: &str,
    dir: &std::path::Path,
    shards: &Shards,
) -> Result<Vec<OutboxRelayHandle>, BoxError> {
    // Fail at start, in one line, when the server is not there (the client reconnects by
    // itself once it has connected).
    let client = async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await?;
    let jetstream = async_nats::jetstream::new(client);
    let subjects = ["storefront.orders.>"];
    tokio::time::timeout(
        Duration::from_secs(10),
        ensure_stream(&jetstream, STREAM, &subjects, DEFAULT_DUPLICATE_WINDOW),
    )
    .await
    .map_err(|_| "JetStream did not answer within 10 s")??;
    let checkpoints = SqliteCheckpoints::open(dir.join("outbox.db"))?;
    let mut handles = Vec::new();
    for shard in shards.all.iter() {
        let index = shard.index;
        let (handle, _task) = OutboxRelay::builder(format!("orders-{index}"))
            .source(Arc::clone(shard.orders.store()))
            .checkpoints(checkpoints.clone())
            .jetstream(jetstream.clone())
            .subject(move |e| format!("storefront.orders.{index}.{}", e.event_type))
            .build()?
            .spawn();
        handles.push(handle);
    }
    Ok(handles)
}
