//! Middleware that sends commands to the write side and queries to the read side.
//!
//! [`CqrsLayer`] wraps the read side (a service answering queries from read models) and holds
//! the write side (an aggregate's [`CommandService`](tower_patterns_eventstore::CommandService),
//! or any service answering [`Committed`](tower_patterns_eventstore::Committed)). A classifier
//! decides each request's side: a closure `Fn(&Req) -> Side`, or for HTTP the method and route
//! ([`HttpClassifier`]: safe methods are queries, the others commands, explicit routes first).
//! An adapter turns a command request into the write side's request and the commit into the
//! response ([`Direct`] by default, [`MapCommand`] for two closures, [`HttpCommands`] for
//! HTTP).
//!
//! **Commands answer with the global position they reached**: the
//! [`Committed`](tower_patterns_eventstore::Committed) (`positions.last()`) for other
//! services, and for HTTP the [`POSITION_HEADER`] (`tp-position: v1.<commit>.<index>`, a
//! [`PositionToken`]) plus the `Committed` in the response's extensions. A client that sends the token back can wait until the read models
//! have applied its write.
//!
//! **Readiness.** A router cannot know in `poll_ready` which side the next request goes to.
//! tower's `Steer` waits for *every* service to be ready, which reserves capacity on a side the
//! request will not use and lets a saturated write side hold back every query
//! (head-of-line blocking). [`Cqrs`] is instead always ready and each request waits for its
//! own side's readiness inside its response future, on a clone of that side (as tower's
//! `Oneshot` and axum's router do): queries flow while the write side is saturated, and a
//! concurrency limit on either side still bounds that side. The cost is that backpressure shows
//! as a pending response rather than a pending `poll_ready`: bound the requests in flight in
//! front of the layer (a bulkhead, a load shed) if callers must see it early.
//!
//! **Errors** are `BoxError`s. `build()` registers [`BadCommand`] (its 4xx and fixed phrase)
//! and [`PositionError`] (400) with core's HTTP mapping; the write side's `RepositoryError` is
//! registered by its repository (a version conflict is `409 Conflict`, a refused command
//! `422`), so core's `ErrorResponseLayer` or axum's `HandleErrorLayer` with
//! `tower_patterns_core::http::handle_error` answers every failure.
//!
//! The handle ([`CqrsHandle`], pattern `cqrs`) counts commands, queries and failed commands
//! (`tower_patterns_cqrs_commands_total`, `_queries_total`, `_command_errors_total`).
//!
//! ```
//! use std::{convert::Infallible, sync::Arc};
//! use tower::{Layer, ServiceExt, service_fn};
//! use tower_patterns_cqrs::layer::{CqrsLayer, MapCommand, Side};
//! use tower_patterns_eventstore::{
//!     Aggregate, Command, CommandService, Committed, DomainEvent, InMemoryStore, Repository,
//! };
//!
//! #[derive(Default, serde::Serialize, serde::Deserialize)]
//! struct Counter(u64);
//! #[derive(serde::Serialize, serde::Deserialize)]
//! enum Event { Added(u64) }
//! impl DomainEvent for Event {
//!     fn event_type(&self) -> &'static str { "Added" }
//! }
//! impl Aggregate for Counter {
//!     type Command = u64;
//!     type Event = Event;
//!     type Error = Infallible;
//!     fn handle(&self, n: &u64) -> Result<Vec<Event>, Infallible> { Ok(vec![Event::Added(*n)]) }
//!     fn apply(&mut self, Event::Added(n): &Event) { self.0 += n }
//! }
//!
//! enum Req { Add(Command<u64>), Read }
//! #[derive(Debug)]
//! enum Reply { Committed(Committed), Total(u64) }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let store = Arc::new(InMemoryStore::new());
//! let commands = CommandService::new(Repository::<Counter, _>::new(store, "counter-"));
//! let layer = CqrsLayer::builder("counter")
//!     .commands(commands)
//!     .classify(|req: &Req| match req { Req::Add(_) => Side::Command, Req::Read => Side::Query })
//!     .adapter(MapCommand::new(
//!         |req: Req| match req { Req::Add(c) => Ok(c), Req::Read => Err("not a command".into()) },
//!         Reply::Committed,
//!     ))
//!     .build()?;
//! let reads = service_fn(|_: Req| async { Ok::<_, Infallible>(Reply::Total(0)) });
//! let svc = layer.layer(reads);
//!
//! let Reply::Committed(c) = svc.clone().oneshot(Req::Add(Command::new("a", 2))).await? else {
//!     unreachable!()
//! };
//! assert_eq!(c.positions.len(), 1); // the position the command reached
//! assert!(matches!(svc.oneshot(Req::Read).await?, Reply::Total(_)));
//! assert_eq!((layer.handle().commands(), layer.handle().queries()), (1, 1));
//! # Ok(())
//! # }
//! ```

mod adapter;
mod classify;
mod error;
pub mod future;
mod handle;
#[allow(clippy::module_inception)]
mod layer;
mod position;
mod service;

pub use adapter::{CommandAdapter, Direct, HttpCommands, MapCommand, committed_response};
pub use classify::{Classify, HttpClassifier, Side};
pub use error::{BadCommand, PositionError};
pub use future::ResponseFuture;
pub use handle::CqrsHandle;
pub use layer::{CqrsBuilder, CqrsLayer, NoClassifier, NoCommands};
pub use position::{POSITION_HEADER, PositionToken};
pub use service::Cqrs;
