//! The storefront, the main job: one axum service on embedded defaults (SQLite files and
//! in-process caches, nothing to install) that composes the patterns.
//!
//! Every request proves its tenant with an API key in `x-api-key`; the registry (TOML, keys
//! stored as SHA-256 only) knows `acme` (plan gold, key `demo-key-acme`), `globex` (free,
//! `demo-key-globex`) and `initech` (suspended, `demo-key-initech`). These demo keys are public:
//! point `TP_TENANTS` at a registry file of your own (the same TOML, `api_key_sha256 = [...]`)
//! before the server listens anywhere but loopback.
//!
//! `TP_TENANT_HEADER_ONLY=1` switches to header-only tenancy: `x-tenant-id` alone names the
//! tenant and is believed as sent, so anyone who can reach the server can act as any tenant.
//! Use it only behind a gateway that has already authenticated the caller.
//!
//! | route | what it shows |
//! |---|---|
//! | `GET /products` | the tenant's catalog, read from a shared SQLite table through `Scoped` (the tenant filter cannot be left out), cache-aside per tenant |
//! | `POST /orders/{sku}/{qty}` | an order of 1 to 100, event-sourced on SQLite: placed, then charged through the payment client (fallback, retry, circuit breaker, timeout, bulkhead; queued while the breaker is open), then paid, queued or cancelled |
//! | `GET /orders/{id}` | the order rebuilt from its events; another tenant's order is a 404 |
//! | `POST /gateway/{up,down,slow}` | switches the simulated payment provider through its chaos layer's handle (not per tenant, no key: a demo control): no fault, an error on every charge, or one second of latency on every charge |
//! | `GET /health` | breaker, cache and queue |
//!
//! In front of the tenant routes, and only of routes that exist (an unknown path is a 404 that
//! costs no tenant anything): the tenant layer (401 without a valid key, 400 malformed, 403
//! suspended), a GCRA rate limit per tenant chosen by plan (gold 100/s, free 5/s; 429 with
//! `Retry-After` and `RateLimit-*`), a bulkhead per tenant (at most
//! 8 requests (`TENANT_CONCURRENCY`) in flight each, then 503), and the HTTP error mapping of
//! `tower_patterns::http`. Handlers answer with fixed phrases too: a bad path or quantity is a
//! 400, a dependency that fails is a 503 (or what the mapping says for its error), never its
//! error text.
//!
//! The payment client follows the stack of `docs/patterns/retry.md`: fallback → retry →
//! circuit breaker → timeout (per attempt) → bulkhead → chaos → provider. The breaker judges every
//! attempt, and once it is open the retry stops at once (a `Rejected` is never retried) and
//! the fallback queues the payment.
//!
//! ```text
//! cargo run --example storefront --features full     # 127.0.0.1:3000 (TP_ADDR), data in TP_DATA
//! curl -s -H 'x-api-key: demo-key-acme' 127.0.0.1:3000/products
//! curl -s -XPOST -H 'x-api-key: demo-key-acme' 127.0.0.1:3000/orders/tea/2   # PAID order ...
//! curl -s -XPOST 127.0.0.1:3000/gateway/down
//! curl -s -XPOST -H 'x-api-key: demo-key-acme' 127.0.0.1:3000/orders/tea/1   # CANCELLED, then QUEUED
//! curl -s -H 'x-api-key: demo-key-globex' 127.0.0.1:3000/orders/<acme's id>  # 404
//! TP_TENANT_HEADER_ONLY=1 cargo run --example storefront --features full  # then -H 'x-tenant-id: acme'
//! ```
#![allow(
    clippy::print_stdout,
    clippy::print_stderr,
    reason = "an example server says where it listens"
)]

mod catalog;
mod orders;
mod payments;
mod routes;
#[cfg(test)]
mod tests;

use std::{
    path::{Path as FsPath, PathBuf},
    sync::{Arc, Mutex, atomic::AtomicU64},
};

use axum::{
    Router,
    body::Body,
    error_handling::HandleErrorLayer,
    http::Request,
    routing::{get, post},
};
use tower::ServiceBuilder;
use tower_patterns::{
    BoxError,
    breaker::CircuitBreakerHandle,
    bulkhead::KeyedBulkheadLayer,
    chaos::ChaosHandle,
    eventstore::{Repository, sqlite::SqliteStore},
    key::ExtensionKey,
    ratelimit::{GcraLimiter, KeyedRateLimitLayer, Rate},
    tenant::{StaticTenants, TenancyLayer, TenantContext, TenantId},
};

use crate::{
    catalog::{Catalog, catalog, open_catalog},
    orders::Order,
    payments::{Payment, Payments, payments},
    routes::{gateway, health, place, products, show},
};

/// The demo registry. The keys are `demo-key-<tenant>`; only their SHA-256 is stored.
const TENANTS: &str = r#"
[[tenants]]
id = "acme"
plan = "gold"
api_key_sha256 = ["8649cdebee753898fd50e01408a9e438aa5090249bc3e51b65f33dce973b0873"]
[[tenants]]
id = "globex"
plan = "free"
api_key_sha256 = ["0aef9a797b1f4523f91fe6c361cd0df88248789ca6cb8cad188d5030ac2f717e"]
[[tenants]]
id = "initech"
plan = "gold"
status = "suspended"
api_key_sha256 = ["9873bbdaaa392d094b7f1aaf4bb0da5756431cd88a323b9576f08576e7b7a571"]
"#;

/// The header that carries a tenant's API key.
const API_KEY_HEADER: &str = "x-api-key";
/// The header that names the tenant in header-only mode.
const TENANT_HEADER: &str = "x-tenant-id";
/// The most requests one tenant may have in flight at once; the next gets 503.
const TENANT_CONCURRENCY: u32 = 8;

/// The rate of a plan.
fn plan_rate(plan: &str) -> Rate {
    match plan {
        "gold" => Rate::per_second(100),
        _ => Rate::per_second(5),
    }
}

/// How the storefront learns which tenant calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Auth {
    /// The tenant that owns the API key in `x-api-key` (the default).
    ApiKey,
    /// `x-tenant-id` alone, believed as sent: for trusted internal callers only.
    HeaderOnly,
}

impl Auth {
    /// Reads `TP_TENANT_HEADER_ONLY`: unset, empty, `0` or `false` is [`Auth::ApiKey`]; `1` or
    /// `true` is [`Auth::HeaderOnly`]; anything else is refused, so a typo never weakens it.
    fn from_env_value(value: Option<&str>) -> Result<Self, BoxError> {
        match value.map(str::trim) {
            None | Some("" | "0" | "false") => Ok(Self::ApiKey),
            Some("1" | "true") => Ok(Self::HeaderOnly),
            Some(_) => Err("TP_TENANT_HEADER_ONLY must be 1, true, 0, false or unset".into()),
        }
    }
}

/// What the handlers share: the services, the handles and the demo's counters.
#[derive(Clone)]
struct App {
    catalog: Catalog,
    catalog_loads: Arc<AtomicU64>,
    orders: Repository<Order, SqliteStore>,
    payments: Payments,
    breaker: CircuitBreakerHandle,
    provider: ChaosHandle,
    provider_attempts: Arc<AtomicU64>,
    queue: Arc<Mutex<Vec<Payment>>>,
}

/// The tenant layer for `auth` over `tenants`.
fn tenant_layer(
    tenants: StaticTenants,
    auth: Auth,
) -> Result<TenancyLayer<StaticTenants>, BoxError> {
    let builder = TenancyLayer::builder("storefront")
        .store(tenants)
        .header(TENANT_HEADER);
    let builder = match auth {
        // The key proves the tenant; `x-tenant-id`, when sent, may only agree with it (403).
        Auth::ApiKey => builder.api_key(API_KEY_HEADER),
        Auth::HeaderOnly => builder.allow_unverified(),
    };
    Ok(builder.build()?)
}

/// The storefront over the data in `dir`, its tenants in `tenants`, identified by `auth`.
fn storefront(dir: &FsPath, tenants: StaticTenants, auth: Auth) -> Result<(Router, App), BoxError> {
    let catalog_loads = Arc::new(AtomicU64::new(0));
    let db = Arc::new(Mutex::new(open_catalog(&dir.join("catalog.db"))?));
    let store = SqliteStore::open(dir.join("orders.db"))?;
    let provider_attempts = Arc::new(AtomicU64::new(0));
    let queue = Arc::new(Mutex::new(Vec::new()));
    let (payments, breaker, provider) = payments(provider_attempts.clone(), queue.clone())?;
    let app = App {
        catalog: catalog(db, catalog_loads.clone())?,
        catalog_loads,
        orders: Repository::new(Arc::new(store), "order-"),
        payments,
        breaker,
        provider,
        provider_attempts,
        queue,
    };
    let limiter = GcraLimiter::builder("tenant")
        .key(ExtensionKey::<TenantId>::new())
        .rate(plan_rate("free"))
        .rate_for(
            |req: &Request<Body>| {
                req.extensions()
                    .get::<TenantContext>()
                    .map(|t| plan_rate(t.plan()))
            },
            plan_rate("free").refill(),
        )
        .build()?;
    let bulkheads = KeyedBulkheadLayer::builder("tenant")
        .key(ExtensionKey::<TenantId>::new())
        .default_size(TENANT_CONCURRENCY)
        .build()?;
    // `route_layer`, not `layer`: a path no route matches is a 404 before any of these run,
    // so it neither needs a tenant nor spends one's rate limit.
    let tenant_routes = Router::new()
        .route("/products", get(products))
        .route("/orders/{sku}/{qty}", post(place))
        .route("/orders/{id}", get(show))
        .route_layer(
            ServiceBuilder::new()
                .layer(HandleErrorLayer::new(tower_patterns::http::handle_error))
                .layer(tenant_layer(tenants, auth)?)
                .layer(KeyedRateLimitLayer::new(limiter))
                .layer(bulkheads),
        );
    let router = Router::new()
        .route("/health", get(health))
        .route("/gateway/{state}", post(gateway))
        .merge(tenant_routes)
        .with_state(app.clone());
    Ok((router, app))
}

fn data_dir() -> Result<PathBuf, BoxError> {
    let dir = std::env::var_os("TP_DATA").map_or_else(
        || std::env::temp_dir().join(format!("tower-patterns-storefront-{}", std::process::id())),
        PathBuf::from,
    );
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The registry: the file `TP_TENANTS` names, else the demo tenants.
fn tenants() -> Result<StaticTenants, BoxError> {
    Ok(match std::env::var_os("TP_TENANTS") {
        Some(path) => StaticTenants::from_file(path)?,
        None => StaticTenants::from_toml(TENANTS)?,
    })
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let auth = Auth::from_env_value(std::env::var("TP_TENANT_HEADER_ONLY").ok().as_deref())?;
    let dir = data_dir()?;
    let (router, _) = storefront(&dir, tenants()?, auth)?;
    let addr = std::env::var("TP_ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    let local = listener.local_addr()?;
    let try_it = match auth {
        Auth::ApiKey => {
            format!("curl -H '{API_KEY_HEADER}: demo-key-acme' http://{local}/products")
        }
        Auth::HeaderOnly => {
            eprintln!(
                "header-only tenancy (TP_TENANT_HEADER_ONLY): {TENANT_HEADER} is believed as sent; \
                 only for callers a gateway has already authenticated"
            );
            format!("curl -H '{TENANT_HEADER}: acme' http://{local}/products")
        }
    };
    eprintln!(
        "storefront on http://{local} (data in {}); try: {try_it}",
        dir.display()
    );
    axum::serve(listener, router).await?;
    Ok(())
}
