//! Middleware that gives clients read-your-writes and monotonic reads over an eventually
//! consistent read side.
//!
//! [`ConsistencyLayer`] sits in front of an HTTP service (axum, hyper, tonic) whose writes
//! commit to a primary store and whose reads are answered by a read side that follows it: CQRS
//! read models or PostgreSQL replicas.
//!
//! - **Writes** pass through; when the response carries the position the write reached (a
//!   [`Committed`](tower_patterns_eventstore::Committed) in its extensions, as the CQRS
//!   layer's HTTP adapter puts there, or a [`Mark`](crate::Mark), as the replica router
//!   does), the layer answers with a signed token of it in the [`TOKEN_HEADER`]
//!   (`tp-consistency`), in a cookie (`tp_consistency_<name>`, see [`COOKIE_PREFIX`]) and,
//!   for code in the same process, in the response's extensions ([`IssuedToken`]).
//! - **Reads** that carry a token (in the header, else in the cookie; verified) are
//!   answered only once the read side has reached it: at once when it has (a header lookup and
//!   about 45 ns of verification, no allocation), otherwise after waiting for it at most
//!   [`wait`](ConsistencyBuilder::wait). If the wait runs out, [`Behind`] decides: a 503 with
//!   `Retry-After` ([`NotCaughtUp`]), a read from the primary, or the stale answer with the
//!   [`STALE_HEADER`] saying how far behind it is.
//! - **Sessions only move forward**: the token a response sets is the later of the request's
//!   and what the response reached (a write's position; for a read served by a replica
//!   router, the replica's replay position after the read), so a client that sends back its
//!   last token never sees older state after newer (monotonic reads), across replicas with
//!   different lag too. A read model is one database that only moves forward, so its reads
//!   need no token of their own.
//! - A malformed, forged or foreign token in the header is a [`TokenError`](crate::TokenError)
//!   (400), never a wait: tokens are signed with the layer's key. One in the cookie is
//!   ignored and the cookie cleared: the client cannot see an `HttpOnly` cookie, so a 400
//!   would stick until it expired.
//! - **Readiness**: the layer forwards `poll_ready` and a read that waits holds the inner
//!   service's readiness (a concurrency limit's permit, a buffer slot) while it waits; put
//!   limiters outside the layer when that matters.
//!
//! **Metrics** (label `name`), published when the handle reports:
//! `tower_patterns_consistency_waits_total`, `tower_patterns_consistency_behind_total` (label
//! `outcome`: `unavailable`, `primary`, `stale`), `tower_patterns_consistency_bad_tokens_total`
//! and `tower_patterns_consistency_tokens_issued_total`.
//!
//! Errors are `BoxError`s; `build()` registers [`TokenError`](crate::TokenError) (400) and
//! [`NotCaughtUp`] (503) with core's HTTP mapping, so `ErrorResponseLayer` or axum's
//! `HandleErrorLayer` with `tower_patterns_core::http::handle_error` answers them.
//!
//! ```
//! use std::{convert::Infallible, time::Duration};
//! use http::{Request, Response, StatusCode};
//! use tower::{Layer, ServiceExt, service_fn};
//! use tower_patterns_consistency::{
//!     Mark, Progress, TokenKey,
//!     layer::{Behind, ConsistencyLayer, STALE_HEADER, TOKEN_HEADER},
//! };
//! use tower_patterns_core::http::classify_error;
//! use tower_patterns_eventstore::GlobalPosition;
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let at = |i| Mark::Position(GlobalPosition::new(0, i));
//! let read_model = Progress::new(at(0));
//!
//! // The default: wait up to a second, then 503.
//! let layer = ConsistencyLayer::builder("orders")
//!     .key(TokenKey::new(*b"sixteen byte key"))
//!     .read_side(read_model.clone())
//!     .build()?;
//! // An app whose POST commits at position 5 (its response says so in its extensions).
//! let app = service_fn(|req: Request<()>| async move {
//!     let mut res = Response::new(());
//!     if req.method() == http::Method::POST {
//!         res.extensions_mut().insert(Mark::Position(GlobalPosition::new(0, 5)));
//!     }
//!     Ok::<_, Infallible>(res)
//! });
//! let svc = layer.layer(app);
//!
//! let write = svc.clone().oneshot(Request::post("/orders").body(())?).await?;
//! let token = write.headers()[TOKEN_HEADER].clone();
//! let read = || Request::get("/orders/1").header(TOKEN_HEADER, token.clone()).body(()).unwrap();
//!
//! // The read model is at 0: the read waits, then is refused.
//! let err = svc.clone().oneshot(read()).await.unwrap_err();
//! assert_eq!(classify_error(&*err).status, StatusCode::SERVICE_UNAVAILABLE);
//! // Once it has applied position 5, the read goes through at once.
//! read_model.advance(at(5));
//! assert_eq!(svc.clone().oneshot(read()).await?.status(), StatusCode::OK);
//!
//! // Customised: answer stale rather than refuse, after 50 ms.
//! let stale = ConsistencyLayer::builder("orders")
//!     .key(TokenKey::new(*b"sixteen byte key"))
//!     .read_side(Progress::new(at(2)))
//!     .wait(Duration::from_millis(50))
//!     .when_behind(Behind::Stale)
//!     .build()?
//!     .layer(service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(())) }));
//! let res = stale.oneshot(read()).await?;
//! assert_eq!(res.headers()[STALE_HEADER], "events=3");
//! # Ok(())
//! # }
//! ```

mod error;
pub mod future;
mod handle;
#[allow(clippy::module_inception)]
mod layer;
mod service;

pub use error::NotCaughtUp;
pub use future::ResponseFuture;
pub use handle::ConsistencyHandle;
pub use layer::{
    Behind, COOKIE_PREFIX, ConsistencyBuilder, ConsistencyLayer, NoKey, NoReadSide, STALE_HEADER,
    TOKEN_HEADER,
};
pub use service::{After, Consistency, IssuedToken, SessionGate};
