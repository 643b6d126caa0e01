//! Shared by the NATS JetStream tests: a context on the test command's server, and a stream
//! of their own per test.
#![allow(dead_code)]

use async_nats::jetstream;
use tower_patterns_cqrs::bus;
use tower_patterns_testkit::{Server, server_url};

/// A JetStream context, or `None` (skipped) without a NATS server.
pub(crate) async fn nats() -> Option<jetstream::Context> {
    let url = server_url(Server::Nats)?;
    let client = async_nats::connect(url)
        .await
        .expect("the test NATS answers");
    Some(jetstream::new(client))
}

/// A unique stream `TP_<TAG>_<id>` capturing `tp_<id>.>`: (stream, subject prefix).
pub(crate) async fn fresh_stream(
    js: &jetstream::Context,
    tag: &str,
) -> (jetstream::stream::Stream, String) {
    let id = uuid::Uuid::now_v7().simple().to_string();
    let prefix = format!("tp_{id}");
    let stream = bus::ensure_stream(
        js,
        &format!("TP_{tag}_{id}"),
        &[&format!("{prefix}.>")],
        bus::DEFAULT_DUPLICATE_WINDOW,
    )
    .await
    .unwrap();
    (stream, prefix)
}
