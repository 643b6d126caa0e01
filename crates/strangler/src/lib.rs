//! Middleware that moves a monolith's traffic to new services route by route and percentage
//! by percentage, with easy rollback: the strangler fig pattern for tower.
//!
//! A [`StranglerLayer`] wraps the legacy service (the monolith, often a proxy to it) and holds
//! the new one. Its migration table sends each request to one side:
//!
//! - **Routes** ([`Route`]) by path prefix (longest first) and method, each in a [`Mode`]:
//!   [`Legacy`](Mode::Legacy), [`New`](Mode::New), a sticky [`Split`](Mode::Split) or
//!   [`Shadow`](Mode::Shadow); requests no route matches take the fallback mode (legacy).
//! - **Sticky splits**: a caller goes to the new side when the bucket of its key (a user id,
//!   the tenant, the client address: any key extractor, see [`key`]) is below the share, so
//!   it stays on its side, and raising 10% to 25% moves only callers onto the new side.
//! - **Overrides**: a header naming the side (for testers, opt-in), and tenants pinned to a
//!   side. Precedence: override header, tenant pin, the route's mode, the caller's bucket
//!   ([`decide`]).
//! - **At runtime** through the [`StranglerHandle`]: set a mode, roll back at once, pin
//!   tenants, make legacy read-only; or from the gateway's configuration (a route of kind
//!   `strangler`, reloaded without a restart).
//! - **Ramps** ([`ramp`]): 10% -> 25% -> 50% -> 100% over time, advancing only while the new
//!   side's error rate and p99 stay within bounds of legacy's, rolling back by themselves.
//! - **Shadow mode** ([`shadow`]): legacy answers, the new side gets a copy, the answers are
//!   compared ([`compare`]) with a noise baseline; never slowing the answer.
//! - **Dual writes** ([`dual`]): each write committed on the primary store with an outbox
//!   entry, delivered to the secondary asynchronously, and a reconciler that repairs drift.
//!
//! ```
//! use std::convert::Infallible;
//! use http::{HeaderName, Request, Response};
//! use http_body_util::Full;
//! use bytes::Bytes;
//! use tower::{service_fn, Layer, ServiceExt};
//! use tower_patterns_core::key::HeaderKey;
//! use tower_patterns_strangler::{Mode, Ramp, Route, Share, StranglerLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let side = |name: &'static str| {
//!     service_fn(move |_req: Request<Full<Bytes>>| async move {
//!         Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(name))))
//!     })
//! };
//! let migration = StranglerLayer::builder("monolith")
//!     .key(HeaderKey::new(HeaderName::from_static("x-user-id")))
//!     .new_side(side("user service"))
//!     // Half the users to the user service, each always to the same side.
//!     .route(Route::prefix("/api/users").mode(Mode::Split(Share::HALF)))
//!     // Orders ramp up from 10%, rolling back by themselves if the new side does worse.
//!     .route(Route::prefix("/api/orders").named("orders").ramp(Ramp::percentages([10, 25, 50, 100])?))
//!     .build()?;
//! let handle = migration.handle();
//! let svc = migration.layer(side("monolith"));
//!
//! let req = Request::get("/api/users/7").header("x-user-id", "7").body(Full::default())?;
//! let res = svc.clone().oneshot(req).await?;
//! # let _ = res;
//! // Everything else stays on the monolith; and a route goes back to it at once.
//! handle.rollback("/api/users")?;
//! assert_eq!(handle.mode("/api/users"), Some(Mode::Legacy));
//! # Ok(()) }
//! ```
//!
//! # Choosing the sticky key
//!
//! Split on what a user would notice moving between: the user (a verified user id), or the
//! tenant when a tenant's users share data that both sides must show alike. A client address
//! is a last resort (NATs share one, mobiles change them). A request without a key goes to
//! legacy, so a split never sends unidentified traffic to an unproven service.
//!
//! # Tower semantics
//!
//! The service is ready when the legacy side is. A request for the new side waits for a clone
//! of it to be ready within its own call (as tower's `oneshot`), so the new side, which takes
//! part of the traffic at most, never holds up the rest (tower's `Steer`, by contrast, is ready
//! only when every side is). The body of its answer is either side's as it streams ([`StranglerBody`]). Errors of either side are boxed. The
//! request body type must be buildable from bytes (`From<Bytes>`: axum's `Body`,
//! `Full<Bytes>`, the gateway's body), which shadow mode needs to send a request twice.
//!
//! # Metrics
//!
//! | metric | labels | when |
//! |---|---|---|
//! | `tower_patterns_strangler_requests_total` | `name`, `route`, `side` | counted in atomics, published by the handle's `report()` |
//! | `tower_patterns_strangler_ramp_total` | `name`, `route`, `action` | each ramp decision |
//! | `tower_patterns_strangler_shadow_total` | `name`, `outcome` | counted in atomics, published by the handle's `report()` |
//! | `tower_patterns_strangler_dual_*` | `name` | see [`dual`] |
//!
//! # When not to use it
//!
//! - **A rewrite behind one release**: if the new service replaces the old in one step and
//!   the old can be kept ready to roll back to, a deploy switch is simpler than a migration
//!   table.
//! - **Writes that cannot be on two sides**: a split sends one user's writes to one side; if
//!   the two sides cannot share or copy their data (dual writes, events), split by tenant so
//!   no data is shared across sides, or move the data first.
//! - **Inside a service**: the table routes requests between deployed services; moving code
//!   within one process is a feature flag's job.

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod compare;
pub mod dual;
mod error;
mod handle;
pub mod key;
mod layer;
pub mod ramp;
pub mod shadow;
mod share;
mod state;
mod table;

pub use error::StranglerError;
pub use handle::{RampState, RouteState, SideCounts, StranglerHandle};
pub use layer::{
    NoKey, NoNew, StranglerBuilder, StranglerLayer, body::StranglerBody, service::Strangler,
};
pub use ramp::{Ramp, RampAction, RampEvent, RampStatus, Sample};
pub use shadow::{Mismatch, Shadow, ShadowCounts};
pub use share::Share;
pub use table::{Decision, Mode, Reason, Route, Side, decide};

/// The response future of [`Strangler`].
pub mod future {
    pub use crate::layer::future::ResponseFuture;
}
