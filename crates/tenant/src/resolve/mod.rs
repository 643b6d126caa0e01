//! Middleware that resolves the tenant of every request, verifies it, looks it up in the
//! registry, then calls the inner service.
//!
//! [`TenancyLayer::builder(name)`](TenancyLayer::builder) takes the tenant store as a required
//! part ([`store`](TenancyBuilder::store), or [`registry`](TenancyBuilder::registry) for a
//! registry with its own cache settings), then the sources; [`build`](TenancyBuilder::build)
//! gives the layer, whose service is [`Tenancy`]. A request whose tenant the registry has
//! cached is called at once, allocating nothing; otherwise it waits for one lookup.
//!
//! # Handle and metrics
//!
//! [`TenancyLayer::handle`] (or [`Tenancy::handle`]) gives a [`TenancyHandle`], a core
//! `StateHandle` of pattern `tenant`: degraded while the tenant store is failing, with the
//! registry's cache sizes, lookups and refusals in its report. Metrics (labels `name`, and
//! `kind` for refusals), registered when the layer is built:
//!
//! | metric | counts |
//! |---|---|
//! | `tower_patterns_tenant_refusals_total` | refused requests, by `kind`: `malformed`, `missing_credentials`, `invalid_credentials`, `conflict`, `unknown`, `suspended`, `unavailable` |
//! | `tower_patterns_tenant_lookups_total` | requests that waited for the tenant store (tenant or API key not cached) |
//!
//! A request admitted from the cache is not counted: the resolved path does no metrics work.
//!
//! # Example
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_patterns_core::observe::{Health, StateHandle};
//! use tower_patterns_tenant::{Registry, StaticTenants, TenancyLayer, TenantContext};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let tenants = || StaticTenants::from_toml("[[tenants]]\nid = \"acme\"\nplan = \"gold\"").unwrap();
//! // The default: the store cached with the registry's defaults.
//! let layer = TenancyLayer::builder("storefront")
//!     .store(tenants())
//!     .header("x-tenant-id")
//!     .subdomain("shop.example")
//!     .allow_unverified() // trusted internal callers only: anyone can send these
//!     .build()
//!     .unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(layer.clone())
//!     .service(service_fn(|req: Request<()>| async move {
//!         let plan = TenantContext::of(&req).unwrap().plan().to_owned();
//!         Ok::<_, Infallible>(Response::new(plan))
//!     }));
//!
//! let req = Request::builder().header("host", "acme.shop.example").body(()).unwrap();
//! assert_eq!(svc.clone().oneshot(req).await.unwrap().into_body(), "gold");
//!
//! let conflict = Request::builder()
//!     .header("host", "acme.shop.example")
//!     .header("x-tenant-id", "globex")
//!     .body(())
//!     .unwrap();
//! let err = svc.oneshot(conflict).await.unwrap_err();
//! assert!(err.to_string().starts_with("conflicting tenant sources"));
//!
//! let handle = layer.handle();
//! assert_eq!((handle.pattern(), handle.name()), ("tenant", "storefront"));
//! assert_eq!(handle.health(), Health::Ready);
//! assert_eq!(handle.report().value("refused_conflict"), Some(1.0));
//!
//! // Customised: a registry with its own cache lifetimes and bound.
//! use std::time::Duration;
//! let registry = Registry::with_ttls(tenants(), Duration::from_secs(5), Duration::from_secs(1), 1_000);
//! let layer = TenancyLayer::builder("admin")
//!     .registry(registry)
//!     .header("x-tenant-id")
//!     .allow_unverified()
//!     .build()
//!     .unwrap();
//! # let _ = layer;
//! # }
//! ```

mod admit;
mod builder;
mod context;
pub mod future;
mod handle;
mod layer;
mod net;
mod resolver;
mod service;
mod sources;
mod stats;

pub use builder::{NoStore, TenancyBuilder};
pub use context::{ClientIp, PeerAddr, TenantContext};
pub use future::ResponseFuture;
pub use handle::TenancyHandle;
pub use layer::TenancyLayer;
pub use service::Tenancy;
