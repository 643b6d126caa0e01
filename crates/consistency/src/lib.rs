//! Eventual consistency a client can control and measure: consistency tokens, read-your-writes
//! and monotonic reads, and read-replica routing.
//!
//! A write returns at once; read models (CQRS projections) and PostgreSQL streaming replicas
//! catch up a moment later. This crate makes that delay something a client can reason about:
//!
//! - **Consistency tokens** ([`Tokens`]): a write's response carries a signed, opaque token of
//!   the position it reached (the event store's global position for read models, the
//!   primary's WAL position for replicas). A malformed or forged token is a 400, never a wait.
//! - **Read-your-writes and monotonic reads** ([`layer::ConsistencyLayer`]): a read that
//!   carries a token is answered only by a read side that has reached it, waiting at most a
//!   configured time; past that, a 503 with `Retry-After`, the primary, or the stale answer
//!   marked stale. The session's token travels in a header or a cookie, and only moves
//!   forward.
//! - **Read replicas** (`replica`, feature `postgres`): writes go to the primary, reads to a
//!   replica that has replayed the request's token, skipping replicas that are down or too far
//!   behind, and falling back to the primary; replica lag in bytes and seconds as metrics and
//!   through a handle.
//!
//! Read sides implement [`ReadSide`]: a [`ProjectionHandle`](tower_patterns_cqrs::ProjectionHandle),
//! several of them ([`AllOf`]), a `ReplicaSet`, or a model of your own reporting
//! [`Progress`].
//!
//! ```
//! use std::time::Duration;
//! use tower_patterns_consistency::{Mark, Progress, ReadSide, TokenKey, Tokens};
//! use tower_patterns_eventstore::GlobalPosition;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let tokens = Tokens::new("catalog", TokenKey::new(*b"sixteen byte key"));
//! let read_model = Progress::new(Mark::Position(GlobalPosition::START));
//!
//! // A command committed at position 12: its response carries this token.
//! let token = tokens.issue(Mark::Position(GlobalPosition::new(0, 12)));
//! // A later query sends it back: the read model has not applied 12 yet.
//! let wanted = tokens.verify(&token).unwrap();
//! assert!(!read_model.reached(wanted));
//! read_model.advance(Mark::Position(GlobalPosition::new(0, 12)));
//! assert!(read_model.wait(wanted, Duration::from_secs(1)).await);
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

mod concern;
pub mod layer;
mod mark;
mod read_side;
#[cfg(feature = "postgres")]
pub mod replica;
mod token;

pub use concern::{ConcernOf, MarkResponse, ReadConcern};
pub use mark::{Distance, Lsn, Mark, MarkKind};
pub use read_side::{AllOf, BoxWait, Progress, ReadSide};
pub use token::{TokenError, TokenKey, Tokens};
