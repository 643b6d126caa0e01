//! Multi-tenancy for tower: who the tenant of a request is, verified;
//! what the tenant may do; and data that tenants never share.
//!
//! - [`TenancyLayer`] (service [`Tenancy`], handle [`TenancyHandle`]): resolves the tenant from a header, the subdomain, a path prefix, a claim
//!   of a **verified** JWT (HS256, RS256, EdDSA; keys from config or JWKS) or an API key; all
//!   sources present must agree. Closed by default: the header, host and path are
//!   unverified, so a token or API key is required and they may only agree with it, unless
//!   the builder opts in with `allow_unverified()` (trusted internal callers). Forwarded
//!   headers count only from trusted proxies. The
//!   request then carries a [`TenantId`] and a
//!   [`TenantContext`] (plan, record).
//! - [`Registry`] over a [`TenantStore`] ([`StaticTenants`] from TOML, `PostgresTenants` with
//!   feature `postgres`): cached, unknown tenants cached too; a change applies to the next
//!   request once invalidated through the registry handle, or, on PostgreSQL, as soon as
//!   `postgres::listen` hears the table's notification.
//! - Errors are [`TenantError`]s: 400 malformed, 401
//!   missing or invalid credentials, 403 conflict, 403 for unknown and suspended tenants alike
//!   (one answer, so callers cannot probe which ids exist), 503 registry down.
//! - The `Tenant` extractor for axum (feature `axum`).
//! - Data isolation: `postgres` (database per tenant under the tenant's own login role,
//!   schema per tenant under the tenant's own role, or forced row-level security; feature
//!   `postgres`) and `sqlite` (a table API that cannot be called without the tenant filter;
//!   feature `sqlite`).
//!
//! Per-tenant rate limits key on the tenant (`ExtensionKey::<TenantId>`) and choose their
//! rate from [`TenantContext::plan`]; per-tenant bulkheads key the same way (see
//! `docs/patterns/multi-tenancy.md`).
//!
//! ```
//! use std::convert::Infallible;
//! use http::{Request, Response, StatusCode};
//! use tower::{service_fn, ServiceBuilder, ServiceExt};
//! use tower_patterns_core::http::ErrorResponseLayer;
//! use tower_patterns_tenant::{StaticTenants, TenancyLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let tenants = StaticTenants::from_toml(r#"
//!     [[tenants]]
//!     id = "acme"
//!     [[tenants]]
//!     id = "initech"
//!     status = "suspended"
//! "#).unwrap();
//! let svc = ServiceBuilder::new()
//!     .layer(ErrorResponseLayer::new())
//!     // Header-only tenancy: for trusted internal callers, hence the explicit opt-in.
//!     .layer(TenancyLayer::builder("internal").store(tenants).header("x-tenant-id").allow_unverified().build().unwrap())
//!     .service(service_fn(|_: Request<()>| async { Ok::<_, Infallible>(Response::new(String::new())) }));
//!
//! let status = |tenant: Option<&str>| {
//!     let mut req = Request::builder();
//!     if let Some(t) = tenant { req = req.header("x-tenant-id", t); }
//!     let svc = svc.clone();
//!     async move { svc.oneshot(req.body(()).unwrap()).await.unwrap().status() }
//! };
//! assert_eq!(status(Some("acme")).await, StatusCode::OK);
//! assert_eq!(status(None).await, StatusCode::UNAUTHORIZED);
//! assert_eq!(status(Some("acme corp")).await, StatusCode::BAD_REQUEST);
//! assert_eq!(status(Some("umbrella")).await, StatusCode::FORBIDDEN);
//! assert_eq!(status(Some("initech")).await, StatusCode::FORBIDDEN);
//! # }
//! ```

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "axum")]
mod extract;
mod jwt;
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres;
mod registry;
mod resolve;
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite;
mod ttl;

#[cfg(feature = "axum")]
#[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
pub use extract::{Tenant, TenantRejection};
pub use jwt::{JwtVerifier, JwtVerifierBuilder, VerifiedClaims};
pub use registry::{
    ApiKeyHash, Registry, StaticTenants, StoreError, TenantRecord, TenantStatus, TenantStore,
    hash_api_key,
};
pub use resolve::{
    ClientIp, NoStore, PeerAddr, ResponseFuture, Tenancy, TenancyBuilder, TenancyHandle,
    TenancyLayer, TenantContext, future,
};
// The tenant vocabulary of core, so that `tower_patterns::tenant` is one module either way.
pub use tower_patterns_core::tenant::{MAX_TENANT_ID_LEN, TenantError, TenantErrorKind, TenantId};
